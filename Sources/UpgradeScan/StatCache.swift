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

/// Inode → (identity, XXH3-128): lets a rescan of an unchanged tree hash nothing.
///
/// Keyed by inode, not by path: equal device, inode, size, mtime and ctime mean equal content
/// whatever the path (a hard link or a rename shows the same bytes), and a lookup hashes one
/// integer instead of a path. Records are 56 bytes in one array with an open-addressing index
/// beside it, so a million files cost ~72 MB and no string. Files on another device than the
/// first one cached are not cached (they are hashed each scan).
///
/// Stored as a small binary file (see docs/format.md, "Stat cache") with a trailing XXH3-128 of
/// its body; a damaged, older or foreign file reads as an empty cache, which costs time, never
/// correctness.
public struct StatCache: Sendable {
    /// One cached file: its identity on the cache's device and its hash.
    struct Record: Hashable, Sendable {
        var inode: UInt64
        var size: UInt64
        var mtimeSeconds: Int64
        var ctimeSeconds: Int64
        /// mtime nanoseconds in the high half, ctime nanoseconds in the low half.
        var nanoseconds: UInt64
        var xxh128: XXH128Digest

        init(_ identity: FileIdentity, xxh128: XXH128Digest) {
            inode = identity.inode
            size = identity.size
            mtimeSeconds = identity.mtimeSeconds
            ctimeSeconds = identity.ctimeSeconds
            nanoseconds = UInt64(identity.mtimeNanoseconds) << 32 | UInt64(identity.ctimeNanoseconds)
            self.xxh128 = xxh128
        }

        init(
            inode: UInt64,
            size: UInt64,
            mtimeSeconds: Int64,
            ctimeSeconds: Int64,
            nanoseconds: UInt64,
            xxh128: XXH128Digest
        ) {
            self.inode = inode
            self.size = size
            self.mtimeSeconds = mtimeSeconds
            self.ctimeSeconds = ctimeSeconds
            self.nanoseconds = nanoseconds
            self.xxh128 = xxh128
        }

        func matches(_ identity: FileIdentity) -> Bool {
            inode == identity.inode && size == identity.size && mtimeSeconds == identity.mtimeSeconds
                && ctimeSeconds == identity.ctimeSeconds
                && nanoseconds == UInt64(identity.mtimeNanoseconds) << 32 | UInt64(identity.ctimeNanoseconds)
        }
    }

    /// The device every record lives on (set by the first record).
    private(set) var device: UInt64?
    /// The records, in insertion order.
    private(set) var records: [Record] = []
    /// Open addressing by inode: the inode's low 32 bits in the high half, index into `records`
    /// + 1 in the low half, 0 for an empty slot; a power of two at least twice the record count.
    /// Probing compares the slot, not the record: files made one after another have consecutive
    /// inodes that fill whole groups of slots, and a probe through such a run that read each
    /// record was a cache miss per slot (8% of a million-file no-op, building the index alone).
    private var slots: [UInt64] = []

    static let magic: [UInt8] = Array("UPGSTC".utf8) + [0x00, 0x02]
    static let recordSize = 56

    /// An empty cache.
    public init() {}

    /// An empty cache for files on `device` with room for `capacity` records.
    init(minimumCapacity capacity: Int, device: UInt64?) {
        self.device = device
        records.reserveCapacity(capacity)
        grow(to: capacity)
    }

    /// Records cached.
    public var count: Int { records.count }

    /// The cached hash when `identity` is unchanged. `hint` is tried before the index: the
    /// record after the one the previous lookup found, since a scan caches a directory's files
    /// one after another in walk order and the next scan looks them up in the same order; a
    /// rescan then reads records in sequence instead of probing the index per file. (One
    /// record per inode, so a record of the same inode at `hint` is the one the index finds.)
    func hash(for identity: FileIdentity, hint: inout Int) -> XXH128Digest? {
        guard identity.device == device else { return nil }
        let index: Int
        if hint < records.count, records[hint].inode == identity.inode {
            index = hint
        } else if let found = self.index(of: identity.inode) {
            index = found
        } else {
            return nil
        }
        hint = index + 1
        let record = records[index]
        return record.matches(identity) ? record.xxh128 : nil
    }

    /// Caches `xxh128` as the content of the file `identity` names, replacing what the cache
    /// held for its inode. A file on another device than the cache's is left out.
    mutating func insert(_ identity: FileIdentity, xxh128: XXH128Digest) {
        if device == nil { device = identity.device }
        guard identity.device == device else { return }
        let record = Record(identity, xxh128: xxh128)
        if let index = index(of: identity.inode) {
            records[index] = record
            return
        }
        if (records.count + 1) * 2 > slots.count { grow(to: records.count + 1) }
        records.append(record)
        _ = place(records.count - 1)
    }

