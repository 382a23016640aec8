import UpgradeCore
import UpgradeSystem

#if canImport(Glibc)
import Glibc
#endif

/// One path found by the walk.
struct WalkRecord: Sendable {
    var path: String
    var kind: EntryKind
    var mode: UInt32
    var identity: FileIdentity
    var target: String = ""
    var xxh128 = XXH128Digest(high: 0, low: 0)
}

/// A file whose content is read after the walk, by the parallel hasher.
struct HashJob: Sendable {
    /// Where its record is: chunk, then index in the chunk.
    var chunk: Int
    var record: Int
    var path: String
    var identity: FileIdentity
}

/// A run of the walk order: one directory's own entries up to (and including) a subdirectory,
/// or after its last one.
struct Chunk: Sendable {
    /// The paths as manifest entries, built by the directory's task (in parallel with the rest
    /// of the walk); a pending file's hash is filled in after the hasher ran.
    var entries: [ManifestEntry]
    /// What each entry's path looked like (for the stat cache), index for index.
    var identities: [FileIdentity]
    /// Indices into `entries` of files too large to hash inline.
    var pending: [Int]
    /// Whether `entries` are in canonical (path-byte) order.
    var inOrder: Bool
    /// Regular files among the entries.
    var files: Int

    init(records: ArraySlice<WalkRecord>, pending: [Int]) {
        self.pending = pending
        entries = records.map(\.entry)
        identities = records.map(\.identity)
        files = records.count { $0.kind == .file }
        inOrder = zip(entries, entries.dropFirst()).allSatisfy { !PathRules.byteOrder($1.path, $0.path) }
    }
}

extension WalkRecord {
    /// What the manifest says of this path.
    var entry: ManifestEntry {
        switch kind {
        case .directory: .directory(path, mode: mode)
        case .symlink: .symlink(path, target: target)
        case .file: .file(path, mode: mode, FileContent(size: identity.size, xxh128: xxh128))
        }
    }
}

/// A directory's subtree, in walk order: each directory's record is followed by its subtree,
/// siblings in name-byte order (nearly the canonical order, so building the manifest rarely sorts).
/// Held as chunks, so a parent splices its children in by reference and a record is copied
/// once however deep it lies.
struct Subtree: Sendable {
    var chunks: [Chunk] = []
    var warnings: [ScanWarning] = []
    var cacheHits = 0
    var filesHashed = 0
    var bytesHashed: UInt64 = 0

    /// Records in the subtree.
    var count: Int { chunks.reduce(0) { $0 + $1.entries.count } }

    mutating func append(_ child: Subtree) {
        chunks += child.chunks
        warnings += child.warnings
        cacheHits += child.cacheHits
        filesHashed += child.filesHashed
        bytesHashed += child.bytesHashed
    }
}

/// Walks a tree with one task per directory: a task lists and stats its directory with
/// `fstatat(AT_SYMLINK_NOFOLLOW)`, hashes its small files inline through single-component
/// `openat(O_NOFOLLOW)` on its own descriptor, and runs its subdirectories as child tasks, so
/// the syscall-bound walk and the hashing spread over every core. A directory is reopened by
/// path from the root and checked to be the inode its parent saw, so a directory swapped for a
/// symlink mid-scan fails the scan instead of leading it outside the root.
struct TreeWalk: Sendable {
    let rootFD: Int32
    let options: ScanOptions
    let cache: StatCache

    /// Files up to this size are hashed inline by the directory task.
    static let inlineLimit = 64 * 1024

    func walk() async throws -> Subtree {
        try await scanDirectory(prefix: "", expected: nil, depth: 0)
    }

