public import UpgradeCore
import UpgradeSystem

#if canImport(Glibc)
import Glibc
#endif

/// An offline update bundle: one file holding the signed header, the target manifest, the plan
/// and every payload the plan needs (see docs/format.md, "Bundle").
///
/// ```
/// magic    8 bytes  "UPGBNDL" 0x01
/// count    u32      sections
/// index    count × { kind u8, name_len u16, name, offset u64, length u64 }
/// data     the sections' bytes, at their offsets
/// ```
public enum BundleSection: UInt8, Sendable, CaseIterable {
    /// The signed release header (envelope bytes).
    case header = 1
    /// The target release's canonical manifest.
    case manifest = 2
    /// The plan, JSON.
    case plan = 3
    /// The manifest the plan was computed from (informational: the client verifies against its own scan).
    case baseManifest = 4
    /// A payload: a zstd-compressed object, named by the SHA-256 (hex) of its uncompressed content.
    case object = 5
    /// A payload as a binary delta, named `<target sha256 hex>:<base path in the root>`.
    case delta = 6
    /// The repository's roots of trust, oldest first, each a 4-byte big-endian length and the
    /// signed envelope file: a machine without network walks a key rotation from the bundle.
    case roots = 7
}

/// The framing of the roots section.
public enum BundleRoots {
    public static func encode(_ files: [[UInt8]]) -> [UInt8] {
        var bytes = [UInt8]()
        for file in files {
            let count = UInt32(file.count)
            bytes += [UInt8(count >> 24), UInt8(count >> 16 & 0xff), UInt8(count >> 8 & 0xff), UInt8(count & 0xff)]
            bytes += file
        }
        return bytes
    }

    /// The files of a roots section; stops at the first frame that runs past the end.
    public static func decode(_ bytes: [UInt8]) -> [[UInt8]] {
        var files = [[UInt8]]()
        var offset = 0
        while offset + 4 <= bytes.count {
            let count = bytes[offset..<offset + 4].reduce(0) { $0 << 8 | Int($1) }
            offset += 4
            guard offset + count <= bytes.count else { break }
            files.append(Array(bytes[offset..<offset + count]))
            offset += count
        }
        return files
    }
}

/// Writes a bundle from in-memory sections and object files.
public struct BundleWriter {
    /// A section whose bytes are in memory or in a file.
    public enum Source: Sendable {
        case bytes([UInt8])
        case file(path: String, size: UInt64)

        var size: UInt64 {
            switch self {
            case .bytes(let bytes): UInt64(bytes.count)
            case .file(_, let size): size
            }
        }
    }

    private var sections: [(BundleSection, String, Source)] = []

    public init() {}

    /// Adds a section.
    public mutating func add(_ kind: BundleSection, name: String = "", _ source: Source) {
        sections.append((kind, name, source))
    }

    /// Writes the bundle to `path` (temporary name, fsync, rename).
    public func write(to path: String) throws {
        var index = [UInt8]()
        index += BundleReader.magic
        index.appendInteger(UInt32(sections.count))
        let indexSize = 8 + 4 + sections.reduce(0) { $0 + 1 + 2 + $1.1.utf8.count + 8 + 8 }
        var offset = UInt64(indexSize)
        for (kind, name, source) in sections {
            index.append(kind.rawValue)
            index.appendInteger(UInt16(name.utf8.count))
            index += name.utf8
            index.appendInteger(offset)
            index.appendInteger(source.size)
            offset += source.size
        }
        // A new file of an unpredictable name, never through a symlink or over an existing file
        // (someone who can write the output directory could plant a link at a guessable name).
        var temporary = ""
        var fd: Int32 = -1
        for _ in 0..<16 {
            temporary = "\(path).tmp-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
            fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
            if fd >= 0 || errno != EEXIST { break }
        }
        guard fd >= 0 else { throw SystemCallError(call: "open \(temporary)", code: errno) }
        do {
            defer { close(fd) }
            try Posix.writeAll(fd, index, what: temporary)
            for (_, _, source) in sections {
                switch source {
                case .bytes(let bytes): try Posix.writeAll(fd, bytes, what: temporary)
                case .file(let file, let size):
                    let bytes = try AtomicFile.read(file)
                    guard UInt64(bytes.count) == size else { throw SystemCallError(call: "read \(file)", code: EIO) }
                    try Posix.writeAll(fd, bytes, what: temporary)
                }
            }
            guard fsync(fd) == 0 else { throw SystemCallError(call: "fsync \(temporary)", code: errno) }
        } catch {
            unlink(temporary)
            throw error
        }
        guard rename(temporary, path) == 0 else { throw SystemCallError(call: "rename \(path)", code: errno) }
    }
}

/// Reads a bundle's index and, on demand, its sections.
public final class BundleReader: Sendable {
    static let magic: [UInt8] = Array("UPGBNDL".utf8) + [0x01]