    private func index(of inode: UInt64) -> Int? {
        guard !slots.isEmpty else { return nil }
        let mask = slots.count - 1
        var slot = Self.slot(inode, mask: mask)
        let tag = inode << 32
        while true {
            let entry = slots[slot]
            if entry == 0 { return nil }
            if entry & 0xFFFF_FFFF_0000_0000 == tag, records[Int(entry & 0xFFFF_FFFF) - 1].inode == inode {
                return Int(entry & 0xFFFF_FFFF) - 1
            }
            slot = (slot + 1) & mask
        }
    }

    /// Eight consecutive inodes (files a directory got one after another) share one cache line
    /// of the index (8 slots of 8 bytes); groups are spread by a multiplicative hash. A lookup
    /// per file was a cache miss per file before (3/4 of the walk's own time at a million files).
    private static func slot(_ inode: UInt64, mask: Int) -> Int {
        let group = ((inode >> 3) &* 0x9E37_79B9_7F4A_7C15) >> 32
        return Int(truncatingIfNeeded: group << 3 | inode & 7) & mask
    }

    /// Rebuilds the index for at least `count` records; false when two records share an inode.
    @discardableResult
    private mutating func grow(to count: Int) -> Bool {
        var size = 16
        while size < count * 2 { size <<= 1 }
        slots = [UInt64](repeating: 0, count: size)
        for index in records.indices where !place(index) { return false }
        return true
    }

    /// Indexes `records[index]`; false when a record of the same inode is indexed already.
    private mutating func place(_ index: Int) -> Bool {
        let mask = slots.count - 1
        let inode = records[index].inode
        var slot = Self.slot(inode, mask: mask)
        let tag = inode << 32
        while slots[slot] != 0 {
            let entry = slots[slot]
            if entry & 0xFFFF_FFFF_0000_0000 == tag, records[Int(entry & 0xFFFF_FFFF) - 1].inode == inode {
                return false
            }
            slot = (slot + 1) & mask
        }
        slots[slot] = tag | UInt64(index + 1)
        return true
    }

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
    /// after placement (`placed`; a hook that rewrote it changed that). Other records are kept:
    /// a lookup checks the whole identity, so the record of a replaced file's old inode is never
    /// matched again and only takes room until the next scan writes a clean cache.
    public static func afterInstall(
        of tree: Manifest,
        placed: [String: FileIdentity],
        previous: StatCache,
        rootFD: Int32
    ) -> StatCache {
        var cache = previous
        // In path order, so a directory's files are cached one after another as a walk finds
        // them (what ``hash(for:hint:)`` counts on); dictionary order scattered them.
        for path in placed.keys.sorted(by: PathRules.byteOrder) {
            let identity = placed[path]!
            guard let content = tree.entry(at: path)?.file else { continue }
            var info = stat()
            guard fstatat(rootFD, path, &info, AT_SYMLINK_NOFOLLOW) == 0, FileIdentity(info) == identity,
                identity.size == content.size
            else { continue }
            cache.insert(identity, xxh128: content.xxh128)
        }
        return cache
    }

    /// The encoded file.
    public func encoded() -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(Self.magic.count + 16 + records.count * Self.recordSize + 16)
        out += Self.magic
        append(device ?? 0, to: &out)
        append(UInt64(records.count), to: &out)
        for record in records {
            append(record.inode, to: &out)
            append(record.size, to: &out)
            append(UInt64(bitPattern: record.mtimeSeconds), to: &out)
            append(UInt64(bitPattern: record.ctimeSeconds), to: &out)
            append(record.nanoseconds, to: &out)
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
        let header = Self.magic.count + 16
        guard bytes.count >= header + 16, bytes.starts(with: Self.magic) else { return nil }
        let body = bytes.count - 16
        let decoded: (UInt64, [Record])? = bytes.withUnsafeBytes { raw in
            func load(_ at: Int) -> UInt64 { UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: at, as: UInt64.self)) }
            let check = XXH128Hasher.hash(bufferPointer: UnsafeRawBufferPointer(rebasing: raw[..<body]))
            let count = load(Self.magic.count + 8)
            guard check == XXH128Digest(high: load(body), low: load(body + 8)),
                count <= UInt64(body), header + Int(count) * Self.recordSize == body
            else { return nil }
            var records = [Record]()
            records.reserveCapacity(Int(count))
            var at = header
            for _ in 0..<Int(count) {
                records.append(
                    Record(
                        inode: load(at),
                        size: load(at + 8),
                        mtimeSeconds: Int64(bitPattern: load(at + 16)),
                        ctimeSeconds: Int64(bitPattern: load(at + 24)),
                        nanoseconds: load(at + 32),
                        xxh128: XXH128Digest(high: load(at + 40), low: load(at + 48))
                    )
                )
                at += Self.recordSize
            }
            return (load(Self.magic.count), records)
        }
        guard let (device, records) = decoded else { return nil }
        self.device = records.isEmpty ? nil : device
        self.records = records
        // One record per inode: a file with two would be ambiguous.
        guard grow(to: records.count) else { return nil }
    }

    private func append<T: FixedWidthInteger>(_ value: T, to out: inout [UInt8]) {
        withUnsafeBytes(of: value.bigEndian) { out.append(contentsOf: $0) }
    }
}
