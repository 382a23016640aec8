import UpgradeCore
internal import UpgradeHash
import UpgradeSystem

#if canImport(Glibc)
import Glibc
#endif

/// What a tree looks like to `stat` alone: every path with its kind and mode, each file's
/// identity (device, inode, size, mtime and ctime in ns) and each symlink's target, summed over
/// the tree as XXH3-128 per entry (docs/design.md, "No-op at scale").
///
/// A scan that found the tree equal to the installed manifest records its seal; a later run
/// whose walk gives the same seal has the same tree without loading the stat cache or holding a
/// single entry, so a no-op costs the `fstatat` calls and a directory's names at a time. Equal
/// identity means equal content exactly as in the stat cache (git's index): a rewrite moves the
/// ctime, which nobody sets back. A seal is only taken when no file changed within the racy
/// window before the scan, so a write in the same timestamp tick cannot hide behind it.
///
/// The sum does not depend on order, so directories are folded in as their tasks finish.
public struct TreeSeal: Hashable, Sendable {
    /// Entries folded in.
    public private(set) var count: UInt64 = 0
    /// The entries' XXH3-128 digests, summed modulo 2^128.
    public private(set) var high: UInt64 = 0
    public private(set) var low: UInt64 = 0

    /// The seal of nothing.
    public init() {}

    /// Parses ``description``; nil for anything else.
    public init?(_ text: String) {
        let parts = text.split(separator: ":")
        guard parts.count == 2, let count = UInt64(parts[0]), parts[1].utf8.count == 32,
            let high = UInt64(parts[1].prefix(16), radix: 16), let low = UInt64(parts[1].suffix(16), radix: 16)
        else { return nil }
        (self.count, self.high, self.low) = (count, high, low)
    }

    mutating func add(_ digest: XXH128Digest) {
        let (sum, carry) = low.addingReportingOverflow(digest.low)
        low = sum
        high = high &+ digest.high &+ (carry ? 1 : 0)
        count += 1
    }

    mutating func add(_ other: TreeSeal) {
        let (sum, carry) = low.addingReportingOverflow(other.low)
        low = sum
        high = high &+ other.high &+ (carry ? 1 : 0)
        count += other.count
    }

    /// Folds in one entry. Directories count by path and mode (their contents are entries of
    /// their own), symlinks by path and target, files by path, mode and identity.
    mutating func add(path: String, kind: EntryKind, mode: UInt32, identity: FileIdentity, target: String) {
        var bytes = [UInt8]()
        bytes.reserveCapacity(path.utf8.count + target.utf8.count + 64)
        bytes.append(contentsOf: path.utf8)
        bytes.append(0)
        switch kind {
        case .directory:
            bytes.append(UInt8(ascii: "d"))
            Self.append(UInt64(mode), to: &bytes)
        case .symlink:
            bytes.append(UInt8(ascii: "l"))
            bytes.append(contentsOf: target.utf8)
        case .file:
            bytes.append(UInt8(ascii: "f"))
            for value in [
                UInt64(mode), identity.device, identity.inode, identity.size,
                UInt64(bitPattern: identity.mtimeSeconds), UInt64(identity.mtimeNanoseconds),
                UInt64(bitPattern: identity.ctimeSeconds), UInt64(identity.ctimeNanoseconds),
            ] {
                Self.append(value, to: &bytes)
            }
        }
        add(bytes.withUnsafeBytes { XXH128Hasher.hash(bufferPointer: $0) })
    }

    private static func append(_ value: UInt64, to bytes: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }
}

extension TreeSeal: CustomStringConvertible {
    /// `COUNT:HEX32`, as stored beside the installed release.
    public var description: String {
        func hex(_ value: UInt64) -> String {
            let digits = String(value, radix: 16)
            return String(repeating: "0", count: 16 - digits.count) + digits
        }
        return "\(count):\(hex(high))\(hex(low))"
    }
}

extension Scanner {
    /// The seal of `root` as it is now: a walk that stats every path and reads every symlink,
    /// and reads no file and no stat cache. Throws what ``scan(root:cache:)`` would throw for a
    /// tree it cannot walk; nil when a special file was skipped (a tree with warnings has no seal).
    public func seal(root: String) async throws(ScanError) -> TreeSeal? {
        let rootFD: Int32
        do {
            rootFD = try Posix.openAt(AT_FDCWD, root, O_RDONLY | O_DIRECTORY)
        } catch {
            throw .rootUnusable(root: root, error)
        }
        defer { close(rootFD) }
        do {
            return try await TreeWalk(rootFD: rootFD, options: options, cache: StatCache()).sealTree()
        } catch let error as ScanError {
            throw error
        } catch let error as PathError {
            throw .invalidPath(error)
        } catch let error as SystemCallError {
            throw .unreadable(path: ".", error)
        } catch {
            throw .changedDuringScan(path: "(scan cancelled: \(error))")
        }
    }