    /// One indexed section.
    public struct Entry: Sendable {
        public let kind: BundleSection
        public let name: String
        public let offset: UInt64
        public let length: UInt64
    }

    /// The bundle's path.
    public let path: String
    private let fd: Int32
    /// The index.
    public let entries: [Entry]
    /// Object sections by SHA-256.
    public let objects: [SHA256Hash: Entry]
    /// Delta sections by target SHA-256, with the base path they apply to.
    public let deltas: [SHA256Hash: (entry: Entry, base: String)]

    /// Opens and indexes `path`; throws ``BundleError`` when it is not a bundle.
    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemCallError(call: "open \(path)", code: errno) }
        var info = stat()
        fstat(fd, &info)
        let fileSize = UInt64(info.st_size)
        func fail(_ why: String) -> BundleError {
            close(fd)
            return BundleError.malformed(path: path, why)
        }
        var head = [UInt8](repeating: 0, count: 12)
        guard pread(fd, &head, 12, 0) == 12, head.starts(with: Self.magic) else { throw fail("not an upgrade bundle") }
        let count = head[8..<12].reduce(0) { UInt32($0) << 8 | UInt32($1) }
        guard count <= 10_000_000 else { throw fail("section count \(count) is implausible") }
        var entries = [Entry]()
        var objects = [SHA256Hash: Entry]()
        var deltas = [SHA256Hash: (entry: Entry, base: String)]()
        var position: UInt64 = 12
        func read(_ n: Int) throws(BundleError) -> [UInt8] {
            var bytes = [UInt8](repeating: 0, count: n)
            guard n == 0 || pread(fd, &bytes, n, off_t(position)) == n else { throw fail("index truncated") }
            position += UInt64(n)
            return bytes
        }
        for _ in 0..<count {
            let fixed = try read(3)
            guard let kind = BundleSection(rawValue: fixed[0]) else { throw fail("unknown section kind \(fixed[0])") }
            let nameLength = Int(fixed[1]) << 8 | Int(fixed[2])
            guard let name = String(validating: try read(nameLength), as: UTF8.self) else {
                throw fail("section name is not UTF-8")
            }
            let numbers = try read(16)
            let offset = numbers[0..<8].reduce(0) { UInt64($0) << 8 | UInt64($1) }
            let length = numbers[8..<16].reduce(0) { UInt64($0) << 8 | UInt64($1) }
            guard offset <= fileSize, length <= fileSize - offset else {
                throw fail("section \(name.debugDescription) lies outside the file")
            }
            let entry = Entry(kind: kind, name: name, offset: offset, length: length)
            if kind == .delta {
                let parts = name.split(separator: ":", maxSplits: 1).map(String.init)
                guard parts.count == 2, let sha = SHA256Hash(hex: parts[0]) else {
                    throw fail("delta name \(name.debugDescription) is not <sha256>:<path>")
                }
                deltas[sha] = (entry, parts[1])
            }
            if kind == .object {
                guard let sha = SHA256Hash(hex: name) else {
                    throw fail("object name \(name.debugDescription) is not a SHA-256")
                }
                objects[sha] = entry
            }
            entries.append(entry)
        }
        self.fd = fd
        self.entries = entries
        self.objects = objects
        self.deltas = deltas
    }

    deinit { close(fd) }

    /// The first section of `kind`, read whole (for the small ones: header, manifest, plan).
    public func section(_ kind: BundleSection, limit: UInt64 = 1 << 30) throws -> [UInt8]? {
        guard let entry = entries.first(where: { $0.kind == kind }) else { return nil }
        guard entry.length <= limit else {
            throw BundleError.malformed(path: path, "\(kind) section of \(entry.length) bytes is too large")
        }
        return try read(entry, from: 0, count: Int(entry.length))
    }

    /// Bytes of a section; asking for more than the section holds is an error, not the next
    /// section's bytes.
    public func read(_ entry: Entry, from start: UInt64, count: Int) throws -> [UInt8] {
        guard start <= entry.length, UInt64(count) <= entry.length - start else {
            throw BundleError.malformed(
                path: path,
                "read of \(count) bytes at \(start) runs past section \(entry.name.debugDescription) (\(entry.length) bytes)"
            )
        }
        var bytes = [UInt8](repeating: 0, count: count)
        let done = try Posix.readFully(fd, into: &bytes, at: entry.offset + start, what: path)
        if done < count { throw BundleError.malformed(path: path, "section ends early") }
        return bytes
    }
}

/// A file that is not a usable bundle.
public enum BundleError: Error, CustomStringConvertible {
    case malformed(path: String, String)

    public var description: String {
        switch self {
        case .malformed(let path, let why): "\(path.debugDescription): \(why)"
        }
    }
}

extension Array where Element == UInt8 {
    mutating func appendInteger<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.bigEndian) { append(contentsOf: $0) }
    }
}
