import Crypto
import Foundation
import Synchronization
public import UpgradeCore
import UpgradeScan
import UpgradeSystem
public import UpgradeTrust
import UpgradeZstd

#if canImport(Glibc)
import Glibc
#endif

/// What to publish.
public struct PublishRequest: Sendable {
    public var repository: String
    public var product: String
    public var version: String
    public var channel: String = "stable"
    public var tree: String
    public var platform: String = PublishRequest.hostPlatform
    public var hooks: [Hooks.Kind: String] = [:]
    /// Config files and unmanaged paths, signed with the manifest; unmanaged paths of the tree
    /// are not published.
    public var policy = PathPolicy.none
    /// The share of devices the channel record offers the release to (nil: all, or the
    /// percentage of the record it replaces for the same release).
    public var rolloutPercent: Double?
    /// Record owners (where they differ from the tree root's) in the manifest; the default when
    /// publishing as root, where the tree's owners mean something.
    public var recordOwners = geteuid() == 0
    /// Record extended attributes (`security.capability`, SELinux labels, `user.*`).
    public var recordXattrs = true
    /// zstd level for objects: 19 suits publish-once, download-many.
    public var compressionLevel: Int32 = 19
    /// How long the release header stays installable.
    public var releaseLifetime: Int64 = 365 * 86_400
    /// How long the channel record stays valid; re-publishing re-signs it.
    public var channelLifetime: Int64 = 30 * 86_400
    /// Deltas are precomputed from this many previous releases (0: none; others on demand).
    public var deltaReleases = 1
    /// Files compressed at once.
    public var concurrency: Int = max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))
    /// The clock.
    public var now: Int64 = Timestamps.now()

    /// A request with the defaults.
    public init(repository: String, product: String, version: String, tree: String) {
        self.repository = repository
        self.product = product
        self.version = version
        self.tree = tree
    }

    /// Owners (where not the tree root's), extended attributes, hard-link groups (the first path
    /// in byte order leads) and sparse files of a scanned tree.
    static func metadata(
        of entries: [ManifestEntry],
        tree: String,
        request: PublishRequest
    ) throws -> [String: EntryMetadata] {
        let rootFD = open(tree, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard rootFD >= 0 else { throw PublishError.changedDuringPublish(path: tree) }
        defer { close(rootFD) }
        var rootInfo = stat()
        guard fstat(rootFD, &rootInfo) == 0 else { return [:] }
        var metadata = [String: EntryMetadata]()
        var leaders = [String: String]()
        for entry in entries {
            guard let observed = MetadataIO.observe(rootFD, entry.path, xattrs: request.recordXattrs) else {
                throw PublishError.changedDuringPublish(path: entry.path)
            }
            var meta = EntryMetadata(xattrs: observed.xattrs)
            if request.recordOwners, observed.uid != rootInfo.st_uid || observed.gid != rootInfo.st_gid {
                meta.owner = MetadataIO.owner(uid: observed.uid, gid: observed.gid)
            }
            if entry.kind == .file {
                meta.sparse = observed.sparse && entry.size >= 65_536
                if observed.links > 1 {
                    let key = "\(observed.device):\(observed.inode)"
                    if let leader = leaders[key] {
                        meta = EntryMetadata(hardLink: leader)
                    } else {
                        leaders[key] = entry.path
                    }
                }
            }
            if !meta.isEmpty { metadata[entry.path] = meta }
        }
        return metadata
    }

    /// `linux-x86_64` on this machine.
    public static var hostPlatform: String { ReleaseHeader.hostPlatform }
}

/// What a publish did.
public struct PublishResult: Sendable {
    public var header: ReleaseHeader
    public var channel: ChannelRecord?
    /// False when the same version with the same content was already published (idempotent re-run).
    public var newRelease: Bool
    public var objectsWritten = 0
    public var objectsReused = 0
    public var bytesWritten: UInt64 = 0
    /// Deltas worth keeping that were computed from earlier releases.
    public var deltasComputed = 0
    /// The release existed with a signature its repository no longer authorizes and was signed again.
    public var resigned = false
}