    /// The seal of a scan's tree, from its chunks; nil when a file changed within the racy
    /// window before `racyLimit` or a special file was skipped.
    static func seal(of walk: Subtree, racyLimit: Timestamp) -> TreeSeal? {
        guard walk.warnings.isEmpty else { return nil }
        var seal = TreeSeal()
        var racy = false
        for chunk in walk.chunks {
            for index in chunk.entries.indices {
                racy = seal.add(chunk.entries[index], chunk.identities[index], racyLimit: racyLimit) || racy
            }
        }
        return racy ? nil : seal
    }
}

extension TreeSeal {
    /// Folds in a scanned entry; true when it is a file changed at or after `racyLimit`.
    /// (Kept out of line: with this loop inlined into ``Scanner/seal(of:racyLimit:)``, the
    /// 6.3.1 optimizer's copy propagation crashes on the borrowed entry.)
    @inline(never)
    mutating func add(_ entry: ManifestEntry, _ identity: FileIdentity, racyLimit: Timestamp) -> Bool {
        var target = ""
        switch entry.content {
        case .file: if identity.changed(atOrAfter: racyLimit) { return true }
        case .symlink(let link): target = link
        case .directory: break
        }
        add(path: entry.path, kind: entry.kind, mode: entry.mode, identity: identity, target: target)
        return false
    }
}

extension TreeWalk {
    /// A directory the seal walk has yet to visit.
    struct PendingDirectory: Sendable {
        var path: String
        /// The inode its parent saw (nil for the root).
        var identity: FileIdentity?
        var depth: Int
    }

    /// ``Scanner/seal(root:)``: the tree a level at a time while levels are narrow, then each
    /// directory of the first wide level (4 per task) walked depth-first as a whole subtree by
    /// one of ``ScanOptions/concurrency`` tasks that pull them from a counter. A directory's
    /// entries are folded in as they are stat'ed; what is kept is one directory's names per task
    /// and the directories still to visit (a level, then a depth-first stack per task), never an
    /// entry. (A task per directory, as the scan has, held a frame per directory of the tree:
    /// 90 MB at a million files; a level at a time throughout held every level's paths.)
    func sealTree() async throws -> TreeSeal? {
        var seal = TreeSeal()
        var level = [PendingDirectory(path: "", identity: nil, depth: 0)]
        while !level.isEmpty {
            let directories = level
            let subtrees = directories.count >= 4 * options.concurrency
            let next = WorkCounter()
            let workers = max(1, min(options.concurrency, directories.count))
            var below = [PendingDirectory]()
            let complete = try await withThrowingTaskGroup(of: (TreeSeal, [PendingDirectory])?.self) { group in
                for _ in 0..<workers {
                    group.addTask {
                        var mine = TreeSeal()
                        var found = [PendingDirectory]()
                        while true {
                            let index = next.take()
                            guard index < directories.count else { break }
                            try Task.checkCancellation()
                            guard try sealDirectory(directories[index], into: &mine, below: &found) else { return nil }
                            // A whole subtree: `found` is this task's depth-first stack.
                            while subtrees, let directory = found.popLast() {
                                guard try sealDirectory(directory, into: &mine, below: &found) else { return nil }
                            }
                        }
                        return (mine, found)
                    }
                }
                for try await result in group {
                    guard let (part, found) = result else {
                        group.cancelAll()
                        return false
                    }
                    seal.add(part)
                    below += found
                }
                return true
            }
            guard complete else { return nil }
            level = below
        }
        return seal
    }

    /// Folds one directory's entries into `seal` and appends its subdirectories to `below`;
    /// false when a special file was skipped (a tree with warnings has no seal).
    private func sealDirectory(
        _ directory: PendingDirectory,
        into seal: inout TreeSeal,
        below: inout [PendingDirectory]
    ) throws -> Bool {
        var warnings = [ScanWarning]()
        try withDirectory(prefix: directory.path, expected: directory.identity, sorted: false) { fd, names in
            for name in names {
                guard
                    let record = try entry(
                        name,
                        in: fd,
                        prefix: directory.path,
                        depth: directory.depth,
                        into: &warnings
                    )
                else {
                    continue
                }
                seal.add(
                    path: record.path,
                    kind: record.kind,
                    mode: record.mode,
                    identity: record.identity,
                    target: record.target
                )
                if record.kind == .directory {
                    below.append(
                        PendingDirectory(path: record.path, identity: record.identity, depth: directory.depth + 1)
                    )
                }
            }
        }
        return warnings.isEmpty
    }
}
