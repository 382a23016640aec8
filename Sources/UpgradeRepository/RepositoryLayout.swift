public import UpgradeCore

/// Where things live in a repository directory, which any static HTTP server can serve:
///
/// ```
/// REPO/upgrade-repository.json            marker: {"format": "upgrade-repository/1"}
/// REPO/objects/ab/abcdef…                  file content by SHA-256, zstd-compressed
/// REPO/releases/PRODUCT/VERSION/manifest   canonical manifest (with SHA-256 per file)
/// REPO/releases/PRODUCT/VERSION/header     signed release header (the commit point)
/// REPO/channels/PRODUCT/CHANNEL            signed channel record
/// REPO/roots/N.json                        signed root of trust, version N (1, 2, …)
/// REPO/roots/draft.json                    the next root while it gathers signatures
/// ```
public struct RepositoryLayout: Sendable {
    /// The repository directory.
    public let root: String

    /// A layout rooted at `root`.
    public init(root: String) { self.root = root }

    public static let markerName = "upgrade-repository.json"
    public var marker: String { root + "/" + Self.markerName }
    public var objects: String { root + "/objects" }
    public var releases: String { root + "/releases" }
    public var channels: String { root + "/channels" }
    public var lockFile: String { root + "/.lock" }
    public var roots: String { root + "/roots" }
    /// Root of trust `version`.
    public func root(_ version: UInt64) -> String { roots + "/\(version).json" }
    public var rootDraft: String { roots + "/draft.json" }

    /// The fan-out directory of an object.
    public func objectDirectory(_ sha: SHA256Hash) -> String { objects + "/" + sha.hex.prefix(2) }
    /// An object's file.
    public func object(_ sha: SHA256Hash) -> String { objectDirectory(sha) + "/" + sha.hex }
    /// Path of an object relative to the repository root (for messages and URLs).
    public static func objectPath(_ sha: SHA256Hash) -> String { "objects/\(sha.hex.prefix(2))/\(sha.hex)" }

    public func productReleases(_ product: String) -> String { releases + "/" + product }
    public func release(_ product: String, _ version: String) -> String { productReleases(product) + "/" + version }
    public func manifest(_ product: String, _ version: String) -> String { release(product, version) + "/manifest" }
    public func header(_ product: String, _ version: String) -> String { release(product, version) + "/header" }
    /// The manifest, zstd-compressed (what clients fetch when they have no older manifest).
    public func compressedManifest(_ product: String, _ version: String) -> String {
        manifest(product, version) + ".zst"
    }
    /// A zstd patch (`--patch-from`) that turns the manifest whose SHA-256 is `base` into this
    /// release's: what a client at that release fetches, a size that follows the change.
    public func manifestPatch(_ product: String, _ version: String, from base: String) -> String {
        release(product, version) + "/manifest-from/" + base + ".zst"
    }
    public func productChannels(_ product: String) -> String { channels + "/" + product }
    public func channel(_ product: String, _ channel: String) -> String { productChannels(product) + "/" + channel }

    /// A path relative to the root, for messages.
    public func relative(_ path: String) -> String {
        path.hasPrefix(root + "/") ? String(path.dropFirst(root.count + 1)) : path
    }
}
