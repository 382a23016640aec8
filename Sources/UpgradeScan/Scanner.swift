#if canImport(Glibc)
import Glibc
#endif
public import UpgradeCore

/// How a scan treats the tree.
public struct ScanOptions: Sendable {
    /// What to do with devices, FIFOs and sockets.
    public enum SpecialFiles: Sendable {
        /// Fail, naming the path (the default: nothing is dropped silently).
        case reject
        /// Leave them out of the manifest and report a warning for each.
        case skip
    }

    /// Relative paths left out of the manifest with everything beneath them (the state directory).
    public var excluded: Set<String> = [".upgrade"]
    /// Devices, FIFOs and sockets.
    public var specialFiles: SpecialFiles = .reject
    /// Hashing tasks running at once; defaults to the number of cores.
    public var concurrency: Int = max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))
    /// Read size for hashing large files.
    public var readBufferSize: Int = 1 << 20
    /// Files changed less than this many nanoseconds before the scan started are hashed but not
    /// cached: a write within the same timestamp tick would otherwise go unseen next time.
    public var racyWindowNanoseconds: Int64 = 1_000_000_000

    /// The defaults.
    public init() {}
}

/// What a scan found.
public struct ScanResult: Sendable {
    /// The tree.
    public let manifest: Manifest
    /// Paths skipped on request.
    public let warnings: [ScanWarning]
    /// The stat cache to keep for the next scan.
    public let statCache: StatCache
    /// How much work the scan did.
    public let statistics: Statistics

    /// Work counters.
    public struct Statistics: Hashable, Sendable {
        /// Entries in the manifest.
        public var entries = 0
        /// Files whose content was read and hashed.
        public var filesHashed = 0
        /// Bytes read and hashed.
        public var bytesHashed: UInt64 = 0
        /// Files whose hash came from the stat cache.
        public var cacheHits = 0
    }
}

/// Walks a root and builds its manifest: kind, permission bits, size, symlink target and
/// XXH3-128 of every file, hashing in parallel and skipping files the stat cache vouches for.
public struct Scanner: Sendable {
    /// The options in force.
    public let options: ScanOptions

    /// A scanner with `options`.
    public init(options: ScanOptions = ScanOptions()) {
        self.options = options
    }

    /// Scans `root`, a directory. `cache` is the result of an earlier scan of the same root.
    public func scan(root: String, cache: StatCache = StatCache()) async throws(ScanError) -> ScanResult {
        let started = Timestamp.now()
        let rootFD: Int32
        do {
            rootFD = try Posix.openAt(AT_FDCWD, root, O_RDONLY | O_DIRECTORY)
        } catch {
            throw .rootUnusable(root: root, error)
        }
        defer { close(rootFD) }

        var walk = TreeWalk(options: options, cache: cache)
        try walk.walk(directoryFD: rootFD, prefix: "")

        var statistics = ScanResult.Statistics()
        statistics.cacheHits = walk.cacheHits
        let hashes = try await ParallelHasher(rootFD: rootFD, options: options).hash(walk.pending)
        for (job, digest) in zip(walk.pending, hashes) {
            walk.records[job.record].xxh128 = digest.xxh128
            walk.records[job.record].identity = digest.identity
            statistics.filesHashed += 1
            statistics.bytesHashed += digest.identity.size
        }

        var entries = [ManifestEntry]()
        entries.reserveCapacity(walk.records.count)
        var cacheRecords = [String: StatCache.Record](minimumCapacity: walk.records.count)
        let racyLimit = started.subtracting(nanoseconds: options.racyWindowNanoseconds)
        for record in walk.records {
            switch record.kind {
            case .directory:
                entries.append(.directory(record.path, mode: record.mode))
            case .symlink:
                entries.append(.symlink(record.path, target: record.target))
            case .file:
                let content = FileContent(size: record.identity.size, xxh128: record.xxh128)
                entries.append(.file(record.path, mode: record.mode, content))
                if !record.identity.changed(atOrAfter: racyLimit) {
                    cacheRecords[record.path] = StatCache.Record(identity: record.identity, xxh128: record.xxh128)
                }
            }
        }
        statistics.entries = entries.count
        let manifest: Manifest
        do {
            manifest = try Manifest(entries: entries)
        } catch {
            throw .invalidPath(error)
        }
        return ScanResult(
            manifest: manifest,
            warnings: walk.warnings,
            statCache: StatCache(records: cacheRecords),
            statistics: statistics
        )
    }

}

/// A wall-clock instant with nanoseconds, comparable with file timestamps.
struct Timestamp: Comparable {
    var seconds: Int64
    var nanoseconds: UInt32

    static func now() -> Timestamp {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Timestamp(seconds: Int64(spec.tv_sec), nanoseconds: UInt32(spec.tv_nsec))
    }

    func subtracting(nanoseconds delta: Int64) -> Timestamp {
        let total = seconds * 1_000_000_000 + Int64(nanoseconds) - delta
        return Timestamp(seconds: total / 1_000_000_000, nanoseconds: UInt32(total % 1_000_000_000))
    }

    static func < (lhs: Timestamp, rhs: Timestamp) -> Bool {
        (lhs.seconds, lhs.nanoseconds) < (rhs.seconds, rhs.nanoseconds)
    }
}

