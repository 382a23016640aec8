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

/// Publishes a tree as a signed release: objects first, then manifest and header (the commit
/// point), then the channel pointer; each written to a temporary name, fsynced and renamed, so a
/// crash at any instant leaves a repository that verifies and a re-run that completes.
public struct Publisher: Sendable {
    let layout: RepositoryLayout
    /// Sign release headers (the release role).
    let keys: [PrivateKey]
    /// Sign channel records (the channel role; may be an online key).
    let channelKeys: [PrivateKey]

    /// A publisher signing with `key` into the repository at `request.repository`.
    public init(repository: String, key: PrivateKey) {
        self.init(repository: repository, keys: [key])
    }

    /// A publisher signing headers with `keys` and channel records with `channelKeys` (the
    /// same keys when nil). With a root of trust in the repository, each must be a key of its
    /// role there, as many as the role's threshold.
    public init(repository: String, keys: [PrivateKey], channelKeys: [PrivateKey]? = nil) {
        layout = RepositoryLayout(root: repository)
        self.keys = keys
        self.channelKeys = channelKeys ?? keys
    }

    public func publish(_ request: PublishRequest) async throws -> PublishResult {
        guard Names.isValid(request.product) else { throw PublishError.invalidName("product", request.product) }
        guard Names.isValid(request.channel) else { throw PublishError.invalidName("channel", request.channel) }
        guard let version = Version(request.version) else { throw PublishError.invalidVersion(request.version) }

        try FileSystem.makeDirectories(layout.root)
        if !FileSystem.exists(layout.marker) {
            try AtomicFile.write(Array("{\"format\":\"upgrade-repository/1\"}\n".utf8), to: layout.marker)
        }
        // Before anything is written: a key the repository's root does not authorize would
        // sign what every client refuses.
        let authorized = try RootFiles.newest(layout.root)
        try RootFiles.requireAuthorized(keys, role: .release, root: authorized)
        try RootFiles.requireAuthorized(channelKeys, role: .channel, root: authorized)
        let lock = try FileLock(layout.lockFile, mode: .exclusive, timeout: nil)
        defer { withExtendedLifetime(lock) {} }

        let catalog = Catalog(layout: layout)
        let published = try catalog.releases(of: request.product)
        let existing = published.first { $0.header.version == request.version }
        if existing == nil, let newest = published.compactMap({ Version($0.header.version) }).max(), !(newest < version)
        {
            throw PublishError.versionNotNewer(request.version, newest: newest.description)
        }

        // Scan, then store every file's content (in parallel) and record its SHA-256.
        var options = ScanOptions()
        options.concurrency = request.concurrency
        let scan = try await Scanner(options: options).scan(root: request.tree)
        let scanned =
            request.policy.unmanaged.isEmpty
            ? scan.manifest.entries : scan.manifest.entries.filter { !request.policy.isUnmanaged($0.path) }
        let store = ObjectStore(layout: layout, level: request.compressionLevel)
        let files = scanned.enumerated().compactMap { index, entry in
            entry.file.map { (index, entry.path, $0.size) }
        }
        // Files that look identical (same size and XXH3-128) are stored after the first of their
        // kind, so parallel tasks never race to write one object; each still gets its own SHA-256.
        var seen = Set<FileContentKey>()
        var firsts = [Int]()
        var repeats = [Int]()
        for (position, file) in files.enumerated() {
            let content = scanned[file.0].file!
            if seen.insert(FileContentKey(size: content.size, xxh128: content.xxh128)).inserted {
                firsts.append(position)
            } else {
                repeats.append(position)
            }
        }
        var stored = [ObjectStore.Stored?](repeating: nil, count: files.count)
        for batch in [firsts, repeats] {
            let results = try await Self.storeAll(
                batch.map { files[$0] },
                tree: request.tree,
                store: store,
                concurrency: request.concurrency
            )
            for (position, result) in zip(batch, results) { stored[position] = result }
        }
        let storedFiles = stored.map { $0! }
        try store.syncDirectories(storedFiles.map(\.sha256))

        var entries = scanned
        for ((index, _, _), result) in zip(files, storedFiles) {
            guard case .file(var content) = entries[index].content else { continue }
            content.sha256 = result.sha256
            entries[index].content = .file(content)
        }
        let metadata = try PublishRequest.metadata(of: entries, tree: request.tree, request: request)
        let manifest: Manifest
        do {
            manifest = try Manifest(
                entries: entries,
                hooks: Hooks(request.hooks),
                policy: request.policy,
                metadata: metadata
            )
        } catch {
            throw PublishError.invalidHook(error)
        }
        var result = PublishResult(
            header: existing?.header
                ?? ReleaseHeader(
                    product: request.product,
                    version: request.version,
                    sequence: (published.map(\.header.sequence).max() ?? 0) + 1,
                    platform: request.platform,
                    created: request.now,
                    expires: request.now + request.releaseLifetime,
                    entries: manifest.entries.count,
                    totalSize: manifest.summary.bytes,
                    manifestSHA256: manifest.digest,
                    manifestBytes: manifest.canonicalEncoding().count
                ),
            newRelease: existing == nil
        )
        result.objectsWritten = storedFiles.filter(\.written).count
        result.objectsReused = storedFiles.count - result.objectsWritten
        result.bytesWritten = storedFiles.filter(\.written).reduce(0) { $0 + $1.compressedSize }

        let headerBytes: [UInt8]
        if let existing {
            // Same version again: the same content is an idempotent re-run, anything else a conflict.
            guard existing.header.manifestSHA256 == manifest.digest.hex else {
                throw PublishError.versionConflict(
                    request.version,
                    differing: existing.manifest.map { manifest.differingPaths(from: $0) } ?? []
                )
            }
            // A header signed by a key that is not (or no longer) authorized is signed again:
            // a publish with the wrong key is repaired by publishing again with the right one.
            let releaseKeys =
                authorized?.keys(for: .release)
                ?? Dictionary(keys.map { ($0.publicKey.keyID, $0.publicKey) }, uniquingKeysWith: { a, _ in a })
            let threshold = authorized?.threshold(for: .release) ?? 1
            if let envelope = try? SignedEnvelope(encoded: existing.headerBytes),
                envelope.validSigners(among: releaseKeys).count >= threshold
            {
                headerBytes = existing.headerBytes
            } else {
                headerBytes = existing.header.signed(with: keys).encoded()
                try AtomicFile.write(headerBytes, to: layout.header(request.product, request.version))
                result.resigned = true
            }
        } else {
            try FileSystem.makeDirectories(layout.release(request.product, request.version))
            try AtomicFile.write(manifest.canonicalEncoding(), to: layout.manifest(request.product, request.version))
            headerBytes = result.header.signed(with: keys).encoded()
            try AtomicFile.write(headerBytes, to: layout.header(request.product, request.version))
        }
        // Deltas from the previous releases, before the channel points clients at this one.
        let previous = published.filter { $0.header.sequence < result.header.sequence }.suffix(request.deltaReleases)
        try writeManifestForms(manifest, request: request, previous: previous.compactMap(\.manifest))
        result.deltasComputed = try await Self.precomputeDeltas(
            from: previous.compactMap(\.manifest),
            to: manifest,
            store: DeltaStore(repository: request.repository, level: request.compressionLevel),
            concurrency: request.concurrency
        )
        result.channel = try updateChannel(
            request,
            header: result.header,
            headerBytes: headerBytes,
            catalog: catalog,
            root: authorized
        )
        return result
    }

