import Foundation
import UpgradeBundle
public import UpgradeCore
import UpgradeSystem
import UpgradeTrust

/// Builds an offline bundle: the signed header, the target manifest, the plan from a base (an
/// earlier release, a manifest exported from the target machine, or nothing for a full install)
/// and every payload that plan needs.
public struct BundleBuilder: Sendable {
    let layout: RepositoryLayout

    public init(repository: String) { layout = RepositoryLayout(root: repository) }

    /// What a bundle holds.
    public struct Summary: Sendable {
        public var plan: Plan
        public var objects: Int
        public var deltas: Int
        public var payloadBytes: UInt64
    }

    /// Writes the bundle for `product` `version` relative to `base` (nil: full install).
    public func build(
        product: String,
        version: String,
        base: Manifest?,
        output: String,
        useDeltas: Bool = true
    ) throws -> Summary {
        let catalog = Catalog(layout: layout)
        guard let release = try catalog.releases(of: product).first(where: { $0.header.version == version }) else {
            throw BundleBuildError.unknownRelease(product, version)
        }
        let manifestBytes = try AtomicFile.read(layout.manifest(product, version))
        let target = try Manifest(canonical: manifestBytes)
        let plan = Plan(from: base ?? .empty, to: target)

        var writer = BundleWriter()
        writer.add(.header, .bytes(release.headerBytes))
        writer.add(.manifest, .bytes(manifestBytes))
        writer.add(.plan, .bytes([UInt8](plan.jsonEncoded())))
        if let base { writer.add(.baseManifest, .bytes(base.canonicalEncoding())) }
        let roots = try RootFiles.chain(layout.root)
        if !roots.isEmpty {
            writer.add(
                .roots,
                .bytes(BundleRoots.encode(try roots.map { try AtomicFile.read(layout.root($0.version)) }))
            )
        }
        var added = Set<SHA256Hash>()
        var payloadBytes: UInt64 = 0
        var deltaCount = 0
        // With a base, a file travels as a delta from the machine's content when that is smaller.
        var deltaFor = [String: (base: String, path: String, size: UInt64)]()
        if let base, useDeltas {
            let store = DeltaStore(repository: layout.root)
            let contents = try catalog.contentIndex(of: product)
            let baseIndex = base.index()
            for (path, basePath) in plan.deltaBases(client: base) {
                guard let baseFile = baseIndex[basePath]?.file, let target = target.index()[path]?.file,
                    let targetSHA = target.sha256,
                    let baseSHA = baseFile.sha256 ?? contents[ContentKey(baseFile)]
                else { continue }
                let from = FileContent(size: baseFile.size, xxh128: baseFile.xxh128, sha256: baseSHA)
                if let size = try store.size(base: from, target: target) {
                    deltaFor[path] = (basePath, store.path(base: baseSHA, target: targetSHA), size)
                }
            }
        }
        for operation in plan.operations {
            let content: FileContent
            switch operation {
            case .add(_, _, let c), .replace(_, _, let c): content = c
            default: continue
            }
            guard let sha = content.sha256 else { throw BundleBuildError.missingDigest(operation.path) }
            guard added.insert(sha).inserted else { continue }
            if let delta = deltaFor[operation.path] {
                writer.add(.delta, name: sha.hex + ":" + delta.base, .file(path: delta.path, size: delta.size))
                payloadBytes += delta.size
                deltaCount += 1
                continue
            }
            let path = layout.object(sha)
            guard let size = FileSystem.size(path) else {
                throw BundleBuildError.missingObject(RepositoryLayout.objectPath(sha))
            }
            writer.add(.object, name: sha.hex, .file(path: path, size: size))
            payloadBytes += size
        }
        try writer.write(to: output)
        return Summary(plan: plan, objects: added.count - deltaCount, deltas: deltaCount, payloadBytes: payloadBytes)
    }
}

/// Why a bundle cannot be built.
public enum BundleBuildError: Error, CustomStringConvertible {
    case unknownRelease(String, String)
    case missingDigest(String)
    case missingObject(String)

    public var description: String {
        switch self {
        case .unknownRelease(let product, let version): "no published release \(product) \(version) in the repository"
        case .missingDigest(let path): "release entry \(path.debugDescription) has no SHA-256"
        case .missingObject(let path): "object \(path) is missing from the repository (run verify-repo)"
        }
    }
}
