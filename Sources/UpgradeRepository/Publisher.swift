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

    /// Points the channel at the release, unless it already points at a later one.
    private func updateChannel(
        _ request: PublishRequest,
        header: ReleaseHeader,
        headerBytes: [UInt8],
        catalog: Catalog,
        root: RootDocument?
    ) throws -> ChannelRecord? {
        let current = catalog.channel(request.product, request.channel)
        // A record the repository's root does not authorize (a wrong or leaked key) does not
        // hold the channel: it is replaced, whatever release it points at.
        var authorizedRecord = true
        if let root,
            let bytes = try? AtomicFile.read(layout.channel(request.product, request.channel)),
            let envelope = try? SignedEnvelope(encoded: bytes)
        {
            authorizedRecord =
                envelope.validSigners(among: root.keys(for: .channel)).count >= root.threshold(for: .channel)
        }
        if let current, authorizedRecord, current.releaseSequence > header.sequence { return nil }
        // A new release starts its own rollout; canary tags and pins carry over.
        var rollout = current?.rollout
        if current?.version != header.version || request.rolloutPercent != nil {
            rollout?.percent = request.rolloutPercent ?? 100
            rollout?.paused = false
            if rollout == nil, let percent = request.rolloutPercent { rollout = Rollout(percent: percent) }
        }
        let record = ChannelRecord(
            product: request.product,
            channel: request.channel,
            version: header.version,
            releaseSequence: header.sequence,
            headerSHA256: SHA256Hash.of(headerBytes),
            sequence: (current?.sequence ?? 0) + 1,
            created: request.now,
            expires: request.now + request.channelLifetime,
            rollout: rollout
        )
        try FileSystem.makeDirectories(layout.productChannels(request.product))
        try AtomicFile.write(
            record.signed(with: channelKeys).encoded(),
            to: layout.channel(request.product, request.channel)
        )
        return record
    }

    /// Signs a new record for a channel: pointed at `version` (any published release: an older
    /// one is a signed revert), its rollout rules changed by `change`; the sequence grows, so
    /// clients that saw the old record refuse it from now on.
    public func setChannel(
        product: String,
        channel: String,
        version: String?,
        lifetime: Int64 = 30 * 86_400,
        now: Int64 = Timestamps.now(),
        change: (inout Rollout) -> Void
    ) throws -> ChannelRecord {
        guard Names.isValid(product) else { throw PublishError.invalidName("product", product) }
        guard Names.isValid(channel) else { throw PublishError.invalidName("channel", channel) }
        let authorized = try RootFiles.newest(layout.root)
        try RootFiles.requireAuthorized(channelKeys, role: .channel, root: authorized)
        let lock = try FileLock(layout.lockFile, mode: .exclusive, timeout: nil)
        defer { withExtendedLifetime(lock) {} }
        let catalog = Catalog(layout: layout)
        let current = catalog.channel(product, channel)
        guard let wanted = version ?? current?.version else {
            throw PublishError.missing("channel \(product)/\(channel) has no record yet; give --version")
        }
        guard let release = try catalog.releases(of: product).first(where: { $0.header.version == wanted }) else {
            throw PublishError.missing("\(product) \(wanted) is not published in \(layout.root)")
        }
        var rollout = current?.rollout ?? Rollout()
        if current != nil && current?.version != wanted {
            rollout.percent = 100
            rollout.paused = false
        }
        change(&rollout)
        guard (0...100).contains(rollout.percent) else {
            throw PublishError.missing("--percent \(rollout.percent) is outside 0...100")
        }
        let record = ChannelRecord(
            product: product,
            channel: channel,
            version: wanted,
            releaseSequence: release.header.sequence,
            headerSHA256: SHA256Hash.of(release.headerBytes),
            sequence: (current?.sequence ?? 0) + 1,
            created: now,
            expires: now + lifetime,
            rollout: rollout == Rollout() ? nil : rollout
        )
        try FileSystem.makeDirectories(layout.productChannels(product))
        try AtomicFile.write(record.signed(with: channelKeys).encoded(), to: layout.channel(product, channel))
        return record
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
