import Foundation
import Synchronization
import UpgradeCore
import UpgradeSystem

#if canImport(Glibc)
import Glibc
#endif

/// The state directory of a root (default `ROOT/.upgrade`, on the root's filesystem):
///
/// ```
/// lock                 flock; holds the holder's pid
/// current              the id of the installed state (replaced atomically)
/// state/ID/header      signed release header of that state
/// state/ID/manifest    its canonical manifest (with SHA-256s)
/// state/ID/previous    the id of the state it replaced ("" for a first install)
/// state/ID/journal     the journal of the transaction that installed it
/// state/ID/undo/       backups made by that transaction (what `upgrade rollback` restores)
/// state/ID/fingerprint the manifest's scan fingerprint (a cache: RootSession.recordFingerprint)
/// journal              the transaction in progress (JSON)
/// staging/             payloads of the transaction in progress
/// statcache            the scanner's stat cache
/// last-result.json     outcome of the last command that changed the root
/// last-attempt.json    how the last sync, apply or rollback ended (time, exit code, error)
/// last-success.json    the same, for the last one that succeeded
/// ```
final class StateStore: @unchecked Sendable {
    let tree: SafeTree
    let path: String
    /// Manifests already decoded, by state id, with the identity of the file they came from: one
    /// run asks for the installed state several times, and reading and decoding a million-entry
    /// manifest is the expensive part. State files are only ever replaced by rename, so a file
    /// with the same device, inode, size and timestamps holds the same bytes.
    private let decoded = Mutex<[String: (file: FileIdentity, manifest: Manifest)]>([:])

    init(root: SafeTree, name: String, rootPath: String, create: Bool = true) throws {
        tree = try root.subdirectory(name, create: create)
        path = rootPath + "/" + name
    }

    // MARK: Lock

    /// Shares the lock (read-only commands) when a lock file exists, waiting up to `timeout`
    /// seconds for a holder of the exclusive lock; nil when there is no lock file. Writes nothing.
    func sharedLock(timeout: Double) throws -> FileLock? {
        do {
            return try FileLock(directory: tree.fd, "lock", display: path + "/lock", mode: .shared, timeout: timeout)
        } catch let error as SystemCallError where error.code == ENOENT {
            return nil
        } catch let busy as FileLock.Busy {
            throw ApplyError.busy(pid: busy.pid, waited: busy.waited)
        }
    }

    /// The pid a lock holder wrote into the lock file, and whether the lock is held right now.
    /// Writes nothing.
    func lockHolder() -> (held: Bool, pid: Int32?) { FileLock.holder(directory: tree.fd, "lock") }

    /// Takes the exclusive lock, waiting up to `timeout` seconds; the lock file holds our pid.
    func lock(timeout: Double) throws -> FileLock {
        do {
            return try FileLock(directory: tree.fd, "lock", display: path + "/lock", mode: .exclusive, timeout: timeout)
        } catch let busy as FileLock.Busy {
            throw ApplyError.busy(pid: busy.pid, waited: busy.waited)
        }
    }

    // MARK: Files

    func read(_ name: String) -> [UInt8]? {
        guard let info = tree.lstat(name), info.st_mode & S_IFMT == S_IFREG else { return nil }
        return try? tree.withParent(name) { parentFD, last -> [UInt8] in
            let fd = try Posix.openAt(parentFD, last, O_RDONLY | O_NOFOLLOW, what: "\(path)/\(name)")
            defer { close(fd) }
            return try Posix.readAll(fd, what: "\(path)/\(name)")
        }
    }

    /// Writes `name` durably: temporary file, fsync, rename, fsync of the directory. Records a
    /// crash may lose (a cache, the last run's outcome) pass `durable: false`: still atomic
    /// (temporary file and rename), without the two fsyncs (~tens of ms each on some disks).
    func write(_ name: String, _ bytes: [UInt8], durable: Bool = true) throws {
        let temporary = name + ".tmp"
        try tree.observer.willMutate("write \(name)")
        try tree.withParent(temporary) { parentFD, last in
            let fd = openat(parentFD, last, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw SystemCallError(call: "open \(path)/\(temporary)", code: errno) }
            defer { close(fd) }
            try Posix.writeAll(fd, bytes, what: "\(path)/\(temporary)")
            guard !durable || fsync(fd) == 0 else {
                throw SystemCallError(call: "fsync \(path)/\(temporary)", code: errno)
            }
        }
        try tree.rename(from: temporary, in: tree, to: name, replace: true)
        if durable { try tree.syncParent(of: name) }
    }

    // MARK: States

    /// An installed state.
    struct InstalledState {
        let id: String
        let headerBytes: [UInt8]
        let manifest: Manifest
        let previous: String?
    }

    var currentID: String? {
        read("current").map { String(decoding: $0, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) }
            .flatMap { $0.isEmpty ? nil : $0 }
    }

