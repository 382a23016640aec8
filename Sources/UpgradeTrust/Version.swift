/// A release version: semantic versioning 2.0 (`MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD]`), where
/// `1.2` is read as `1.2.0`. Precedence follows semver §11; build metadata is ignored.
///
/// The sequence number in the signed header is the source of truth for ordering; versions are
/// checked at publish time so that sequence order and version order never disagree.
public struct Version: Comparable, Hashable, Sendable, CustomStringConvertible {
    public let major: UInt64
    public let minor: UInt64
    public let patch: UInt64
    public let prerelease: [String]
    public let build: String?
    /// The text as given.
    public let description: String

    /// Parses `text`; nil when it is not a version.
    public init?(_ text: String) {
        guard !text.isEmpty, text.utf8.count <= 64,
            text.utf8.allSatisfy({
                $0 < 0x80
                    && (Character(UnicodeScalar($0)).isLetter || Character(UnicodeScalar($0)).isNumber
                        || "+-.".utf8.contains($0))
            })
        else { return nil }
        var rest = Substring(text)
        var build: String?
        if let plus = rest.firstIndex(of: "+") {
            build = String(rest[rest.index(after: plus)...])
            rest = rest[..<plus]
            guard !build!.isEmpty, !build!.contains("+") else { return nil }
        }
        var prerelease = [String]()
        if let dash = rest.firstIndex(of: "-") {
            prerelease = rest[rest.index(after: dash)...].split(separator: ".", omittingEmptySubsequences: false).map(
                String.init
            )
            rest = rest[..<dash]
            guard prerelease.allSatisfy({ !$0.isEmpty }) else { return nil }
        }
        let numbers = rest.split(separator: ".", omittingEmptySubsequences: false)
        guard (1...3).contains(numbers.count) else { return nil }
        var parsed = [UInt64]()
        for number in numbers {
            guard let value = UInt64(number), number == "0" || !number.hasPrefix("0") else { return nil }
            parsed.append(value)
        }
        while parsed.count < 3 { parsed.append(0) }
        major = parsed[0]
        minor = parsed[1]
        patch = parsed[2]
        self.prerelease = prerelease
        self.build = build
        description = text
    }

    public static func < (lhs: Version, rhs: Version) -> Bool {
        if (lhs.major, lhs.minor, lhs.patch) != (rhs.major, rhs.minor, rhs.patch) {
            return (lhs.major, lhs.minor, lhs.patch) < (rhs.major, rhs.minor, rhs.patch)
        }
        // A version without prerelease ranks above any prerelease of it.
        if lhs.prerelease.isEmpty || rhs.prerelease.isEmpty { return !lhs.prerelease.isEmpty && rhs.prerelease.isEmpty }
        for (l, r) in zip(lhs.prerelease, rhs.prerelease) where l != r {
            switch (UInt64(l), UInt64(r)) {
            case (let a?, let b?): return a < b
            case (.some, nil): return true
            case (nil, .some): return false
            case (nil, nil): return l < r
            }
        }
        return lhs.prerelease.count < rhs.prerelease.count
    }

    public static func == (lhs: Version, rhs: Version) -> Bool {
        !(lhs < rhs) && !(rhs < lhs)
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(major)
        hasher.combine(minor)
        hasher.combine(patch)
        hasher.combine(prerelease)
    }
}

/// Names of products and channels: `[A-Za-z0-9._-]`, 1–64 characters, not starting with `.`.
public enum Names {
    /// True when `name` can be a product or channel name (and so a directory name).
    public static func isValid(_ name: String) -> Bool {
        guard (1...64).contains(name.utf8.count), !name.hasPrefix(".") else { return false }
        return name.utf8.allSatisfy { byte in
            (0x30...0x39).contains(byte) || (0x41...0x5a).contains(byte) || (0x61...0x7a).contains(byte)
                || "._-".utf8.contains(byte)
        }
    }
}
