import Crypto

/// The canonical byte encoding of a manifest (see docs/format.md, "Canonical manifest").
///
/// One tree has exactly one encoding: entries in path-byte order, fixed-width big-endian fields,
/// no optional padding, and a decoder that rejects anything else. Its SHA-256 is the manifest
/// digest that release headers sign.
extension Manifest {
    /// The 8-byte magic that starts a canonical manifest (format version 1).
    public static let canonicalMagic: [UInt8] = Array("UPGMAN".utf8) + [0x00, 0x01]
    /// The magic of format version 2: version 1 followed by a path policy. Written only when the
    /// policy is not empty, so a tree without one keeps its version-1 bytes and digest.
    public static let canonicalMagicV2: [UInt8] = Array("UPGMAN".utf8) + [0x00, 0x02]

    /// Flags byte of a file entry: bit 0 says a SHA-256 follows.
    static let flagHasSHA256: UInt8 = 0x01
    /// Flags of a metadata record (format version 2).
    static let metaOwner: UInt8 = 0x01
    static let metaXattrs: UInt8 = 0x02
    static let metaHardLink: UInt8 = 0x04
    static let metaSparse: UInt8 = 0x08

    /// The canonical bytes.
    public func canonicalEncoding() -> [UInt8] {
        var writer = ByteWriter()
        writer.reserve(16 + entries.count * 48)
        let version2 = !policy.isEmpty || !metadata.isEmpty
        writer.raw(version2 ? Self.canonicalMagicV2 : Self.canonicalMagic)
        writer.u64(UInt64(entries.count))
        for entry in entries { Self.write(entry, to: &writer, digests: true) }
        let hooks = hooks.scripts.sorted { $0.key.rawValue < $1.key.rawValue }
        writer.u8(UInt8(hooks.count))
        for (kind, path) in hooks {
            writer.u8(kind.rawValue)
            writer.string16(path)
        }
        if version2 {
            for globs in [policy.config, policy.unmanaged] {
                writer.u16(UInt16(globs.count))
                for glob in globs { writer.string16(glob.pattern) }
            }
            writer.u64(UInt64(metadata.count))
            for path in metadata.keys.sorted(by: PathRules.byteOrder) {
                let meta = metadata[path]!
                writer.string16(path)
                var flags: UInt8 = 0
                if meta.owner != nil { flags |= Self.metaOwner }
                if !meta.xattrs.isEmpty { flags |= Self.metaXattrs }
                if meta.hardLink != nil { flags |= Self.metaHardLink }
                if meta.sparse { flags |= Self.metaSparse }
                writer.u8(flags)
                if let owner = meta.owner {
                    writer.string16(owner.user ?? "")
                    writer.u32(owner.uid)
                    writer.string16(owner.group ?? "")
                    writer.u32(owner.gid)
                }
                if !meta.xattrs.isEmpty {
                    writer.u16(UInt16(meta.xattrs.count))
                    for xattr in meta.xattrs {
                        writer.string16(xattr.name)
                        writer.u32(UInt32(xattr.value.count))
                        writer.raw(xattr.value)
                    }
                }
                if let leader = meta.hardLink { writer.string16(leader) }
            }
        }
        return writer.bytes
    }

    /// One entry as the canonical encoding writes it; without `digests`, the file's flags byte
    /// and SHA-256 are left out (the scan projection, ``forEachScanProjectionChunk(_:)``).
    static func write(_ entry: ManifestEntry, to writer: inout ByteWriter, digests: Bool) {
        writer.string16(entry.path)
        writer.u8(entry.kind.rawValue)
        writer.u16(UInt16(entry.mode))
        switch entry.content {
        case .file(let file):
            writer.u64(file.size)
            writer.u64(file.xxh128.high)
            writer.u64(file.xxh128.low)
            guard digests else { break }
            if let sha = file.sha256 {
                writer.u8(flagHasSHA256)
                writer.raw(sha.bytes)
            } else {
                writer.u8(0)
            }
        case .directory:
            break
        case .symlink(let target):
            writer.string16(target)
        }
    }

    /// The manifest digest: SHA-256 of ``canonicalEncoding()``.
    public var digest: SHA256Hash {
        SHA256Hash(bytes: Array(SHA256.hash(data: canonicalEncoding())))!
    }

