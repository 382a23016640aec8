/// What kind of filesystem object an entry is.
public enum EntryKind: UInt8, Hashable, Sendable, CaseIterable, Codable, CustomStringConvertible {
    case file = 1
    case directory = 2
    case symlink = 3

    /// The name used in JSON and messages.
    public var description: String {
        switch self {
        case .file: "file"
        case .directory: "directory"
        case .symlink: "symlink"
        }
    }

    /// Parses the JSON name.
    public init?(name: String) {
        guard let kind = Self.allCases.first(where: { $0.description == name }) else { return nil }
        self = kind
    }
}

/// The identity of a regular file's content.
public struct FileContent: Hashable, Sendable {
    /// Size in bytes.
    public var size: UInt64
    /// XXH3-128 of the content: finds changes fast.
    public var xxh128: XXH128Digest
    /// SHA-256 of the content: filled by publishing; the integrity check of every fetched byte.
    public var sha256: SHA256Hash?

    /// Creates a content identity.
    public init(size: UInt64, xxh128: XXH128Digest, sha256: SHA256Hash? = nil) {
        self.size = size
        self.xxh128 = xxh128
        self.sha256 = sha256
    }

    /// True when both describe the same bytes as far as the two records can tell: equal size
    /// and XXH3-128, and equal SHA-256 where both carry one.
    public func sameContent(as other: FileContent) -> Bool {
        guard size == other.size, xxh128 == other.xxh128 else { return false }
        if let mine = sha256, let theirs = other.sha256 { return mine == theirs }
        return true
    }
}

/// One path of a tree and everything that defines it.
public struct ManifestEntry: Hashable, Sendable {
    /// What the path holds.
    public enum Content: Hashable, Sendable {
        case file(FileContent)
        case directory
        case symlink(target: String)
    }

    /// Relative path, valid under ``PathRules``.
    public var path: String
    /// Permission bits (`mode & 0o7777`); 0 for symlinks, whose mode Linux ignores.
    public var mode: UInt32
    /// The content.
    public var content: Content

    /// Creates an entry; symlink modes are normalized to 0 and other modes masked to 0o7777.
    public init(path: String, mode: UInt32, content: Content) {
        self.path = path
        self.content = content
        if case .symlink = content { self.mode = 0 } else { self.mode = mode & 0o7777 }
    }

    /// A regular file.
    public static func file(_ path: String, mode: UInt32 = 0o644, _ content: FileContent) -> Self {
        Self(path: path, mode: mode, content: .file(content))
    }

    /// A directory.
    public static func directory(_ path: String, mode: UInt32 = 0o755) -> Self {
        Self(path: path, mode: mode, content: .directory)
    }

    /// A symbolic link.
    public static func symlink(_ path: String, target: String) -> Self {
        Self(path: path, mode: 0, content: .symlink(target: target))
    }

    /// The entry's kind.
    public var kind: EntryKind {
        switch content {
        case .file: .file
        case .directory: .directory
        case .symlink: .symlink
        }
    }

    /// The file content, for files.
    public var file: FileContent? {
        if case .file(let content) = content { return content }
        return nil
    }

    /// The size in bytes for files, 0 otherwise.
    public var size: UInt64 { file?.size ?? 0 }
}

/// Scripts from a release's own tree that run around an install.
public struct Hooks: Hashable, Sendable {
    /// When a hook runs.
    public enum Kind: UInt8, Hashable, Sendable, CaseIterable, CustomStringConvertible {
        case preInstall = 1
        case postInstall = 2
        case healthCheck = 3

        /// The name used in JSON, flags and messages.
        public var description: String {
            switch self {
            case .preInstall: "pre-install"
            case .postInstall: "post-install"
            case .healthCheck: "health-check"
            }
        }

        /// Parses the name.
        public init?(name: String) {
            guard let kind = Self.allCases.first(where: { $0.description == name }) else { return nil }
            self = kind
        }
    }

    /// Hook kind → path of a file in the tree.
    public var scripts: [Kind: String]

    /// Creates a hook table.
    public init(_ scripts: [Kind: String] = [:]) {
        self.scripts = scripts
    }

    /// True when no hook is declared.
    public var isEmpty: Bool { scripts.isEmpty }
}

/// A tree: its entries sorted by path bytes, and its hooks.
///
/// A `Manifest` value always satisfies the manifest rules: valid paths, no duplicates, every
/// entry's parent present as a directory (so nothing sits beneath a symlink or a file), hooks
/// naming files of the tree.
public struct Manifest: Hashable, Sendable {
    /// Entries in canonical order (UTF-8 bytes of the path).
    public let entries: [ManifestEntry]
    /// Declared hooks.
    public let hooks: Hooks
    /// Declared config and unmanaged paths (see ``PathPolicy``).
    public let policy: PathPolicy
    /// Owner, extended attributes, hard links and sparseness, by path (only entries that have any).
    public let metadata: [String: EntryMetadata]

    /// Validates and sorts `entries`; throws ``PathError`` naming the first offending path.
    public init(
        entries: [ManifestEntry],
        hooks: Hooks = Hooks(),
        policy: PathPolicy = .none,
        metadata: [String: EntryMetadata] = [:]
    ) throws(PathError) {
        // Scanners emit entries nearly in order; checking first avoids moving 100,000 entries.
        let inOrder = zip(entries, entries.dropFirst()).allSatisfy { !PathRules.byteOrder($1.path, $0.path) }
        let sorted = inOrder ? entries : entries.sorted { PathRules.byteOrder($0.path, $1.path) }
        try Self.validate(sorted: sorted, hooks: hooks)
        let metadata = metadata.filter { !$0.value.isEmpty }
        if let (path, why) = Self.metadataViolation(metadata, entries: sorted) {
            throw PathError(path: path, rule: .badMetadata(why))
        }
        self.entries = sorted
        self.hooks = hooks
        self.policy = policy
        self.metadata = metadata
    }