    /// The compressed manifest and a patch from each previous release's manifest (idempotent:
    /// a re-run writes what is missing). Unsigned transport forms: a client checks what they
    /// decode to against the signed SHA-256 in the header.
    private func writeManifestForms(_ manifest: Manifest, request: PublishRequest, previous: [Manifest]) throws {
        let bytes = manifest.canonicalEncoding()
        let compressed = layout.compressedManifest(request.product, request.version)
        if !FileSystem.exists(compressed) {
            try AtomicFile.write(try Zstd.compress(bytes, level: 19), to: compressed)
        }
        for base in previous {
            let path = layout.manifestPatch(request.product, request.version, from: base.digest.hex)
            if FileSystem.exists(path) { continue }
            try FileSystem.makeDirectories(String(path[..<path.lastIndex(of: "/")!]))
            let patch = try ZstdDelta.encode(target: bytes, base: base.canonicalEncoding(), level: 19)
            // Only worth a file when it beats the compressed manifest.
            if patch.count < (try AtomicFile.read(compressed)).count { try AtomicFile.write(patch, to: path) }
        }
    }

    /// Computes (and caches) the deltas a client at each of `bases` would be offered.
    static func precomputeDeltas(
        from bases: [Manifest],
        to target: Manifest,
        store: DeltaStore,
        concurrency: Int
    ) async throws -> Int {
        var pairs = [(FileContent, FileContent)]()
        var seen = Set<String>()
        for base in bases {
            let plan = Plan(from: base, to: target)
            let index = base.index()
            for (path, basePath) in plan.deltaBases(client: base) {
                guard let from = index[basePath]?.file, let to = target.index()[path]?.file, let a = from.sha256,
                    let b = to.sha256,
                    seen.insert(a.hex + b.hex).inserted
                else { continue }
                pairs.append((from, to))
            }
        }
        let next = Counter()
        let work = pairs
        return try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<max(1, min(concurrency, work.count)) {
                group.addTask {
                    var kept = 0
                    while let index = next.take(below: work.count) {
                        if try store.size(base: work[index].0, target: work[index].1) != nil { kept += 1 }
                    }
                    return kept
                }
            }
            return try await group.reduce(0, +)
        }
    }

    private static func storeAll(
        _ files: [(Int, String, UInt64)],
        tree: String,
        store: ObjectStore,
        concurrency: Int
    ) async throws -> [ObjectStore.Stored] {
        let next = Counter()
        return try await withThrowingTaskGroup(of: [(Int, ObjectStore.Stored)].self) { group in
            for _ in 0..<max(1, min(concurrency, files.count)) {
                group.addTask {
                    var done = [(Int, ObjectStore.Stored)]()
                    while let index = next.take(below: files.count) {
                        try Task.checkCancellation()
                        done.append((index, try store.store(path: tree + "/" + files[index].1, size: files[index].2)))
                    }
                    return done
                }
            }
            var results = [ObjectStore.Stored?](repeating: nil, count: files.count)
            for try await batch in group {
                for (index, stored) in batch { results[index] = stored }
            }
            return results.map { $0! }
        }
    }
}

