import UpgradeCore
import UpgradeSystem

#if canImport(Glibc)
import Glibc
#endif

/// Carries out a journal's steps on the tree, and undoes them. Undo looks at the disk to decide
/// what each step did (is the staged file still in staging? is the backup there?), so it is
/// idempotent: a crash during a rollback is recovered by rolling back again.
struct TransactionDriver {
    let root: SafeTree
    let staging: SafeTree
    let backup: SafeTree

    /// Does every step, in order.
    func commit(_ journal: Journal) throws {
        for step in journal.steps {
            switch step {
            case .mkdir(let path, let mode):
                try root.mkdir(path, mode: mode)
            case .place(let path, let staged, let backupName):
                if let backupName {
                    // The old entry stays in place until the rename swaps the new one in.
                    try root.link(path, into: backup, as: backupName)
                    try root.rename(from: staged, in: staging, to: path, replace: true)
                } else {
                    try root.rename(from: staged, in: staging, to: path, replace: false)
                }
            case .remove(let path, _, let backupName):
                try backup.rename(from: path, in: root, to: backupName, replace: false)
            case .chmod(let path, _, let mode):
                try root.chmod(path, mode: mode)
            case .metadata(let path, _, let meta, let mode):
                try root.setMetadata(path, meta, mode: mode)
            case .removeXattrs(let path, let removed):
                try root.removeXattrs(path, removed.map(\.name))
            }
        }
        try syncTouchedDirectories(journal)
    }

    /// Undoes whatever part of the journal reached the disk, last step first: the facts of each
    /// step read from the disk, the decision ``Undo/action(for:facts:)``'s, then done here.
    func rollback(_ journal: Journal) throws {
        for step in journal.undoOrder {
            try perform(Undo.action(for: step, facts: facts(of: step)))
        }
        try syncTouchedDirectories(journal)
    }

    /// What the disk holds for `step`.
    func facts(of step: Journal.Step) -> Undo.Facts {
        let (backupName, staged) = Undo.names(of: step)
        var facts = Undo.Facts()
        if let info = root.lstat(step.path) {
            let kind: EntryKind =
                switch info.st_mode & S_IFMT {
                case S_IFDIR: .directory
                case S_IFLNK: .symlink
                default: .file
                }
            facts.entry = Undo.Facts.Entry(kind: kind, permissions: UInt32(info.st_mode & 0o7777))
        }
        if let backupName { facts.backupExists = backup.exists(backupName) }
        if let staged { facts.stagedExists = staging.exists(staged) }
        return facts
    }

    private func perform(_ action: Undo.Action) throws {
        switch action {
        case .none: break
        case .restoreMetadata(let path, let before, let after, let mode):
            try root.restoreMetadata(path, before, replacing: after, mode: mode)
        case .setXattrs(let path, let attributes):
            try root.setMetadata(path, EntryMetadata(xattrs: attributes), mode: nil)
        case .chmod(let path, let mode):
            try root.chmod(path, mode: mode)
        case .restoreBackup(let path, let backupName, let replace):
            try root.rename(from: backupName, in: backup, to: path, replace: replace)
        case .dropBackup(let backupName):
            try backup.unlink(backupName)
        case .unstage(let path, let staged):
            try staging.rename(from: path, in: root, to: staged, replace: false)
        case .removeDirectory(let path):
            do {
                try root.unlink(path, directory: true)
            } catch let error as SystemCallError where error.code == ENOTEMPTY {
                throw ApplyError.manualIntervention(
                    "directory \(path) created by the upgrade is not empty; something else wrote into it"
                )
            }
        case .backupBlocked(let path, let backupName):
            throw ApplyError.manualIntervention(
                "\(path) exists while its backup \(backup.display)/\(backupName) waits to be restored"
            )
        }
    }

    /// fsync of every directory the journal changes, so renames are durable before the commit
    /// record (or the rollback's end) is written.
    private func syncTouchedDirectories(_ journal: Journal) throws {
        var directories = Set<String>([""])
        for step in journal.steps {
            directories.insert(PathRules.parent(of: step.path) ?? "")
            if case .mkdir(let path, _) = step { directories.insert(path) }
        }
        // Only what is a directory now: a kind change may have turned a parent into a file or link.
        for directory in directories.sorted()
        where directory.isEmpty || root.lstat(directory).map({ $0.st_mode & S_IFMT == S_IFDIR }) == true {
            if directory.isEmpty {
                try root.sync()
            } else {
                let sub = try root.subdirectory(directory)
                try sub.sync()
            }
        }
        try staging.sync()
        try backup.sync()
    }
}
