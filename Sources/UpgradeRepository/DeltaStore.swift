import Foundation
public import UpgradeCore
import UpgradeSystem
import UpgradeZstd

#if canImport(Glibc)
import Glibc
#endif

/// Binary deltas between published contents, cached in the repository as immutable files:
/// `deltas/ab/<base sha256>-<target sha256>` (zstd frame, base as prefix). A delta is kept only
/// when it is smaller than the target's whole object; otherwise a zero-length marker records
/// that the whole object is the better payload, so the work is not repeated.
public struct DeltaStore: Sendable {
    let layout: RepositoryLayout
    let level: Int32

    /// A store in the repository at `repository`; `level` is the zstd level for new deltas.
    public init(repository: String, level: Int32 = 19) {
        layout = RepositoryLayout(root: repository)
        self.level = level
    }

    /// Path of a delta relative to the repository root (same on a mirror).
    public static func relativePath(base: SHA256Hash, target: SHA256Hash) -> String {
        "deltas/\(target.hex.prefix(2))/\(base.hex)-\(target.hex)"
    }

    public func path(base: SHA256Hash, target: SHA256Hash) -> String {
        layout.root + "/" + Self.relativePath(base: base, target: target)
    }

    /// The size of the cached delta: nil when none was computed, 0 when the whole object wins.
    public func cachedSize(base: SHA256Hash, target: SHA256Hash) -> UInt64? {
        var info = stat()
        guard stat(path(base: base, target: target), &info) == 0 else { return nil }
        return UInt64(info.st_size)
    }

    /// The delta's size, computing and caching it when needed; nil when no delta is worth it
    /// (whole object smaller, file too large, objects missing).
    public func size(base: FileContent, target: FileContent) throws -> UInt64? {
        guard let baseSHA = base.sha256, let targetSHA = target.sha256, baseSHA != targetSHA else { return nil }
        if let cached = cachedSize(base: baseSHA, target: targetSHA) { return cached == 0 ? nil : cached }
        guard base.size <= UInt64(ZstdDelta.maximumSize), target.size <= UInt64(ZstdDelta.maximumSize),
            let wholeSize = fileSize(layout.object(targetSHA))
        else { return nil }
        let baseBytes = try Zstd.decompress(try AtomicFile.read(layout.object(baseSHA)), maxSize: Int(base.size))
        let targetBytes = try Zstd.decompress(try AtomicFile.read(layout.object(targetSHA)), maxSize: Int(target.size))
        let delta = try ZstdDelta.encode(target: targetBytes, base: baseBytes, level: level)
        let worthIt = UInt64(delta.count) < wholeSize
        let destination = path(base: baseSHA, target: targetSHA)
        try FileSystem.makeDirectories(String(destination[..<destination.lastIndex(of: "/")!]))
        try AtomicFile.write(worthIt ? delta : [], to: destination)
        return worthIt ? UInt64(delta.count) : nil
    }

    private func fileSize(_ path: String) -> UInt64? { FileSystem.size(path) }
}

extension Catalog {
    /// Content key → SHA-256 for every file of every published release of `product`: how a
    /// client's content, known to it only by size and XXH3-128, is found among published objects.
    public func contentIndex(of product: String) throws -> [ContentKey: SHA256Hash] {
        var index = [ContentKey: SHA256Hash]()
        for release in try releases(of: product) {
            guard let manifest = release.manifest else { continue }
            for entry in manifest.entries {
                if let file = entry.file, let sha = file.sha256 { index[ContentKey(file)] = sha }
            }
        }
        return index
    }
}