/// What makes two scanned files look identical before their SHA-256 is known.
struct FileContentKey: Hashable {
    var size: UInt64
    var xxh128: XXH128Digest
}

/// Hands out indices to worker tasks.
final class Counter: Sendable {
    private let value = Atomic<Int>(0)

    func take(below limit: Int) -> Int? {
        let index = value.add(1, ordering: .relaxed).oldValue
        return index < limit ? index : nil
    }
}

extension SHA256Hash {
    /// SHA-256 of bytes.
    static func of(_ bytes: [UInt8]) -> SHA256Hash {
        SHA256Hash(bytes: Array(Crypto.SHA256.hash(data: bytes)))!
    }
}

/// Why a publish was refused.
public enum PublishError: Error, CustomStringConvertible {
    case invalidName(String, String)
    case invalidVersion(String)
    case versionNotNewer(String, newest: String)
    case versionConflict(String, differing: [String])
    case changedDuringPublish(path: String)
    case invalidHook(PathError)
    /// A channel change names something that is not there (no such release, no record yet).
    case missing(String)

    public var description: String {
        switch self {
        case .invalidName(let what, let name):
            "invalid \(what) name \(name.debugDescription): use 1–64 of A–Z a–z 0–9 . _ - (not starting with .)"
        case .invalidVersion(let version):
            "invalid version \(version.debugDescription): use semantic versioning, e.g. 1.4.2 or 2.0.0-rc.1"
        case .versionNotNewer(let version, let newest):
            "version \(version) is not newer than the latest published \(newest); versions must grow with the sequence"
        case .versionConflict(let version, let paths):
            "version \(version) is already published with different content"
                + (paths.isEmpty
                    ? ""
                    : " (differs at \(paths.prefix(5).map(\.debugDescription).joined(separator: ", "))\(paths.count > 5 ? ", …" : ""))")
                + "; publish it under a new version"
        case .changedDuringPublish(let path):
            "\(path.debugDescription) changed while it was being published; publish again"
        case .invalidHook(let error): "\(error)"
        case .missing(let why): why
        }
    }
}
