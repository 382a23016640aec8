/// Computes the plan that turns tree `from` into tree `to`.
///
/// Pure, total and deterministic: any two valid manifests give a plan, and the same inputs give
/// the same plan. The order is safe to apply one operation at a time:
///
/// 1. entries whose kind changes (file ↔ directory ↔ symlink) are removed first, with
///    everything beneath them, deepest first, so their path is free;
/// 2. directories, files and symlinks of the target are created or replaced in path-byte order,
///    which puts every directory before its contents;
/// 3. entries absent from the target are deleted, deepest first, so directories are empty when
///    their turn comes;
/// 4. permission changes come last, deepest first, so a directory that becomes read-only is
///    filled and emptied before it loses its write bit. A new directory whose final mode lacks
///    owner write or search permission is created with them and gets its final mode here.
public func plan(from old: Manifest, to new: Manifest) -> Plan {
    Plan(from: old, to: new)
}

extension Plan {
    /// See ``plan(from:to:)``.
    public init(from old: Manifest, to new: Manifest) {
        let oldIndex = old.index()
        let newIndex = new.index()

        // 1. Kind changes: the old entry and, for a directory, its whole subtree must go first.
        var clearedEarly = Set<String>()
        var conflictDirectories = Set<String>()
        for entry in new.entries {
            guard let previous = oldIndex[entry.path], previous.kind != entry.kind else { continue }
            clearedEarly.insert(entry.path)
            if previous.kind == .directory { conflictDirectories.insert(entry.path) }
        }
        if !conflictDirectories.isEmpty {
            for entry in old.entries where Self.hasAncestor(entry.path, in: conflictDirectories) {
                clearedEarly.insert(entry.path)
            }
        }
        var operations = [PlanOperation]()
        for entry in old.entries.reversed() where clearedEarly.contains(entry.path) {
            operations.append(.delete(path: entry.path, kind: entry.kind))
        }

        // 2. Creations and replacements, parents first.
        var finalModes = [(path: String, mode: UInt32)]()
        for entry in new.entries {
            let previous = clearedEarly.contains(entry.path) ? nil : oldIndex[entry.path]
            switch entry.content {
            case .directory:
                if let previous {
                    if previous.mode != entry.mode { finalModes.append((entry.path, entry.mode)) }
                } else {
                    let workable = entry.mode | 0o700
                    operations.append(.mkdir(path: entry.path, mode: workable))
                    if workable != entry.mode { finalModes.append((entry.path, entry.mode)) }
                }
            case .file(let content):
                if let previous, let oldContent = previous.file {
                    if !oldContent.sameContent(as: content) {
                        operations.append(.replace(path: entry.path, mode: entry.mode, content: content))
                    } else if previous.mode != entry.mode {
                        finalModes.append((entry.path, entry.mode))
                    }
                } else {
                    operations.append(.add(path: entry.path, mode: entry.mode, content: content))
                }
            case .symlink(let target):
                if case .symlink(let oldTarget) = previous?.content, oldTarget == target { continue }
                operations.append(.symlink(path: entry.path, target: target))
            }
        }

        // 3. Deletions of what the target lacks, deepest first.
        for entry in old.entries.reversed() where newIndex[entry.path] == nil && !clearedEarly.contains(entry.path) {
            operations.append(.delete(path: entry.path, kind: entry.kind))
        }

        // 4. Final permission bits, deepest first.
        for change in finalModes.reversed() {
            operations.append(.chmod(path: change.path, mode: change.mode))
        }
        self.init(operations: operations)
    }

    /// True when one of `directories` is a strict ancestor of `path`.
    private static func hasAncestor(_ path: String, in directories: Set<String>) -> Bool {
        var current = PathRules.parent(of: path)
        while let candidate = current {
            if directories.contains(candidate) { return true }
            current = PathRules.parent(of: candidate)
        }
        return false
    }
}
