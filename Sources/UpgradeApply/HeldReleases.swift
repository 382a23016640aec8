import Crypto
import Foundation
public import UpgradeCore
import UpgradeScan
import UpgradeSystem
public import UpgradeTrust

#if canImport(Glibc)
import Glibc
#endif

/// A signed release a root holds, and where the bytes of each of its contents are (paths
/// relative to the root). Nothing here is trusted yet: `upgrade share` re-verifies every file by
/// SHA-256 before serving it, and a client verifies every byte it receives.
public struct HeldRelease: Sendable {
    public let headerBytes: [UInt8]
    public let header: ReleaseHeader
    /// The canonical manifest bytes (their SHA-256 is the header's `manifestSHA256`).
    public let manifestBytes: [UInt8]
    /// Content → a file that should hold it.
    public let files: [SHA256Hash: FileLocation]
    /// True when `files` covers every content of the release (the installed release); false for
    /// the previous release, of which only the replaced files are kept.
    public let covering: Bool

    /// SHA-256 of the signed header bytes: the release's identity on the wire.
    public var headerSHA256: SHA256Hash { SHA256Hash(bytes: Array(SHA256.hash(data: headerBytes)))! }
}

/// Where a content should be: a path relative to the root and its signed size.
public struct FileLocation: Sendable, Hashable {
    public let path: String
    public let size: UInt64
}

/// What a root holds, read from its state directory without the lock (it only reads files that
/// are replaced atomically): the installed release, and the previous release's files that the last
/// transaction replaced (its backups, kept for `upgrade rollback`).
public struct HeldReleases: Sendable {
    /// The installed state's id; it changes when the root is upgraded.
    public let stateID: String
    public let current: HeldRelease
    public let previous: HeldRelease?

    /// The installed state's id alone (one small file): how a sharer notices an upgrade without
    /// reading the manifest again.
    public static func installedStateID(
        root: String,
        stateDirectoryName: String = TreeSource.stateDirectoryName
    ) -> String? {
        guard FileManager.default.fileExists(atPath: root + "/" + stateDirectoryName),
            let tree = try? SafeTree(path: root, observer: NoObserver()),
            let store = try? StateStore(root: tree, name: stateDirectoryName, rootPath: root, create: false)
        else { return nil }
        return store.currentID
    }

    /// Nil when nothing is installed in `root`.
    public static func read(
        root: String,
        stateDirectoryName: String = TreeSource.stateDirectoryName
    ) throws
        -> HeldReleases?
    {
        guard FileManager.default.fileExists(atPath: root + "/" + stateDirectoryName) else { return nil }
        let tree = try SafeTree(path: root, observer: NoObserver())
        let store = try StateStore(root: tree, name: stateDirectoryName, rootPath: root, create: false)
        guard let current = store.current else { return nil }
        let header = try ReleaseHeader(unverified: SignedEnvelope(encoded: current.headerBytes))
        var files = [SHA256Hash: FileLocation]()
        for entry in current.manifest.entries {
            if let file = entry.file, let sha = file.sha256, files[sha] == nil {
                files[sha] = FileLocation(path: entry.path, size: file.size)
            }
        }
        let held = HeldRelease(
            headerBytes: current.headerBytes,
            header: header,
            manifestBytes: current.manifest.canonicalEncoding(),
            files: files,
            covering: true
        )
        return HeldReleases(stateID: current.id, current: held, previous: previousFiles(store, current: current))
    }

    /// The previous release and the backups of its files that the last transaction kept.
    private static func previousFiles(_ store: StateStore, current: StateStore.InstalledState) -> HeldRelease? {
        guard let (previous, backups) = store.backups(of: current),
            let header = try? ReleaseHeader(unverified: SignedEnvelope(encoded: previous.headerBytes))
        else { return nil }
        let directory = String(store.path.split(separator: "/").last ?? ".upgrade")
        let files = backups.mapValues { FileLocation(path: "\(directory)/\($0.1)", size: $0.0.size) }
        return HeldRelease(
            headerBytes: previous.headerBytes,
            header: header,
            manifestBytes: previous.manifest.canonicalEncoding(),
            files: files,
            covering: false
        )
    }
}

/// Opens a regular file below `root` for reading, component by component, never through a
/// symlink; nil when it is missing, not a regular file, or reached through a link.
public func openRegularFile(root: String, path: String) -> Int32? {
    let components = path.split(separator: "/", omittingEmptySubsequences: false)
    guard !components.isEmpty, !path.contains("\0"),
        !components.contains(where: { $0.isEmpty || $0 == ".." || $0 == "." })
    else { return nil }
    guard let tree = try? SafeTree(path: root, observer: NoObserver()),
        let fd = try? tree.withParent(
            path,
            { parentFD, last in openat(parentFD, last, O_RDONLY | O_NOFOLLOW | O_CLOEXEC) }
        ),
        fd >= 0
    else { return nil }
    var info = stat()
    guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG else {
        close(fd)
        return nil
    }
    return fd
}