    /// Decodes canonical bytes, rejecting any input that is not the one canonical encoding of a
    /// valid manifest.
    public init(canonical bytes: [UInt8]) throws(ManifestDecodingError) {
        var reader = ByteReader(bytes)
        do {
            let magic = try reader.take(Self.canonicalMagic.count)
            let version2 = magic.elementsEqual(Self.canonicalMagicV2)
            guard version2 || magic.elementsEqual(Self.canonicalMagic) else {
                throw ManifestDecodingError.notAManifest
            }
            let count = try reader.u64()
            // Each entry takes at least 6 bytes; a larger count is a lie that would make us allocate.
            guard count <= UInt64(reader.remaining / 6) else {
                throw ManifestDecodingError.malformed("entry count \(count) exceeds the data")
            }
            var entries = [ManifestEntry]()
            entries.reserveCapacity(Int(count))
            for _ in 0..<count {
                entries.append(try Self.decodeEntry(&reader))
            }
            let hookCount = try reader.u8()
            var scripts = [Hooks.Kind: String]()
            var lastKind: UInt8 = 0
            for _ in 0..<hookCount {
                let raw = try reader.u8()
                guard let kind = Hooks.Kind(rawValue: raw), raw > lastKind else {
                    throw ManifestDecodingError.malformed("hook kind \(raw) unknown or out of order")
                }
                lastKind = raw
                scripts[kind] = try reader.string16()
            }
            var policy = PathPolicy.none
            var metadata = [String: EntryMetadata]()
            if version2 {
                var lists = [[Glob]]()
                for _ in 0..<2 {
                    let count = try reader.u16()
                    var globs = [Glob]()
                    for _ in 0..<count { globs.append(try Glob(try reader.string16())) }
                    lists.append(globs)
                }
                policy = PathPolicy(config: lists[0], unmanaged: lists[1])
                // One tree, one encoding: sorted and unique.
                guard policy.config == lists[0], policy.unmanaged == lists[1] else {
                    throw ManifestDecodingError.malformed("path policy unsorted or repeated")
                }
                let count = try reader.u64()
                guard count <= UInt64(reader.remaining / 3) else {
                    throw ManifestDecodingError.malformed("metadata count \(count) exceeds the data")
                }
                var previous: String?
                for _ in 0..<count {
                    let path = try reader.string16()
                    if let previous, !PathRules.byteOrder(previous, path) {
                        throw ManifestDecodingError.malformed("metadata out of order at \(path.debugDescription)")
                    }
                    previous = path
                    let flags = try reader.u8()
                    guard flags != 0,
                        flags & ~(Self.metaOwner | Self.metaXattrs | Self.metaHardLink | Self.metaSparse) == 0
                    else {
                        throw ManifestDecodingError.malformed("metadata of \(path.debugDescription) has flags \(flags)")
                    }
                    var meta = EntryMetadata()
                    if flags & Self.metaOwner != 0 {
                        let user = try reader.string16()
                        let uid = try reader.u32()
                        let group = try reader.string16()
                        meta.owner = Owner(user: user, uid: uid, group: group, gid: try reader.u32())
                    }
                    if flags & Self.metaXattrs != 0 {
                        let xattrCount = try reader.u16()
                        guard xattrCount > 0 else { throw ManifestDecodingError.malformed("empty attribute list") }
                        for _ in 0..<xattrCount {
                            let name = try reader.string16()
                            let length = Int(try reader.u32())
                            guard length <= EntryMetadata.maxValueBytes else {
                                throw ManifestDecodingError.malformed("attribute \(name) of \(path) is too long")
                            }
                            meta.xattrs.append(ExtendedAttribute(name: name, value: Array(try reader.take(length))))
                        }
                    }
                    if flags & Self.metaHardLink != 0 { meta.hardLink = try reader.string16() }
                    meta.sparse = flags & Self.metaSparse != 0
                    metadata[path] = meta
                }
                guard !policy.isEmpty || !metadata.isEmpty else {
                    throw ManifestDecodingError.malformed("format version 2 without a policy or metadata")
                }
            }
            guard reader.isAtEnd else {
                throw ManifestDecodingError.malformed("\(reader.remaining) bytes after the end of the manifest")
            }
            for (previous, next) in zip(entries, entries.dropFirst())
            where !PathRules.byteOrder(previous.path, next.path) && previous.path != next.path {
                throw ManifestDecodingError.malformed("entries out of order at \(next.path.debugDescription)")
            }
            let hooks = Hooks(scripts)
            try Self.validate(sorted: entries, hooks: hooks)
            if let (path, why) = Self.metadataViolation(metadata, entries: entries) {
                throw ManifestDecodingError.malformed("metadata of \(path.debugDescription): \(why)")
            }
            self.init(trustedSorted: entries, hooks: hooks, policy: policy, metadata: metadata)
        } catch let error as ManifestDecodingError {
            throw error
        } catch let error as PathPolicyError {
            throw .malformed("\(error)")
        } catch let error as ByteReader.DecodingError {
            throw .malformed("\(error)")
        } catch let error as PathError {
            throw .invalidPath(error)
        } catch {
            throw .malformed("\(error)")
        }
    }

    private static func decodeEntry(_ reader: inout ByteReader) throws -> ManifestEntry {
        let path = try reader.string16()
        let rawKind = try reader.u8()
        let mode = UInt32(try reader.u16())
        guard let kind = EntryKind(rawValue: rawKind) else {
            throw ManifestDecodingError.malformed("entry \(path.debugDescription) has unknown kind \(rawKind)")
        }
        guard mode & ~0o7777 == 0 else {
            throw ManifestDecodingError.malformed("entry \(path.debugDescription) has mode bits outside 0o7777")
        }
        switch kind {
        case .file:
            let size = try reader.u64()
            let xxh = XXH128Digest(high: try reader.u64(), low: try reader.u64())
            let flags = try reader.u8()
            guard flags & ~flagHasSHA256 == 0 else {
                throw ManifestDecodingError.malformed("entry \(path.debugDescription) has unknown flags \(flags)")
            }
            let sha = flags & flagHasSHA256 != 0 ? SHA256Hash(bytes: try reader.take(32)) : nil
            return .file(path, mode: mode, FileContent(size: size, xxh128: xxh, sha256: sha))
        case .directory:
            return .directory(path, mode: mode)
        case .symlink:
            guard mode == 0 else {
                throw ManifestDecodingError.malformed("symlink \(path.debugDescription) has a non-zero mode")
            }
            return .symlink(path, target: try reader.string16())
        }
    }
}

/// Why bytes are not a manifest.
public enum ManifestDecodingError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The input does not start with a manifest magic or a JSON object.
    case notAManifest
    /// The input is a manifest but breaks the format.
    case malformed(String)
    /// The input decodes but names a path the rules forbid.
    case invalidPath(PathError)

    public var description: String {
        switch self {
        case .notAManifest: "not a manifest (neither the canonical encoding nor JSON)"
        case .malformed(let why): "malformed manifest: \(why)"
        case .invalidPath(let error): "invalid manifest: \(error)"
        }
    }
}
