import UpgradeCore

/// How a transaction is undone, as decisions without a disk: for each journal step, in
/// ``Journal/undoOrder``, the driver reads the few facts the step needs (``Facts``), asks
/// ``action(for:facts:)`` what to do, and does it. Undo looks at what reached the disk rather
/// than at per-step records, so it is idempotent: a crash during a rollback is recovered by
/// rolling back again, and each decision here is a pure function that tests check exhaustively.
enum Undo {
    /// What the disk holds for one step, read just before deciding it.
    struct Facts: Hashable, Sendable {
        /// The entry at the step's path in the root, nil when there is none.
        var entry: Entry?
        /// The step's backup (its `backup` name) is in the backup area.
        var backupExists = false
        /// The step's staged file (a `place`) is still in staging: it was never swapped in.
        var stagedExists = false

        /// The kind and permission bits of an entry (anything neither a directory nor a symlink
        /// counts as a file).
        struct Entry: Hashable, Sendable {
            var kind: EntryKind
            var permissions: UInt32
        }
    }

    /// One thing to do to the disk.
    enum Action: Hashable, Sendable {
        /// Nothing reached the disk, or it is already undone.
        case none
        /// Give the entry its owner and attributes `before` again (`after` is what to replace).
        case restoreMetadata(path: String, before: EntryMetadata, after: EntryMetadata, mode: UInt32?)
        /// Set the removed extended attributes again.
        case setXattrs(path: String, [ExtendedAttribute])
        /// Set the permission bits back.
        case chmod(path: String, mode: UInt32)
        /// Move the backup back to `path` (over what is there when `replace`).
        case restoreBackup(path: String, backup: String, replace: Bool)
        /// Drop a backup link of an entry that was never replaced.
        case dropBackup(String)
        /// Move a placed entry that had no predecessor back into staging.
        case unstage(path: String, staged: String)
        /// Remove a directory the transaction created (it must be empty again).
        case removeDirectory(String)
        /// Undo cannot go on without a person: something else took the path whose backup waits
        /// to be restored.
        case backupBlocked(path: String, backup: String)
    }

    /// What undoing `step` takes, given what the disk holds now.
    static func action(for step: Journal.Step, facts: Facts) -> Action {
        switch step {
        case .metadata(let path, let before, let after, let mode):
            guard let before, facts.entry != nil else { return .none }
            return .restoreMetadata(path: path, before: before, after: after, mode: mode)
        case .removeXattrs(let path, let removed):
            return facts.entry == nil ? .none : .setXattrs(path: path, removed)
        case .chmod(let path, let from, _):
            guard let entry = facts.entry, entry.kind != .symlink, entry.permissions != from else { return .none }
            return .chmod(path: path, mode: from)
        case .remove(let path, _, let backup):
            guard facts.backupExists else { return .none }
            guard facts.entry == nil else {
                return .backupBlocked(path: path, backup: backup)
            }
            return .restoreBackup(path: path, backup: backup, replace: false)
        case .place(let path, let staged, let backup):
            if facts.stagedExists {
                // Never swapped in: drop the backup link, if it was made.
                guard let backup, facts.backupExists else { return .none }
                return .dropBackup(backup)
            }
            if let backup {
                return facts.backupExists ? .restoreBackup(path: path, backup: backup, replace: true) : .none
            }
            return facts.entry == nil ? .none : .unstage(path: path, staged: staged)
        case .mkdir(let path, _):
            return facts.entry?.kind == .directory ? .removeDirectory(path) : .none
        }
    }

    /// The backup and staged names `step` refers to, which the driver looks up for ``Facts``.
    static func names(of step: Journal.Step) -> (backup: String?, staged: String?) {
        switch step {
        case .place(_, let staged, let backup): (backup, staged)
        case .remove(_, _, let backup): (backup, nil)
        default: (nil, nil)
        }
    }
}

/// What recovery does with the journal a crash left behind.
enum Recovery: Hashable, Sendable {
    /// No transaction was in progress.
    case nothing
    /// The commit record was written: the tree is the new release; finish the bookkeeping.
    case rollForward(Journal)
    /// The tree may be partly changed: undo what reached the disk, then drop the transaction.
    case rollBack(Journal)

    static func decide(_ journal: Journal?) -> Recovery {
        guard let journal else { return .nothing }
        switch journal.state {
        case .committed: return .rollForward(journal)
        case .prepared: return .rollBack(journal)
        }
    }
}
