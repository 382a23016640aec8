public import UpgradeCore
import UpgradeSystem
public import UpgradeTrust

/// Reads what a repository holds. Decoding here checks no signature: it serves the publisher's
/// own bookkeeping and listings; ``RepositoryVerifier`` and clients verify.
public struct Catalog: Sendable {
    let layout: RepositoryLayout

    /// A catalog of the repository at `root`.
    public init(repository root: String) { layout = RepositoryLayout(root: root) }

    init(layout: RepositoryLayout) { self.layout = layout }

    /// A published release: one whose header exists (the header is the commit point).
    public struct Release: Sendable {
        public let header: ReleaseHeader
        public let headerBytes: [UInt8]
        let manifestPath: String

        /// The release manifest, when it decodes.
        public var manifest: Manifest? {
            (try? AtomicFile.read(manifestPath)).flatMap { try? Manifest(canonical: $0) }
        }
    }

    /// Product names (directories under `releases/`).
    public func products() -> [String] {
        FileSystem.list(layout.releases).filter(Names.isValid)
    }

    /// The releases of `product` that have a header, by sequence.
    public func releases(of product: String) throws -> [Release] {
        var releases = [Release]()
        for version in FileSystem.list(layout.productReleases(product)) {
            let headerPath = layout.header(product, version)
            guard FileSystem.exists(headerPath) else { continue }
            let bytes = try AtomicFile.read(headerPath)
            let header = try ReleaseHeader(unverified: SignedEnvelope(encoded: bytes))
            releases.append(
                Release(header: header, headerBytes: bytes, manifestPath: layout.manifest(product, version))
            )
        }
        return releases.sorted { $0.header.sequence < $1.header.sequence }
    }

    /// Channel names of `product`.
    public func channels(of product: String) -> [String] {
        FileSystem.list(layout.productChannels(product)).filter(Names.isValid)
    }

    /// The channel record, when present and decodable.
    public func channel(_ product: String, _ channel: String) -> ChannelRecord? {
        guard let bytes = try? AtomicFile.read(layout.channel(product, channel)),
            let envelope = try? SignedEnvelope(encoded: bytes)
        else { return nil }
        return try? ChannelRecord(unverified: envelope)
    }
}
