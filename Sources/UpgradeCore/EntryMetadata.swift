/// An owner and group, by name with the numeric ids as the fallback: a machine that knows the
/// name uses its own id for it (users are not numbered alike everywhere), one that does not uses
/// the number.
public struct Owner: Hashable, Sendable, Codable, CustomStringConvertible {
    public var user: String?
    public var uid: UInt32
    public var group: String?
    public var gid: UInt32

    public init(user: String?, uid: UInt32, group: String?, gid: UInt32) {
        self.user = user.flatMap { $0.isEmpty ? nil : $0 }
        self.uid = uid
        self.group = group.flatMap { $0.isEmpty ? nil : $0 }
        self.gid = gid
    }

    public var description: String { "\(user ?? String(uid)):\(group ?? String(gid))" }
}

/// An extended attribute (`security.capability`, `security.selinux`, `user.*`).
public struct ExtendedAttribute: Hashable, Sendable, Codable {
    public var name: String
    public var value: [UInt8]

    public init(name: String, value: [UInt8]) {
        self.name = name
        self.value = value
    }
}

/// What a release says about an entry beyond kind, mode and content.
public struct EntryMetadata: Hashable, Sendable, Codable {
    /// nil: the release does not say; the entry belongs to whoever installs it.
    public var owner: Owner?
    /// Sorted by name; the attributes the release sets (others on the machine are left alone).
    public var xattrs: [ExtendedAttribute]
    /// For the second and later files of a hard-link group: the group's first path (byte order).
    public var hardLink: String?
    /// The file is written with holes where its blocks are all zero.
    public var sparse: Bool

    public init(owner: Owner? = nil, xattrs: [ExtendedAttribute] = [], hardLink: String? = nil, sparse: Bool = false) {
        self.owner = owner
        self.xattrs = xattrs.sorted { PathRules.byteOrder($0.name, $1.name) }
        self.hardLink = hardLink
        self.sparse = sparse
    }

    public var isEmpty: Bool { owner == nil && xattrs.isEmpty && hardLink == nil && !sparse }

    /// Longest attribute name (Linux XATTR_NAME_MAX) and value (XATTR_SIZE_MAX).
    public static let maxNameBytes = 255
    public static let maxValueBytes = 65_536

    /// Checks the rules the manifest decoders enforce; the reason, or nil.
    ///
    /// (Written without closures and compound guards: the Swift 6.3.1 optimizer's
    /// CopyPropagation pass crashed on the earlier form in release builds.)
    func violation(path: String, entry: ManifestEntry, index: [String: ManifestEntry]) -> String? {
        var previous: String? = nil
        for xattr in xattrs {
            let bytes = Array(xattr.name.utf8)
            if bytes.isEmpty || bytes.count > Self.maxNameBytes || bytes.contains(0) {
                return "extended attribute name \(xattr.name.debugDescription) is empty, too long or has NUL"
            }
            if xattr.value.count > Self.maxValueBytes { return "extended attribute \(xattr.name) is too long" }
            if let last = previous, !PathRules.byteOrder(last, xattr.name) {
                return "extended attributes out of order or repeated at \(xattr.name)"
            }
            previous = xattr.name
        }
        if sparse && entry.kind != .file { return "only files are sparse" }
        guard let leader = hardLink else { return nil }
        let bad = "hard link to \(leader.debugDescription) names no earlier file of the same content and mode"
        guard case .file(let mine) = entry.content else { return bad }
        guard let first = index[leader] else { return bad }
        guard case .file(let theirs) = first.content else { return bad }
        if !PathRules.byteOrder(leader, path) { return bad }
        if !theirs.sameContent(as: mine) { return bad }
        if first.mode != entry.mode { return bad }
        return nil
    }
}
