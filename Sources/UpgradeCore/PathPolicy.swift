/// A path pattern, matched against paths relative to the root.
///
/// `*` matches any bytes but `/`, `?` one byte but `/`, `**` any bytes including `/` (`**/` also
/// matches no directory at all). A pattern that matches a directory matches everything beneath
/// it, as in `.gitignore`: `var/cache` and `var/cache/**` both cover `var/cache/a/b`.
public struct Glob: Hashable, Sendable, CustomStringConvertible {
    public let pattern: String
    private let bytes: [UInt8]

    /// Checks the pattern: relative, no empty, `.` or `..` components, at most 1,024 bytes.
    public init(_ pattern: String) throws(PathPolicyError) {
        let bytes = Array(pattern.utf8)
        guard !bytes.isEmpty, bytes.count <= 1024, bytes.first != UInt8(ascii: "/"), !bytes.contains(0) else {
            throw PathPolicyError(pattern: pattern, why: "must be a non-empty relative pattern of at most 1,024 bytes")
        }
        for component in pattern.split(separator: "/", omittingEmptySubsequences: false) {
            guard !component.isEmpty, component != ".", component != ".." else {
                throw PathPolicyError(pattern: pattern, why: "has an empty, `.` or `..` component")
            }
        }
        self.pattern = pattern
        self.bytes = bytes
    }

    public var description: String { pattern }

    /// True when the pattern matches `path` or one of its ancestors.
    public func matches(_ path: String) -> Bool {
        let path = Array(path.utf8)
        if Self.match(bytes[...], path[...]) { return true }
        var end = path.count
        while let slash = path[..<end].lastIndex(of: UInt8(ascii: "/")) {
            if Self.match(bytes[...], path[..<slash]) { return true }
            end = slash
        }
        return false
    }

    private static func match(_ pattern: ArraySlice<UInt8>, _ path: ArraySlice<UInt8>) -> Bool {
        var p = pattern.startIndex
        var s = path.startIndex
        while p < pattern.endIndex {
            let byte = pattern[p]
            if byte == star {
                let double = p + 1 < pattern.endIndex && pattern[p + 1] == star
                let rest = p + (double ? 2 : 1)
                // `**/` may also stand for no directory at all.
                if double, rest < pattern.endIndex, pattern[rest] == slash, match(pattern[(rest + 1)...], path[s...]) {
                    return true
                }
                var i = s
                while true {
                    if match(pattern[rest...], path[i...]) { return true }
                    guard i < path.endIndex, double || path[i] != slash else { return false }
                    i += 1
                }
            }
            guard s < path.endIndex else { return false }
            if byte == question {
                guard path[s] != slash else { return false }
            } else if byte != path[s] {
                return false
            }
            p += 1
            s += 1
        }
        return s == path.endIndex
    }

    private static let star = UInt8(ascii: "*")
    private static let question = UInt8(ascii: "?")
    private static let slash = UInt8(ascii: "/")
}

/// A pattern that cannot be used.
public struct PathPolicyError: Error, Hashable, Sendable, CustomStringConvertible {
    public let pattern: String
    public let why: String

    public var description: String { "path pattern \(pattern.debugDescription) \(why)" }
}

/// What the publisher declares about paths, signed with the manifest.
///
/// - `config`: files the machine's operator may edit. A sync replaces one only when it was not
///   modified locally; a local edit is kept, and when the release changed the file too, the new
///   one is written beside it as `NAME.upgrade-new` and the conflict is reported.
/// - `unmanaged`: paths a sync never writes, deletes or reports (logs, caches, local data).
public struct PathPolicy: Hashable, Sendable {
    public let config: [Glob]
    public let unmanaged: [Glob]

    /// Sorted, duplicates dropped: one policy has one encoding.
    public init(config: [Glob] = [], unmanaged: [Glob] = []) {
        self.config = Self.canonical(config)
        self.unmanaged = Self.canonical(unmanaged)
    }

    /// Parses patterns; throws naming the first bad one.
    public init(config: [String], unmanaged: [String]) throws(PathPolicyError) {
        var configGlobs = [Glob]()
        for pattern in config { configGlobs.append(try Glob(pattern)) }
        var unmanagedGlobs = [Glob]()
        for pattern in unmanaged { unmanagedGlobs.append(try Glob(pattern)) }
        self.init(config: configGlobs, unmanaged: unmanagedGlobs)
    }

    /// No declarations.
    public static let none = PathPolicy()

    public var isEmpty: Bool { config.isEmpty && unmanaged.isEmpty }

    public func isConfig(_ path: String) -> Bool { config.contains { $0.matches(path) } }

    public func isUnmanaged(_ path: String) -> Bool { unmanaged.contains { $0.matches(path) } }

    /// The suffix of the release's version of a config file kept locally.
    public static let newSuffix = ".upgrade-new"

    private static func canonical(_ globs: [Glob]) -> [Glob] {
        var seen = Set<String>()
        return globs.sorted { PathRules.byteOrder($0.pattern, $1.pattern) }.filter { seen.insert($0.pattern).inserted }
    }
}