    func state(_ id: String) -> InstalledState? {
        let manifestFile = "state/\(id)/manifest"
        guard let header = read("state/\(id)/header"), let info = tree.lstat(manifestFile) else { return nil }
        let file = FileIdentity(info)
        let manifest: Manifest
        if let memo = decoded.withLock({ $0[id] }), memo.file == file {
            manifest = memo.manifest
        } else {
            guard let bytes = read(manifestFile), let fresh = try? Manifest(canonical: bytes) else { return nil }
            manifest = fresh
            // Two at most (the installed state and the one before it): bounded memory.
            decoded.withLock { memo in
                if memo.count >= 2 { memo.removeAll() }
                memo[id] = (file, fresh)
            }
        }
        let previous = read("state/\(id)/previous").map { String(decoding: $0, as: UTF8.self) }.flatMap {
            $0.isEmpty ? nil : $0
        }
        return InstalledState(id: id, headerBytes: header, manifest: manifest, previous: previous)
    }

    var current: InstalledState? { currentID.flatMap(state) }

    /// The installed state's id and signed header, without reading its manifest.
    var currentHeader: (id: String, headerBytes: [UInt8])? {
        guard let id = currentID, let header = read("state/\(id)/header") else { return nil }
        return (id, header)
    }

    /// The previous release's files that the transaction which installed `state` backed up:
    /// content → (path in the previous release, backup path inside the state directory). Nil when
    /// there is no previous release or its journal is gone.
    func backups(of state: InstalledState) -> (previous: InstalledState, files: [SHA256Hash: (FileContent, String)])? {
        guard let previousID = state.previous, let previous = self.state(previousID),
            let journalBytes = read("state/\(state.id)/journal"),
            let journal = try? JSONDecoder().decode(Journal.self, from: Data(journalBytes))
        else { return nil }
        // Backups hold the previous release's entries at the paths the transaction replaced or removed.
        let index = previous.manifest.index()
        var files = [SHA256Hash: (FileContent, String)]()
        for step in journal.steps {
            let backupName: String?
            switch step {
            case .place(_, _, let backup): backupName = backup
            case .remove(_, _, let backup): backupName = backup
            default: backupName = nil
            }
            if let backupName, let file = index[step.path]?.file, let sha = file.sha256, files[sha] == nil {
                files[sha] = (file, "state/\(state.id)/undo/\(backupName)")
            }
        }
        return (previous, files)
    }

    /// The tree a rollback of `state` restores: as it was before the transaction that installed
    /// `state` (local edits and added files included, recorded as `before` when it was not exactly
    /// the previous release), else the previous release. Backed-up files that the previous
    /// release does not name (local edits) are hashed and added to `backups`; an entry whose
    /// content is neither backed up nor in place any more falls back to the previous release's.
    func treeBefore(
        _ state: InstalledState,
        previous: Manifest,
        backups: inout [SHA256Hash: String]
    ) throws -> Manifest {
        guard let bytes = read("state/\(state.id)/before"), let before = try? Manifest(canonical: bytes),
            let journalBytes = read("state/\(state.id)/journal"),
            let journal = try? JSONDecoder().decode(Journal.self, from: Data(journalBytes))
        else { return previous }
        let signed = previous.index()
        var backedUp = [String: String]()
        for step in journal.steps {
            switch step {
            case .place(let path, _, let backup?): backedUp[path] = "state/\(state.id)/undo/\(backup)"
            case .remove(let path, _, let backup): backedUp[path] = "state/\(state.id)/undo/\(backup)"
            default: break
            }
        }
        var entries = [ManifestEntry]()
        entries.reserveCapacity(before.entries.count)
        for var entry in before.entries {
            if case .file(var content) = entry.content, content.sha256 == nil {
                if let signedFile = signed[entry.path]?.file, signedFile.size == content.size,
                    signedFile.xxh128 == content.xxh128
                {
                    content.sha256 = signedFile.sha256
                } else if let backup = backedUp[entry.path] {
                    let fd = try tree.withParent(backup) { parent, last in
                        openat(parent, last, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
                    }
                    if fd >= 0 {
                        defer { close(fd) }
                        let (sha, size) = try sha256(of: fd, what: "\(path)/\(backup)")
                        if size == content.size {
                            content.sha256 = sha
                            backups[sha] = backup
                        }
                    }
                }
                entry.content = .file(content)
            }
            entries.append(entry)
        }
        return try Manifest(entries: entries, hooks: previous.hooks, policy: previous.policy)
    }

    /// A fresh state id, larger than any existing one.
    func newStateID() -> String {
        let existing = (try? tree.subdirectory("state", create: true).list()) ?? []
        let next = (existing.compactMap { UInt64($0) }.max() ?? 0) + 1
        return String(format: "%08llu", next)
    }

    /// Journal of the transaction in progress.
    func journal() throws -> Journal? {
        guard let bytes = read("journal") else { return nil }
        do {
            return try JSONDecoder().decode(Journal.self, from: Data(bytes))
        } catch {
            throw ApplyError.manualIntervention(
                "the journal \(path)/journal cannot be read (\(error)); restore the tree from a backup or remove the journal"
            )
        }
    }

    func writeJournal(_ journal: Journal) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        try write("journal", [UInt8](try encoder.encode(journal)))
    }
}
