import Testing
import UpgradeCore

@testable import UpgradeApply

/// The undo and recovery decisions, without a disk: each step's action from the facts, and a
/// model tree crashed after every commit step (and again during its rollback) that must always
/// come back to exactly the old tree.
@Suite("Undo decisions")
struct UndoTests {
    typealias Facts = Undo.Facts
    static let file = Facts.Entry(kind: .file, permissions: 0o644)

    @Test("every step: undone from what reached the disk, nothing when nothing did")
    func decisions() {
        let place = Journal.Step.place(path: "f", staged: "s1", backup: "b1")
        let placeNew = Journal.Step.place(path: "n", staged: "s2", backup: nil)
        let remove = Journal.Step.remove(path: "g", kind: .file, backup: "b2")
        let chmod = Journal.Step.chmod(path: "h", from: 0o644, to: 0o755)
        let mkdir = Journal.Step.mkdir(path: "d", mode: 0o755)
        let cases: [(Journal.Step, Facts, Undo.Action)] = [
            // place over an existing entry: link made, rename not yet -> drop the link
            (place, Facts(entry: Self.file, backupExists: true, stagedExists: true), .dropBackup("b1")),
            (place, Facts(entry: Self.file, backupExists: false, stagedExists: true), .none),
            (
                place, Facts(entry: Self.file, backupExists: true, stagedExists: false),
                .restoreBackup(path: "f", backup: "b1", replace: true)
            ),
            (place, Facts(entry: Self.file, backupExists: false, stagedExists: false), .none),
            // place of a new entry
            (placeNew, Facts(entry: nil, stagedExists: true), .none),
            (placeNew, Facts(entry: Self.file, stagedExists: false), .unstage(path: "n", staged: "s2")),
            (placeNew, Facts(entry: nil, stagedExists: false), .none),
            // remove
            (remove, Facts(entry: nil, backupExists: true), .restoreBackup(path: "g", backup: "b2", replace: false)),
            (remove, Facts(entry: Self.file, backupExists: true), .backupBlocked(path: "g", backup: "b2")),
            (remove, Facts(entry: Self.file, backupExists: false), .none),
            // chmod: only a non-link whose bits are not already the old ones
            (chmod, Facts(entry: Facts.Entry(kind: .file, permissions: 0o755)), .chmod(path: "h", mode: 0o644)),
            (chmod, Facts(entry: Self.file), .none),
            (chmod, Facts(entry: Facts.Entry(kind: .symlink, permissions: 0o777)), .none),
            (chmod, Facts(entry: nil), .none),
            // mkdir: only a directory is removed
            (mkdir, Facts(entry: Facts.Entry(kind: .directory, permissions: 0o755)), .removeDirectory("d")),
            (mkdir, Facts(entry: Self.file), .none),
            (mkdir, Facts(entry: nil), .none),
        ]
        for (step, facts, expected) in cases {
            #expect(Undo.action(for: step, facts: facts) == expected, "\(step) with \(facts)")
        }
        let before = EntryMetadata(xattrs: [ExtendedAttribute(name: "user.a", value: [1])])
        let after = EntryMetadata()
        let metadata = Journal.Step.metadata(path: "m", from: before, to: after, mode: 0o600)
        #expect(
            Undo.action(for: metadata, facts: Facts(entry: Self.file))
                == .restoreMetadata(path: "m", before: before, after: after, mode: 0o600)
        )
        #expect(Undo.action(for: metadata, facts: Facts(entry: nil)) == .none)
        let created = Journal.Step.metadata(path: "m", from: nil, to: after, mode: nil)
        #expect(Undo.action(for: created, facts: Facts(entry: Self.file)) == .none)
        let xattrs = Journal.Step.removeXattrs(path: "m", removed: before.xattrs)
        #expect(Undo.action(for: xattrs, facts: Facts(entry: Self.file)) == .setXattrs(path: "m", before.xattrs))
        #expect(Undo.action(for: xattrs, facts: Facts(entry: nil)) == .none)
    }

    @Test("recovery rolls a committed journal forward, a prepared one back, and leaves no journal alone")
    func recovery() throws {
        var journal = try Self.journal()
        #expect(Recovery.decide(nil) == .nothing)
        journal.state = .prepared
        #expect(Recovery.decide(journal) == .rollBack(journal))
        journal.state = .committed
        #expect(Recovery.decide(journal) == .rollForward(journal))
    }

    @Test("crashed after any commit step, and again after any undo action, undo restores exactly the old tree")
    func crashAnywhere() throws {
        let journal = try Self.journal()
        let old = ModelDisk.initial
        let commit = ModelDisk.microSteps(journal)
        var checked = 0
        for crash in 0...commit.count {
            var disk = old
            for step in commit.prefix(crash) { try disk.apply(step) }
            // A rollback that is itself cut short after `again` actions, then run from the start.
            var first = disk
            let actions = first.undo(journal)
            for again in 0...actions {
                var interrupted = disk
                interrupted.undo(journal, stopAfter: again)
                interrupted.undo(journal)
                #expect(interrupted.root == old.root, "crash after \(crash) commit steps, rollback cut after \(again)")
                #expect(interrupted.backup.isEmpty, "crash after \(crash), cut after \(again): \(interrupted.backup)")
                checked += 1
            }
            // The tree is the old one and no backup is left; staging is scratch, dropped after a
            // rollback (a replaced file's new content is not moved back into it).
            #expect(first.root == old.root, "crash after \(crash) commit steps")
            #expect(first.backup.isEmpty, "crash after \(crash) commit steps: \(first.backup)")
        }
        #expect(commit.count == 6)
        #expect(checked > 20)
    }

    static func journal() throws -> Journal {
        var journal = Journal(
            plan: Plan(operations: []),
            tree: try Manifest(entries: []),
            product: "app",
            fromVersion: "1.0",
            toVersion: "2.0"
        )
        journal.state = .prepared
        journal.steps = [
            .mkdir(path: "d", mode: 0o755),
            .place(path: "d/new", staged: "s0", backup: nil),
            .place(path: "f", staged: "s1", backup: "b0"),
            .remove(path: "g", kind: .file, backup: "b1"),
            .chmod(path: "h", from: 0o644, to: 0o755),
        ]
        return journal
    }
}

