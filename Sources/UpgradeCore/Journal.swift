/// The transaction journal: what the commit of a plan will do, step by step, written and
/// fsynced before the first change to the tree.
///
/// Every step can be undone by looking at the filesystem (is the staged file still there? is the
/// backup?), so the journal is written once and recovery needs no per-step records:
/// ``undoOrder`` lists the steps to reverse after a crash or a failed hook.
public struct Journal: Hashable, Sendable, Codable {
    /// One change to the tree.
    public enum Step: Hashable, Sendable, Codable {
        /// Create a directory with `mode`.
        case mkdir(path: String, mode: UInt32)
        /// Put the staged entry `staged` at `path`; when `backup` is set, the existing entry is
        /// first hard-linked into the backup area under that name, so the path never disappears.
        case place(path: String, staged: String, backup: String?)
        /// Move the entry at `path` (a file, symlink or empty directory) into the backup area.
        case remove(path: String, kind: EntryKind, backup: String)
        /// Change the permission bits from `from` to `to`.
        case chmod(path: String, from: UInt32, to: UInt32)
        /// Give the entry the owner and attributes of `to` (then the permission bits `mode`, which
        /// a change of owner may clear); undone by setting `from` again (nil: the entry was
        /// created by this transaction, and its removal undoes everything).
        case metadata(path: String, from: EntryMetadata?, to: EntryMetadata, mode: UInt32?)
        /// Remove extended attributes the installed release set and the new one does not
        /// (`removed` holds their values, set again on undo).
        case removeXattrs(path: String, removed: [ExtendedAttribute])

        /// The path the step changes.
        public var path: String {
            switch self {
            case .mkdir(let path, _), .place(let path, _, _), .remove(let path, _, _), .chmod(let path, _, _),
                .metadata(let path, _, _, _), .removeXattrs(let path, _):
                path
            }
        }
    }

    /// Where the transaction is.
    public enum State: String, Hashable, Sendable, Codable {
        /// Written; the tree may be partly changed. Recovery rolls back.
        case prepared
        /// Every step done, hooks passed, commit record written. Recovery rolls forward (finishes
        /// the bookkeeping); the tree is already the new release.
        case committed
    }

    public var state: State
    /// The id of the state the transaction installs (where its backups live).
    public var transaction: String = ""
    /// Product and versions before and after.
    public var fromVersion: String?
    public var toVersion: String
    public var product: String
    public var steps: [Step]
    /// The transaction repairs the installed release (same header): once committed, the installed
    /// state stays current and keeps its rollback point; this transaction's state is dropped.
    public var repair: Bool?
    /// The transaction is a rollback to this earlier state: once committed, that state becomes
    /// current again and the one rolled back from is dropped (rollback points are a chain).
    public var rollbackTo: String?

    /// The journal for carrying out `plan` on `tree` (the manifest the plan was verified against).
    ///
    /// Staged names are `s<index>` and backup names `b<index>` after the plan operation's index.
    public init(plan: Plan, tree: Manifest, product: String, fromVersion: String?, toVersion: String) {
        let index = tree.index()
        var steps = [Step]()
        for (position, operation) in plan.operations.enumerated() {
            switch operation {
            case .mkdir(let path, let mode):
                steps.append(.mkdir(path: path, mode: mode))
            case .add(let path, _, _):
                steps.append(.place(path: path, staged: "s\(position)", backup: nil))
            case .replace(let path, _, _):
                steps.append(.place(path: path, staged: "s\(position)", backup: "b\(position)"))
            case .symlink(let path, _):
                // Retargeting replaces a symlink that exists at this point of the plan.
                let exists =
                    index[path]?.kind == .symlink
                    && !plan.operations[..<position].contains(.delete(path: path, kind: .symlink))
                steps.append(.place(path: path, staged: "s\(position)", backup: exists ? "b\(position)" : nil))
            case .delete(let path, let kind):
                steps.append(.remove(path: path, kind: kind, backup: "b\(position)"))
            case .chmod(let path, let mode):
                // The mode before: from the tree, or from an earlier operation of this plan.
                var before = index[path]?.mode ?? 0o755
                for earlier in plan.operations[..<position] {
                    if case .mkdir(let p, let m) = earlier, p == path { before = m }
                }
                steps.append(.chmod(path: path, from: before, to: mode))
            }
        }
        self.state = .prepared
        self.fromVersion = fromVersion
        self.toVersion = toVersion
        self.product = product
        self.steps = steps
    }

    /// The steps to reverse, last first.
    public var undoOrder: [Step] { steps.reversed() }
}