    /// A tree read by a directory walk, which keeps the path rules by construction: components
    /// from readdir (non-empty, no `/` or NUL, not `.` or `..`, unique within their directory),
    /// UTF-8, length and depth checked by the walk, symlink targets checked, and every entry
    /// listed after its parent directory. `inOrder` says whether the walk's order is already
    /// canonical (else they are sorted: a sibling such as `a.b` sorts before `a/`'s subtree).
    /// For the scanner, which builds trees of a million entries; every other source goes
    /// through ``init(entries:hooks:policy:metadata:)``.
    @_spi(Walk) public init(walked entries: [ManifestEntry], inOrder: Bool) {
        self.init(
            trustedSorted: inOrder ? entries : entries.sorted { PathRules.byteOrder($0.path, $1.path) },
            hooks: Hooks()
        )
    }

    /// The empty tree.
    public static let empty = Manifest(trustedSorted: [], hooks: Hooks())

    init(
        trustedSorted entries: [ManifestEntry],
        hooks: Hooks,
        policy: PathPolicy = .none,
        metadata: [String: EntryMetadata] = [:]
    ) {
        self.entries = entries
        self.hooks = hooks
        self.policy = policy
        self.metadata = metadata
    }

    /// The first metadata that breaks a rule: a path not in the tree, a bad attribute, a hard
    /// link to no earlier file of the same content.
    static func metadataViolation(
        _ metadata: [String: EntryMetadata],
        entries: [ManifestEntry]
    ) -> (String, String)? {
        guard !metadata.isEmpty else { return nil }
        let links = metadata.values.contains { $0.hardLink != nil }
        var index = [String: ManifestEntry](minimumCapacity: links ? entries.count : metadata.count)
        for entry in entries where links || metadata[entry.path] != nil { index[entry.path] = entry }
        for (path, meta) in metadata {
            if meta.hardLink.flatMap({ metadata[$0]?.hardLink }) != nil {
                return (path, "hard link to a path that is itself a link")
            }
        }
        for path in metadata.keys.sorted(by: PathRules.byteOrder) {
            guard let entry = index[path] else { return (path, "metadata for a path that is not in the tree") }
            if let why = metadata[path]!.violation(path: path, entry: entry, index: index) { return (path, why) }
        }
        return nil
    }

    /// Path → entry, for lookups.
    public func index() -> [String: ManifestEntry] {
        var index = [String: ManifestEntry](minimumCapacity: entries.count)
        for entry in entries { index[entry.path] = entry }
        return index
    }

    /// Counts and total file size.
    public var summary: Summary {
        var summary = Summary()
        for entry in entries {
            switch entry.content {
            case .file(let file):
                summary.files += 1
                summary.bytes += file.size
            case .directory: summary.directories += 1
            case .symlink: summary.symlinks += 1
            }
        }
        return summary
    }

    /// Counts of a manifest's entries.
    public struct Summary: Hashable, Sendable {
        public var files = 0
        public var directories = 0
        public var symlinks = 0
        /// Total size of the files.
        public var bytes: UInt64 = 0

        /// All zero.
        public init() {}
    }

    static func validate(sorted entries: [ManifestEntry], hooks: Hooks) throws(PathError) {
        // Only directories can be parents, and parents sort before their children; most entries
        // share their predecessor's parent, which is then checked with one byte comparison.
        var directories = Set<String>()
        var checkedParent: String?
        var previous: String?
        for entry in entries {
            try PathRules.validate(entry.path)
            // By bytes: `==` on strings is canonical equivalence, and two spellings of "é" are two files.
            if let previous, previous.utf8.elementsEqual(entry.path.utf8) {
                throw PathError(path: entry.path, rule: .duplicate)
            }
            previous = entry.path
            if case .symlink(let target) = entry.content {
                try PathRules.validateSymlinkTarget(target, of: entry.path)
            }
            let utf8 = entry.path.utf8
            if let slash = utf8.lastIndex(of: UInt8(ascii: "/")) {
                let parent = entry.path[..<slash]
                if checkedParent.map({ !$0.utf8.elementsEqual(parent.utf8) }) ?? true {
                    let parent = String(parent)
                    guard directories.contains(parent) else {
                        switch Self.kind(at: parent, in: entries) {
                        case .symlink: throw PathError(path: entry.path, rule: .beneathSymlink(parent))
                        case .file: throw PathError(path: entry.path, rule: .parentNotDirectory(parent))
                        case .directory, nil: throw PathError(path: entry.path, rule: .parentMissing(parent))
                        }
                    }
                    checkedParent = parent
                }
            }
            if case .directory = entry.content { directories.insert(entry.path) }
        }
        for (kind, path) in hooks.scripts.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
            try PathRules.validate(path)
            guard Self.kind(at: path, in: entries) == .file else {
                throw PathError(path: path, rule: .hookNotAFile(kind.description))
            }
        }
    }

    /// The kind of the entry at `path` in `sorted`, by binary search.
    private static func kind(at path: String, in sorted: [ManifestEntry]) -> EntryKind? {
        var low = 0
        var high = sorted.count
        while low < high {
            let middle = (low + high) / 2
            if PathRules.byteOrder(sorted[middle].path, path) { low = middle + 1 } else { high = middle }
        }
        return low < sorted.count && sorted[low].path.utf8.elementsEqual(path.utf8) ? sorted[low].kind : nil
    }
}