/// Three directories of named entries, with the driver's commit and undo on them.
struct ModelDisk: Equatable {
    struct Entry: Equatable {
        var kind: EntryKind
        var permissions: UInt32
        var content: String
    }

    var root: [String: Entry]
    var backup: [String: Entry] = [:]
    var staging: [String: Entry]

    static let initial = ModelDisk(
        root: [
            "f": Entry(kind: .file, permissions: 0o644, content: "old f"),
            "g": Entry(kind: .file, permissions: 0o644, content: "g"),
            "h": Entry(kind: .file, permissions: 0o644, content: "h"),
        ],
        staging: [
            "s0": Entry(kind: .file, permissions: 0o644, content: "new d/new"),
            "s1": Entry(kind: .file, permissions: 0o644, content: "new f"),
        ]
    )

    /// The commit, one system call at a time (a place over an entry is a link, then a rename).
    enum Micro {
        case mkdir(String, UInt32)
        case link(String, backup: String)
        case rename(staged: String, to: String)
        case remove(String, backup: String)
        case chmod(String, UInt32)
    }

    static func microSteps(_ journal: Journal) -> [Micro] {
        journal.steps.flatMap { step -> [Micro] in
            switch step {
            case .mkdir(let path, let mode): [.mkdir(path, mode)]
            case .place(let path, let staged, let backup?):
                [.link(path, backup: backup), .rename(staged: staged, to: path)]
            case .place(let path, let staged, nil): [.rename(staged: staged, to: path)]
            case .remove(let path, _, let backup): [.remove(path, backup: backup)]
            case .chmod(let path, _, let mode): [.chmod(path, mode)]
            case .metadata, .removeXattrs: []
            }
        }
    }

    struct Failure: Error {}

    mutating func apply(_ step: Micro) throws {
        switch step {
        case .mkdir(let path, let mode): root[path] = Entry(kind: .directory, permissions: mode, content: "")
        case .link(let path, let name):
            guard let entry = root[path] else { throw Failure() }
            backup[name] = entry
        case .rename(let staged, let path):
            guard let entry = staging.removeValue(forKey: staged) else { throw Failure() }
            root[path] = entry
        case .remove(let path, let name):
            guard let entry = root.removeValue(forKey: path) else { throw Failure() }
            backup[name] = entry
        case .chmod(let path, let mode): root[path]?.permissions = mode
        }
    }

    func facts(_ step: Journal.Step) -> Undo.Facts {
        let (backupName, staged) = Undo.names(of: step)
        var facts = Undo.Facts()
        facts.entry = root[step.path].map { Undo.Facts.Entry(kind: $0.kind, permissions: $0.permissions) }
        if let backupName { facts.backupExists = backup[backupName] != nil }
        if let staged { facts.stagedExists = staging[staged] != nil }
        return facts
    }

    /// Runs the undo decisions on the model, stopping (a crash) after `stopAfter` actions that
    /// changed something; returns how many it did.
    @discardableResult
    mutating func undo(_ journal: Journal, stopAfter: Int = .max) -> Int {
        var done = 0
        for step in journal.undoOrder {
            guard done < stopAfter else { return done }
            let action = Undo.action(for: step, facts: facts(step))
            switch action {
            case .none: continue
            case .restoreBackup(let path, let name, _): root[path] = backup.removeValue(forKey: name)
            case .dropBackup(let name): backup[name] = nil
            case .unstage(let path, let staged): staging[staged] = root.removeValue(forKey: path)
            case .removeDirectory(let path):
                #expect(!root.keys.contains { $0.hasPrefix(path + "/") }, "removing a non-empty \(path)")
                root[path] = nil
            case .chmod(let path, let mode): root[path]?.permissions = mode
            case .restoreMetadata, .setXattrs, .backupBlocked:
                Issue.record("unexpected \(action)")
            }
            done += 1
        }
        return done
    }
}
