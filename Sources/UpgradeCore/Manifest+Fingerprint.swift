extension Manifest {
    /// Calls `body` with the tree as a scan sees it, in chunks of about 64 KiB: every entry's
    /// path, kind, mode, size, XXH3-128 and symlink target in canonical order; no SHA-256s,
    /// hooks, policy or metadata. Two manifests with the same projection differ in nothing a scan
    /// records (`scanFingerprint` in UpgradeScan hashes it).
    public func forEachScanProjectionChunk(_ body: (UnsafeRawBufferPointer) -> Void) {
        var buffer = ByteWriter()
        buffer.reserve(1 << 16 + 4096)
        for entry in entries {
            Self.write(entry, to: &buffer, digests: false)
            if buffer.bytes.count >= 1 << 16 {
                buffer.bytes.withUnsafeBytes(body)
                buffer.removeAll()
            }
        }
        buffer.bytes.withUnsafeBytes(body)
    }
}
