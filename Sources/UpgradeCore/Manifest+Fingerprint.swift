import Crypto

extension Manifest {
    /// SHA-256 (hex) of the tree as a scan sees it: every entry's path, kind, mode, size,
    /// XXH3-128 and symlink target, in canonical order; no SHA-256s, hooks, policy or metadata.
    ///
    /// Two manifests with the same fingerprint differ in nothing a scan records, so a scanned
    /// tree whose fingerprint is the installed release's has no changes to report: the client
    /// sends an empty delta without decoding the installed manifest (see docs/design.md,
    /// "No-op at scale").
    public var scanFingerprint: String {
        var hasher = SHA256()
        var buffer = ByteWriter()
        buffer.reserve(1 << 16 + 4096)
        for entry in entries {
            buffer.string16(entry.path)
            buffer.u8(entry.kind.rawValue)
            buffer.u16(UInt16(entry.mode))
            switch entry.content {
            case .file(let file):
                buffer.u64(file.size)
                buffer.u64(file.xxh128.high)
                buffer.u64(file.xxh128.low)
            case .directory:
                break
            case .symlink(let target):
                buffer.string16(target)
            }
            if buffer.bytes.count >= 1 << 16 {
                hasher.update(data: buffer.bytes)
                buffer.removeAll()
            }
        }
        hasher.update(data: buffer.bytes)
        return SHA256Hash(bytes: Array(hasher.finalize()))!.hex
    }
}
