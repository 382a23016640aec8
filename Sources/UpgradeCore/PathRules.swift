#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The one validator for every path that enters from outside: manifests, plans, bundles, peers.
///
/// A valid path is relative, normalized (no `.`, `..` or empty components, no leading or
/// trailing `/`), valid UTF-8 without NUL, at most ``maxComponentBytes`` per component,
/// ``maxPathBytes`` in all and ``maxDepth`` components deep.
public enum PathRules {
    /// Longest component in bytes (Linux NAME_MAX).
    public static let maxComponentBytes = 255
    /// Longest path in bytes (Linux PATH_MAX minus room for a root prefix).
    public static let maxPathBytes = 3_072
    /// Deepest nesting allowed.
    public static let maxDepth = 128
    /// Longest symlink target in bytes.
    public static let maxSymlinkTargetBytes = 4_095

    /// Checks one path; throws ``PathError`` naming the path and the broken rule.
    public static func validate(_ path: String) throws(PathError) {
        // Swift strings are valid UTF-8 by construction; only the byte-level rules remain.
        let violation: PathError.Rule? =
            path.utf8.withContiguousStorageIfAvailable { check($0) } ?? check(Array(path.utf8)[...])
        if let violation { throw PathError(path: path, rule: violation) }
    }

    /// Checks a path given as raw bytes (as read from a file or the network).
    public static func validate(bytes: [UInt8], display: String? = nil) throws(PathError) {
        let shown = display ?? String(decoding: bytes, as: UTF8.self)
        if String(validating: bytes, as: UTF8.self) == nil { throw PathError(path: shown, rule: .invalidUTF8) }
        if let violation = bytes.withUnsafeBufferPointer({ check($0) }) {
            throw PathError(path: shown, rule: violation)
        }
    }

    /// One pass over the bytes, no allocation: the first rule broken, or nil.
    private static func check(_ bytes: some Collection<UInt8>) -> PathError.Rule? {
        if bytes.isEmpty { return .empty }
        if bytes.first == slash { return .absolute }
        if bytes.count > maxPathBytes { return .tooLong(bytes.count) }
        var depth = 1
        var componentLength = 0
        var dots = 0
        var sawNUL = false
        func endComponent() -> PathError.Rule? {
            if componentLength == 0 { return .emptyComponent }
            if componentLength == dots && dots == 1 { return .dotComponent }
            if componentLength == dots && dots == 2 { return .dotDotComponent }
            if componentLength > maxComponentBytes { return .componentTooLong(componentLength) }
            return nil
        }
        for byte in bytes {
            if byte == slash {
                if let rule = endComponent() { return rule }
                depth += 1
                componentLength = 0
                dots = 0
            } else {
                if byte == 0 { sawNUL = true }
                if byte == dot { dots += 1 }
                componentLength += 1
            }
        }
        if sawNUL { return .containsNUL }
        if let rule = endComponent() { return rule }
        if depth > maxDepth { return .tooDeep(depth) }
        return nil
    }

    private static let slash = UInt8(ascii: "/")
    private static let dot = UInt8(ascii: ".")

    /// Checks a path and returns it, for use in expressions.
    public static func validateReturning(_ path: String) throws(PathError) -> String {
        try validate(path)
        return path
    }

    /// Checks a symlink target: non-empty, no NUL, valid UTF-8, bounded length.
    ///
    /// Targets are data, not paths the engine writes through: an absolute or `..` target is
    /// allowed, and no manifest entry may sit beneath a symlink (see ``Manifest/validate()``).
    public static func validateSymlinkTarget(_ target: String, of path: String) throws(PathError) {
        let bytes = Array(target.utf8)
        if bytes.isEmpty { throw PathError(path: path, rule: .emptySymlinkTarget) }
        if bytes.contains(0) { throw PathError(path: path, rule: .containsNUL) }
        if bytes.count > maxSymlinkTargetBytes { throw PathError(path: path, rule: .tooLong(bytes.count)) }
    }

    /// The parent path of a valid path, or nil for a top-level entry.
    public static func parent(of path: String) -> String? {
        guard let slash = path.utf8.lastIndex(of: UInt8(ascii: "/")) else { return nil }
        return String(path[..<slash])
    }

    /// True when `path` lies strictly beneath `ancestor`.
    public static func isDescendant(_ path: String, of ancestor: String) -> Bool {
        let p = path.utf8
        let a = ancestor.utf8
        guard p.count > a.count, p.starts(with: a) else { return false }
        return p[p.index(p.startIndex, offsetBy: a.count)] == UInt8(ascii: "/")
    }

    /// Orders paths by their UTF-8 bytes, the order of the canonical manifest.
    public static func byteOrder(_ lhs: String, _ rhs: String) -> Bool {
        let fast = lhs.utf8.withContiguousStorageIfAvailable { l in
            rhs.utf8.withContiguousStorageIfAvailable { r in
                let common = Swift.min(l.count, r.count)
                if common > 0 {
                    let order = memcmp(l.baseAddress!, r.baseAddress!, common)
                    if order != 0 { return order < 0 }
                }
                return l.count < r.count
            }
        }
        if let fast, let result = fast { return result }
        return lhs.utf8.lexicographicallyPrecedes(rhs.utf8)
    }
}

/// A path that broke one of the ``PathRules``.
public struct PathError: Error, Hashable, Sendable, CustomStringConvertible {
    /// Which rule a path broke.
    public enum Rule: Hashable, Sendable {
        case empty
        case containsNUL
        case invalidUTF8
        case absolute
        case emptyComponent
        case dotComponent
        case dotDotComponent
        case componentTooLong(Int)
        case tooLong(Int)
        case tooDeep(Int)
        case emptySymlinkTarget
        case duplicate
        case beneathSymlink(String)
        case parentMissing(String)
        case parentNotDirectory(String)
        case hookNotAFile(String)
        case badMetadata(String)
    }

    /// The offending path, as given.
    public let path: String
    /// The rule it broke.
    public let rule: Rule

    /// Creates an error for `path`.
    public init(path: String, rule: Rule) {
        self.path = path
        self.rule = rule
    }

    public var description: String {
        let shown = path.debugDescription
        switch rule {
        case .empty: return "empty path"
        case .containsNUL: return "path \(shown) contains a NUL byte"
        case .invalidUTF8: return "path \(shown) is not valid UTF-8"
        case .absolute: return "path \(shown) is absolute; paths must be relative to the root"
        case .emptyComponent: return "path \(shown) has an empty component (`//` or a leading/trailing `/`)"
        case .dotComponent: return "path \(shown) has a `.` component"
        case .dotDotComponent: return "path \(shown) has a `..` component"
        case .componentTooLong(let n):
            return "path \(shown) has a component of \(n) bytes (limit \(PathRules.maxComponentBytes))"
        case .tooLong(let n): return "path \(shown) is \(n) bytes long (limit \(PathRules.maxPathBytes))"
        case .tooDeep(let n): return "path \(shown) is \(n) components deep (limit \(PathRules.maxDepth))"
        case .emptySymlinkTarget: return "symlink \(shown) has an empty target"
        case .duplicate: return "path \(shown) appears more than once"
        case .beneathSymlink(let link): return "path \(shown) lies beneath the symlink \(link.debugDescription)"
        case .parentMissing(let parent): return "path \(shown) has no parent directory entry \(parent.debugDescription)"
        case .parentNotDirectory(let parent):
            return "path \(shown) lies beneath \(parent.debugDescription), which is not a directory"
        case .hookNotAFile(let hook): return "\(hook) hook \(shown) is not a file of the tree"
        case .badMetadata(let why): return "\(shown): \(why)"
        }
    }
}
