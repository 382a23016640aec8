/// One step of an upgrade plan.
///
/// Operations name their paths relative to the root. Applied in order to the tree they were
/// computed from, they yield the target tree (see ``Manifest/applying(_:)``).
public enum PlanOperation: Hashable, Sendable {
    /// Create a directory (the path does not exist yet).
    case mkdir(path: String, mode: UInt32)
    /// Create a regular file (the path does not exist yet).
    case add(path: String, mode: UInt32, content: FileContent)
    /// Replace an existing regular file's content, giving it `mode`.
    case replace(path: String, mode: UInt32, content: FileContent)
    /// Create a symlink, or atomically retarget an existing symlink.
    case symlink(path: String, target: String)
    /// Remove an entry of the given kind (a directory must be empty by then).
    case delete(path: String, kind: EntryKind)
    /// Change the permission bits of an existing file or directory.
    case chmod(path: String, mode: UInt32)

    /// The path the operation acts on.
    public var path: String {
        switch self {
        case .mkdir(let path, _), .add(let path, _, _), .replace(let path, _, _), .symlink(let path, _),
            .delete(let path, _), .chmod(let path, _):
            path
        }
    }

    /// The operation's name in JSON and listings.
    public var name: String {
        switch self {
        case .mkdir: "mkdir"
        case .add: "add"
        case .replace: "replace"
        case .symlink: "symlink"
        case .delete: "delete"
        case .chmod: "chmod"
        }
    }
}

/// An ordered list of operations that turns one tree into another.
public struct Plan: Hashable, Sendable {
    /// The operations, in the order they must be applied.
    public var operations: [PlanOperation]

    /// Wraps operations.
    public init(operations: [PlanOperation]) {
        self.operations = operations
    }

    /// True when applying the plan changes nothing.
    public var isEmpty: Bool { operations.isEmpty }

    /// What the plan does, counted.
    public var summary: Summary {
        var summary = Summary()
        for operation in operations {
            switch operation {
            case .mkdir: summary.directoriesCreated += 1
            case .add(_, _, let content):
                summary.filesAdded += 1
                summary.bytesToWrite += content.size
            case .replace(_, _, let content):
                summary.filesReplaced += 1
                summary.bytesToWrite += content.size
            case .symlink: summary.symlinksSet += 1
            case .delete(_, let kind):
                if kind == .directory { summary.directoriesDeleted += 1 } else { summary.filesDeleted += 1 }
            case .chmod: summary.modesChanged += 1
            }
        }
        return summary
    }

    /// Counts of a plan's operations.
    public struct Summary: Hashable, Sendable, Codable {
        public var filesAdded = 0
        public var filesReplaced = 0
        /// Files and symlinks removed.
        public var filesDeleted = 0
        public var directoriesCreated = 0
        public var directoriesDeleted = 0
        public var symlinksSet = 0
        public var modesChanged = 0
        /// Sum of the sizes of added and replaced files.
        public var bytesToWrite: UInt64 = 0

        /// All zero.
        public init() {}
    }
}
