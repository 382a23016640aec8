public import UpgradeCore
internal import UpgradeHash
public import UpgradeSystem

#if canImport(Glibc)
import Glibc
#endif

extension FileIdentity {
    /// True when the later of mtime and ctime is at or after `time`.
    func changed(atOrAfter time: Timestamp) -> Bool {
        let modified = Timestamp(seconds: mtimeSeconds, nanoseconds: mtimeNanoseconds)
        let changed = Timestamp(seconds: ctimeSeconds, nanoseconds: ctimeNanoseconds)
        return max(modified, changed) >= time
    }
}

/// Path → (identity, XXH3-128): lets a rescan of an unchanged tree hash nothing.
///
/// Stored as a small binary file (see docs/format.md, "Stat cache") with a trailing XXH3-128 of
/// its body; a damaged or foreign file reads as an empty cache, which costs time, never
/// correctness.
public struct StatCache: Sendable {
    /// Cached records by path.
    public private(set) var records: [String: Record]

    /// One cached file.
    public struct Record: Hashable, Sendable {
        public var identity: FileIdentity
        public var xxh128: XXH128Digest
    }

    static let magic: [UInt8] = Array("UPGSTC".utf8) + [0x00, 0x01]

    /// An empty cache.
    public init() { records = [:] }

    init(records: [String: Record]) { self.records = records }

    /// The identities of `paths` (root-relative files) now, leaving out any whose timestamps are
    /// not at least `racyNanoseconds` old (a write in the same clock tick would not change them).
    public static func identities(of paths: [String], rootFD: Int32, racyNanoseconds: Int64) -> [String: FileIdentity] {
        let racyLimit = Timestamp.now().subtracting(nanoseconds: racyNanoseconds)
        var result = [String: FileIdentity](minimumCapacity: paths.count)
        for path in paths {
            var info = stat()
            guard fstatat(rootFD, path, &info, AT_SYMLINK_NOFOLLOW) == 0, info.st_mode & S_IFMT == S_IFREG else {
                continue
            }
            let identity = FileIdentity(info)
            if !identity.changed(atOrAfter: racyLimit) { result[path] = identity }
        }
        return result
    }

    /// After an install: `previous` with a record for every file the install placed, with the
    /// hash the signed manifest (`tree`) gives, when its identity is still the one it had right
    /// after placement (`placed`; a hook that rewrote it changed that). Records of other paths are
    /// kept as they are: a scan checks every record's identity before trusting it, so a stale one
    /// only costs a hash (and the next scan writes a clean cache).
    public static func afterInstall(
        of tree: Manifest,
        placed: [String: FileIdentity],
        previous: StatCache,
        rootFD: Int32
    ) -> StatCache {
        var records = previous.records
        for (path, identity) in placed {
            records[path] = nil
            guard let content = tree.entry(at: path)?.file else { continue }
            var info = stat()
            guard fstatat(rootFD, path, &info, AT_SYMLINK_NOFOLLOW) == 0, FileIdentity(info) == identity,
                identity.size == content.size
            else { continue }
            records[path] = Record(identity: identity, xxh128: content.xxh128)
        }
        return StatCache(records: records)
    }

    /// The cached hash when `identity` is unchanged.
    func hash(for path: String, identity: FileIdentity) -> XXH128Digest? {
        guard let record = records[path], record.identity == identity else { return nil }
        return record.xxh128
    }

    /// The encoded file.
    public func encoded() -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(16 + records.count * 96)
        out += Self.magic
        append(UInt64(records.count), to: &out)
        for (path, record) in records {
            append(UInt16(path.utf8.count), to: &out)
            out += path.utf8
            let id = record.identity
            append(id.device, to: &out)
            append(id.inode, to: &out)
            append(id.size, to: &out)
            append(UInt64(bitPattern: id.mtimeSeconds), to: &out)
            append(id.mtimeNanoseconds, to: &out)
            append(UInt64(bitPattern: id.ctimeSeconds), to: &out)
            append(id.ctimeNanoseconds, to: &out)
            append(record.xxh128.high, to: &out)
            append(record.xxh128.low, to: &out)
        }
        let check = out.withUnsafeBytes { XXH128Hasher.hash(bufferPointer: $0) }
        append(check.high, to: &out)
        append(check.low, to: &out)
        return out
    }

    /// Decodes a cache file; nil when it is damaged, truncated or of another format.
    public init?(encoded bytes: [UInt8]) {
        guard bytes.count >= Self.magic.count + 8 + 16, bytes.starts(with: Self.magic) else { return nil }
        let body = bytes.count - 16
        let check = bytes.withUnsafeBytes {
            XXH128Hasher.hash(bufferPointer: UnsafeRawBufferPointer(rebasing: $0[..<body]))
        }
        var reader = FastReader(bytes: bytes, offset: Self.magic.count, end: body)
        guard check == XXH128Digest(high: FastReader.load(bytes, body), low: FastReader.load(bytes, body + 8)),
            let count = reader.u64(), count <= UInt64(body / 70)
        else { return nil }
        var records = [String: Record](minimumCapacity: Int(count))
        for _ in 0..<count {
            guard let length = reader.u16(), let path = reader.string(Int(length)),
                let device = reader.u64(), let inode = reader.u64(), let size = reader.u64(),
                let mtime = reader.u64(), let mtimeNanos = reader.u32(),
                let ctime = reader.u64(), let ctimeNanos = reader.u32(),
                let high = reader.u64(), let low = reader.u64()
            else { return nil }
            let identity = FileIdentity(
                device: device,
                inode: inode,
                size: size,
                mtimeSeconds: Int64(bitPattern: mtime),
                mtimeNanoseconds: mtimeNanos,
                ctimeSeconds: Int64(bitPattern: ctime),
                ctimeNanoseconds: ctimeNanos
            )
            records[path] = Record(identity: identity, xxh128: XXH128Digest(high: high, low: low))
        }
        guard reader.offset == body else { return nil }
        self.records = records
    }

    private func append<T: FixedWidthInteger>(_ value: T, to out: inout [UInt8]) {
        withUnsafeBytes(of: value.bigEndian) { out.append(contentsOf: $0) }
    }
}

/// Bounds-checked big-endian reads for the cache file's hot loop.
private struct FastReader {
    let bytes: [UInt8]
    var offset: Int
    let end: Int

    static func load(_ bytes: [UInt8], _ at: Int) -> UInt64 {
        bytes.withUnsafeBytes { UInt64(bigEndian: $0.loadUnaligned(fromByteOffset: at, as: UInt64.self)) }
    }

    mutating func read<T: FixedWidthInteger>(_: T.Type) -> T? {
        let size = MemoryLayout<T>.size
        guard end - offset >= size else { return nil }
        defer { offset += size }
        return bytes.withUnsafeBytes { T(bigEndian: $0.loadUnaligned(fromByteOffset: offset, as: T.self)) }
    }

    mutating func u16() -> UInt16? { read(UInt16.self) }
    mutating func u32() -> UInt32? { read(UInt32.self) }
    mutating func u64() -> UInt64? { read(UInt64.self) }

    mutating func string(_ length: Int) -> String? {
        guard end - offset >= length else { return nil }
        defer { offset += length }
        return String(validating: bytes[offset..<offset + length], as: UTF8.self)
    }
}