    /// Opens the directory at `prefix` (checked to be `expected`, the inode its parent saw, so
    /// a directory swapped for a symlink fails the scan), lists its names (in byte order when
    /// `sorted`) and runs `body` with its descriptor and names; the descriptor is closed after.
    func withDirectory(
        prefix: String,
        expected: FileIdentity?,
        sorted: Bool,
        _ body: (Int32, [String]) throws -> Void
    ) throws {
        let fd: Int32
        do {
            fd = try Posix.openAt(rootFD, prefix.isEmpty ? "." : prefix, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
        } catch {
            if error.code == ELOOP || error.code == ENOTDIR || error.code == ENOENT {
                throw ScanError.changedDuringScan(path: prefix)
            }
            throw ScanError.unreadable(path: prefix, error)
        }
        do {
            defer { close(fd) }
            if let expected {
                let info = try Posix.stat(fd)
                guard info.st_ino == expected.inode, info.st_dev == expected.device else {
                    throw ScanError.changedDuringScan(path: prefix)
                }
            }
            var names = [String]()
            var invalid: [UInt8]?
            try Posix.forEachName(fd) { raw in
                // Names of up to 15 bytes are stored inline: listing allocates nothing for them.
                if let name = String(validating: raw, as: UTF8.self) {
                    names.append(name)
                } else if invalid == nil {
                    invalid = Array(raw)
                }
            }
            if let invalid {
                let shown = (prefix.isEmpty ? "" : prefix + "/") + String(decoding: invalid, as: UTF8.self)
                throw ScanError.invalidPath(PathError(path: shown, rule: .invalidUTF8))
            }
            if sorted { names.sort(by: PathRules.byteOrder) }
            try body(fd, names)
        } catch let error as ScanError {
            throw error
        } catch let error as SystemCallError {
            throw ScanError.unreadable(path: prefix.isEmpty ? "." : prefix, error)
        }
    }

    private func scanDirectory(prefix: String, expected: FileIdentity?, depth: Int) async throws -> Subtree {
        var local = Subtree()
        var records = [WalkRecord]()
        var pending = [Int]()
        var directories = [(slot: Int, path: String, identity: FileIdentity)]()
        try withDirectory(prefix: prefix, expected: expected, sorted: true) { fd, names in
            var buffer = [UInt8]()
            // The cache holds a directory's files one after another, in this walk's order.
            var hint = 0
            for name in names {
                guard let record = try entry(name, in: fd, prefix: prefix, depth: depth, into: &local.warnings)
                else {
                    continue
                }
                switch record.kind {
                case .directory:
                    directories.append((records.count, record.path, record.identity))
                    records.append(record)
                case .file:
                    var record = record
                    if let hash = cache.hash(for: record.identity, hint: &hint) {
                        record.xxh128 = hash
                        local.cacheHits += 1
                    } else if record.identity.size <= UInt64(Self.inlineLimit) {
                        if buffer.isEmpty { buffer = [UInt8](repeating: 0, count: Self.inlineLimit + 1) }
                        let digest = try FileHashing.hash(
                            directoryFD: fd,
                            name: name,
                            path: record.path,
                            expected: record.identity,
                            buffer: &buffer,
                            hasher: nil
                        )
                        record.xxh128 = digest.xxh128
                        record.identity = digest.identity
                        local.filesHashed += 1
                        local.bytesHashed += digest.identity.size
                    } else {
                        pending.append(records.count)
                    }
                    records.append(record)
                case .symlink:
                    records.append(record)
                }
            }
        }
        guard !directories.isEmpty else {
            local.chunks = [Chunk(records: records[...], pending: pending)]
            return local
        }

        // Children in parallel, then splice each subtree in after its directory's record.
        let children = try await withThrowingTaskGroup(of: (Int, Subtree).self) { group in
            for (index, directory) in directories.enumerated() {
                group.addTask {
                    (
                        index,
                        try await scanDirectory(prefix: directory.path, expected: directory.identity, depth: depth + 1)
                    )
                }
            }
            var results = [Subtree?](repeating: nil, count: directories.count)
            for try await (index, subtree) in group { results[index] = subtree }
            return results.map { $0! }
        }
        var assembled = Subtree()
        assembled.warnings = local.warnings
        var next = 0
        var nextPending = 0
        func chunk(through last: Int) -> Chunk {
            var mine = [Int]()
            while nextPending < pending.count, pending[nextPending] <= last {
                mine.append(pending[nextPending] - next)
                nextPending += 1
            }
            defer { next = last + 1 }
            return Chunk(records: records[next...last], pending: mine)
        }
        for (directory, child) in zip(directories, children) {
            assembled.chunks.append(chunk(through: directory.slot))
            assembled.append(child)
        }
        if next < records.count { assembled.chunks.append(chunk(through: records.count - 1)) }
        assembled.cacheHits += local.cacheHits
        assembled.filesHashed += local.filesHashed
        assembled.bytesHashed += local.bytesHashed
        return assembled
    }

    /// Stats one name; nil when it is excluded, vanished or skipped.
    func entry(
        _ name: String,
        in fd: Int32,
        prefix: String,
        depth: Int,
        into warnings: inout [ScanWarning]
    ) throws -> WalkRecord? {
        let path = prefix.isEmpty ? name : prefix + "/" + name
        if options.excluded.contains(path) { return nil }
        // readdir names are non-empty, slash-free, NUL-free and not `.`/`..`, and the listing
        // checked their UTF-8; length and depth are checked here. So every path the walk records
        // keeps the path rules, and its parent is the directory being walked: the scanner builds
        // its manifest without checking them again (``Manifest/init(walked:)``).
        if name.utf8.count > PathRules.maxComponentBytes || path.utf8.count > PathRules.maxPathBytes {
            try PathRules.validate(path)
        }
        if depth >= PathRules.maxDepth { throw ScanError.invalidPath(PathError(path: path, rule: .tooDeep(depth + 1))) }
        let info: stat
        do {
            info = try Posix.statAt(fd, name)
        } catch {
            // Vanished between readdir and stat: it is not part of the tree any more.
            if error.code == ENOENT { return nil }
            throw ScanError.unreadable(path: path, error)
        }
        let identity = FileIdentity(info)
        switch info.fileType {
        case S_IFREG:
            return WalkRecord(path: path, kind: .file, mode: info.permissions, identity: identity)
        case S_IFDIR:
            return WalkRecord(path: path, kind: .directory, mode: info.permissions, identity: identity)
        case S_IFLNK:
            let raw: [UInt8]
            do {
                raw = try Posix.readLink(fd, name)
            } catch {
                throw ScanError.unreadable(path: path, error)
            }
            guard let target = String(validating: raw, as: UTF8.self) else {
                throw ScanError.invalidPath(PathError(path: path, rule: .invalidUTF8))
            }
            try PathRules.validateSymlinkTarget(target, of: path)
            return WalkRecord(path: path, kind: .symlink, mode: 0, identity: identity, target: target)
        default:
            let kind = Self.describe(info.fileType)
            switch options.specialFiles {
            case .reject: throw ScanError.specialFile(path: path, kind: kind)
            case .skip: warnings.append(ScanWarning(path: path, reason: "it is a \(kind)"))
            }
            return nil
        }
    }

    static func describe(_ type: UInt32) -> String {
        switch type {
        case S_IFCHR: "character device"
        case S_IFBLK: "block device"
        case S_IFIFO: "FIFO"
        case S_IFSOCK: "socket"
        default: "file of unknown type"
        }
    }
}
