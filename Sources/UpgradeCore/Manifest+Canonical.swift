import Crypto

/// The canonical byte encoding of a manifest (see docs/format.md, "Canonical manifest").
///
/// One tree has exactly one encoding: entries in path-byte order, fixed-width big-endian fields,
/// no optional padding, and a decoder that rejects anything else. Its SHA-256 is the manifest
/// digest that release headers sign.
extension Manifest {
    /// The 8-byte magic that starts a canonical manifest (format version 1).
    public static let canonicalMagic: [UInt8] = Array("UPGMAN".utf8) + [0x00, 0x01]

    /// Flags byte of a file entry: bit 0 says a SHA-256 follows.
    static let flagHasSHA256: UInt8 = 0x01

    /// The canonical bytes.
    public func canonicalEncoding() -> [UInt8] {
        var writer = ByteWriter()
        writer.reserve(16 + entries.count * 48)
        writer.raw(Self.canonicalMagic)
        writer.u64(UInt64(entries.count))
        for entry in entries {
            writer.string16(entry.path)
            writer.u8(entry.kind.rawValue)
            writer.u16(UInt16(entry.mode))
            switch entry.content {
            case .file(let file):
                writer.u64(file.size)
                writer.u64(file.xxh128.high)
                writer.u64(file.xxh128.low)
                if let sha = file.sha256 {
                    writer.u8(Self.flagHasSHA256)
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
        let hooks = hooks.scripts.sorted { $0.key.rawValue < $1.key.rawValue }
        writer.u8(UInt8(hooks.count))
        for (kind, path) in hooks {
            writer.u8(kind.rawValue)
            writer.string16(path)
        }
        return writer.bytes
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
            guard try reader.take(Self.canonicalMagic.count).elementsEqual(Self.canonicalMagic) else {
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
            guard reader.isAtEnd else {
                throw ManifestDecodingError.malformed("\(reader.remaining) bytes after the end of the manifest")
            }
            for (previous, next) in zip(entries, entries.dropFirst())
            where !PathRules.byteOrder(previous.path, next.path) && previous.path != next.path {
                throw ManifestDecodingError.malformed("entries out of order at \(next.path.debugDescription)")
            }
            let hooks = Hooks(scripts)
            try Self.validate(sorted: entries, hooks: hooks)
            self.init(trustedSorted: entries, hooks: hooks)
        } catch let error as ManifestDecodingError {
            throw error
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
