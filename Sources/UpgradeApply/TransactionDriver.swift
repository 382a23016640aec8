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

    /// Undoes whatever part of the journal reached the disk, last step first.
    func rollback(_ journal: Journal) throws {
        for step in journal.undoOrder {
            switch step {
            case .metadata(let path, let before, let after, let mode):
                guard let before, root.exists(path) else { continue }
                try root.restoreMetadata(path, before, replacing: after, mode: mode)
            case .removeXattrs(let path, let removed):
                guard root.exists(path) else { continue }
                try root.setMetadata(path, EntryMetadata(xattrs: removed), mode: nil)
            case .chmod(let path, let from, _):
                if let info = root.lstat(path), info.st_mode & S_IFMT != S_IFLNK, info.st_mode & 0o7777 != from {
                    try root.chmod(path, mode: from)
                }
            case .remove(let path, _, let backupName):
                if backup.exists(backupName) {
                    guard !root.exists(path) else {
                        throw ApplyError.manualIntervention(
                            "\(path) exists while its backup \(backup.display)/\(backupName) waits to be restored"
                        )
                    }
                    try root.rename(from: backupName, in: backup, to: path, replace: false)
                }
            case .place(let path, let staged, let backupName):
                let placed = !staging.exists(staged)
                if !placed {
                    // Never swapped in: drop the backup link, if it was made.
                    if let backupName, backup.exists(backupName) { try backup.unlink(backupName) }
                } else if let backupName {
                    if backup.exists(backupName) {
                        try root.rename(from: backupName, in: backup, to: path, replace: true)
                    }
                } else if root.exists(path) {
                    try staging.rename(from: path, in: root, to: staged, replace: false)
                }
            case .mkdir(let path, _):
                if let info = root.lstat(path), info.st_mode & S_IFMT == S_IFDIR {
                    do {
                        try root.unlink(path, directory: true)
                    } catch let error as SystemCallError where error.code == ENOTEMPTY {
                        throw ApplyError.manualIntervention(
                            "directory \(path) created by the upgrade is not empty; something else wrote into it"
                        )
                    }
                }
            }
        }
        try syncTouchedDirectories(journal)
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
