/// Appends big-endian integers and length-prefixed byte strings.
struct ByteWriter {
    private(set) var bytes: [UInt8] = []

    mutating func reserve(_ count: Int) { bytes.reserveCapacity(count) }
    /// Empties the buffer, keeping its storage.
    mutating func removeAll() { bytes.removeAll(keepingCapacity: true) }
    mutating func u8(_ value: UInt8) { bytes.append(value) }
    mutating func u16(_ value: UInt16) { bytes.appendBigEndian(value) }
    mutating func u32(_ value: UInt32) { bytes.appendBigEndian(value) }
    mutating func u64(_ value: UInt64) { bytes.appendBigEndian(value) }
    mutating func raw(_ value: some Sequence<UInt8>) { bytes.append(contentsOf: value) }

    /// A string as u16 length + UTF-8 bytes.
    mutating func string16(_ value: String) {
        let utf8 = value.utf8
        u16(UInt16(utf8.count))
        bytes.append(contentsOf: utf8)
    }
}

/// Reads what ``ByteWriter`` wrote; every read is bounds-checked.
struct ByteReader {
    let bytes: [UInt8]
    private(set) var offset = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var remaining: Int { bytes.count - offset }
    var isAtEnd: Bool { offset == bytes.count }

    mutating func take(_ count: Int) throws(DecodingError) -> ArraySlice<UInt8> {
        guard count >= 0, remaining >= count else { throw .truncated(at: offset) }
        defer { offset += count }
        return bytes[offset..<offset + count]
    }

    mutating func u8() throws(DecodingError) -> UInt8 { try take(1).first! }

    mutating func integer<T: FixedWidthInteger & UnsignedInteger>(_: T.Type) throws(DecodingError) -> T {
        var value: T = 0
        for byte in try take(MemoryLayout<T>.size) { value = value << 8 | T(byte) }
        return value
    }

    mutating func u16() throws(DecodingError) -> UInt16 { try integer(UInt16.self) }
    mutating func u32() throws(DecodingError) -> UInt32 { try integer(UInt32.self) }
    mutating func u64() throws(DecodingError) -> UInt64 { try integer(UInt64.self) }

    /// A u16-length-prefixed UTF-8 string; invalid UTF-8 is an error, not a replacement.
    mutating func string16() throws(DecodingError) -> String {
        let start = offset
        let length = Int(try u16())
        let raw = try take(length)
        guard let string = String(validating: raw, as: UTF8.self) else { throw .invalidUTF8(at: start) }
        return string
    }

    /// Wraps a failure with what was being decoded.
    enum DecodingError: Error, Equatable {
        case truncated(at: Int)
        case invalidUTF8(at: Int)
    }
}
