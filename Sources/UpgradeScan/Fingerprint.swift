public import UpgradeCore
internal import UpgradeHash

extension Manifest {
    /// XXH3-128 (hex) of the tree as a scan sees it (``Manifest/forEachScanProjectionChunk(_:)``).
    ///
    /// A scanned tree whose fingerprint is the installed release's has no changes to report, so
    /// a sync sends an empty delta without reading the installed manifest (docs/design.md,
    /// "No-op at scale"). XXH3-128 is the scanner's own change detector: a tree that fools it
    /// would fool the per-file hashes the same way.
    public var scanFingerprint: String {
        var hasher = XXH128Hasher()
        forEachScanProjectionChunk { hasher.update(bufferPointer: $0) }
        return hasher.finalize().description
    }
}
