/// A 128-bit XXH3 content hash in its canonical byte order (the order `xxhsum -H2` prints:
/// high 64 bits big-endian, then low 64 bits big-endian).
///
/// XXH3 finds changes fast; it is not an integrity check. Integrity comes from ``SHA256Hash``.
public struct XXH128Digest: Hashable, Sendable, Comparable {
    /// High 64 bits of the hash.
    public var high: UInt64
    /// Low 64 bits of the hash.
    public var low: UInt64

    /// Creates a digest from the two halves XXH3 returns.
    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// The 16 canonical bytes.
    public var bytes: [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(16)
        out.appendBigEndian(high)
        out.appendBigEndian(low)
        return out
    }

    /// Parses 32 lowercase or uppercase hex digits.
    public init?(hex: some StringProtocol) {
        guard let bytes = [UInt8](hexString: hex), bytes.count == 16 else { return nil }
        self.init(canonicalBytes: bytes[...])
    }

    /// Reads 16 canonical bytes.
    public init(canonicalBytes bytes: ArraySlice<UInt8>) {
        precondition(bytes.count == 16)
        var high: UInt64 = 0
        var low: UInt64 = 0
        for (offset, byte) in bytes.enumerated() {
            if offset < 8 { high = high << 8 | UInt64(byte) } else { low = low << 8 | UInt64(byte) }
        }
        self.init(high: high, low: low)
    }

    /// 32 lowercase hex digits, as `xxhsum -H2` prints them.
    public var hex: String { bytes.hexString }

    public static func < (lhs: Self, rhs: Self) -> Bool {
        (lhs.high, lhs.low) < (rhs.high, rhs.low)
    }
}

/// A SHA-256 digest: the integrity check of content, manifests and releases.
///
/// Stored inline as four words, so manifests of 100,000 entries hold no extra heap objects.
public struct SHA256Hash: Hashable, Sendable, Comparable {
    private var words: (UInt64, UInt64, UInt64, UInt64)

    /// Wraps 32 bytes; returns nil for any other length.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == 32 else { return nil }
        var values = [UInt64](repeating: 0, count: 4)
        for (offset, byte) in bytes.enumerated() { values[offset / 8] = values[offset / 8] << 8 | UInt64(byte) }
        words = (values[0], values[1], values[2], values[3])
    }

    /// Parses 64 hex digits.
    public init?(hex: some StringProtocol) {
        guard let bytes = [UInt8](hexString: hex) else { return nil }
        self.init(bytes: bytes)
    }

    /// The 32 digest bytes.
    public var bytes: [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(32)
        out.appendBigEndian(words.0)
        out.appendBigEndian(words.1)
        out.appendBigEndian(words.2)
        out.appendBigEndian(words.3)
        return out
    }

    /// 64 lowercase hex digits.
    public var hex: String { bytes.hexString }

    public static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.words == rhs.words
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(words.0)
        hasher.combine(words.1)
        hasher.combine(words.2)
        hasher.combine(words.3)
    }

    public static func < (lhs: Self, rhs: Self) -> Bool {
        lhs.words < rhs.words
    }
}

extension XXH128Digest: CustomStringConvertible {
    public var description: String { hex }
}

extension SHA256Hash: CustomStringConvertible {
    public var description: String { hex }
}

extension Array where Element == UInt8 {
    private static let hexDigits = Array("0123456789abcdef".utf8)

    /// Lowercase hex of the bytes.
    var hexString: String {
        var chars = [UInt8]()
        chars.reserveCapacity(count * 2)
        for byte in self {
            chars.append(Self.hexDigits[Int(byte >> 4)])
            chars.append(Self.hexDigits[Int(byte & 0x0f)])
        }
        return String(decoding: chars, as: UTF8.self)
    }

    /// Parses an even number of hex digits; nil on any other character.
    init?(hexString: some StringProtocol) {
        let utf8 = Array(hexString.utf8)
        guard utf8.count % 2 == 0 else { return nil }
        var out = [UInt8]()
        out.reserveCapacity(utf8.count / 2)
        var index = 0
        while index < utf8.count {
            guard let high = Self.nibble(utf8[index]), let low = Self.nibble(utf8[index + 1]) else { return nil }
            out.append(high << 4 | low)
            index += 2
        }
        self = out
    }

    private static func nibble(_ char: UInt8) -> UInt8? {
        switch char {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): char - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): char - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): char - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    mutating func appendBigEndian<T: FixedWidthInteger>(_ value: T) {
        var big = value.bigEndian
        Swift.withUnsafeBytes(of: &big) { append(contentsOf: $0) }
    }
}
