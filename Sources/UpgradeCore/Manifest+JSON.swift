import Foundation

/// The JSON form of a manifest, for people and scripts (see docs/format.md, "Manifest JSON").
///
/// It carries the same fields as the canonical encoding plus, on output, the digest and summary
/// counts. Decoding checks every rule the canonical decoder checks.
extension Manifest {
    /// The value of the JSON `format` field.
    public static let jsonFormat = "upgrade-manifest/1"

    /// Pretty-printed JSON with sorted keys: the same manifest always gives the same bytes.
    public func jsonEncoded() -> Data {
        let summary = self.summary
        let document = ManifestJSON(
            format: Self.jsonFormat,
            digest: digest.hex,
            files: summary.files,
            directories: summary.directories,
            symlinks: summary.symlinks,
            bytes: summary.bytes,
            hooks: Dictionary(uniqueKeysWithValues: hooks.scripts.map { ($0.key.description, $0.value) }),
            config: policy.config.isEmpty ? nil : policy.config.map(\.pattern),
            unmanaged: policy.unmanaged.isEmpty ? nil : policy.unmanaged.map(\.pattern),
            metadata: metadata.isEmpty ? nil : metadata,
            entries: entries.map(EntryJSON.init)
        )
        return JSON.encode(document)
    }

    /// Decodes the JSON form; the `digest` field, when present, must match the entries.
    public init(json data: Data) throws(ManifestDecodingError) {
        let document: ManifestJSON
        do {
            document = try JSONDecoder().decode(ManifestJSON.self, from: data)
        } catch {
            throw .malformed("JSON: \(JSON.describe(error))")
        }
        guard document.format == Self.jsonFormat else {
            throw .malformed(
                "format is \(document.format.debugDescription), expected \(Self.jsonFormat.debugDescription)"
            )
        }
        var scripts = [Hooks.Kind: String]()
        for (name, path) in document.hooks ?? [:] {
            guard let kind = Hooks.Kind(name: name) else { throw .malformed("unknown hook \(name.debugDescription)") }
            scripts[kind] = path
        }
        var entries = [ManifestEntry]()
        entries.reserveCapacity(document.entries.count)
        for entry in document.entries {
            entries.append(try entry.entry())
        }
        let policy: PathPolicy
        do {
            policy = try PathPolicy(config: document.config ?? [], unmanaged: document.unmanaged ?? [])
        } catch {
            throw .malformed("\(error)")
        }
        do {
            try self.init(entries: entries, hooks: Hooks(scripts), policy: policy, metadata: document.metadata ?? [:])
        } catch {
            throw .invalidPath(error)
        }
        if let claimed = document.digest, claimed != digest.hex {
            throw .malformed("digest field \(claimed) does not match the entries (\(digest.hex))")
        }
    }

    /// Decodes either form, telling them apart by their first bytes.
    public init(decoding data: [UInt8]) throws(ManifestDecodingError) {
        if data.starts(with: Self.canonicalMagic) || data.starts(with: Self.canonicalMagicV2) {
            try self.init(canonical: data)
        } else if data.first(where: { ![0x20, 0x09, 0x0a, 0x0d].contains($0) }) == UInt8(ascii: "{") {
            try self.init(json: Data(data))
        } else {
            throw .notAManifest
        }
    }
}

struct ManifestJSON: Codable {
    var format: String
    var digest: String?
    var files: Int?
    var directories: Int?
    var symlinks: Int?
    var bytes: UInt64?
    var hooks: [String: String]?
    /// Config file patterns (absent when none).
    var config: [String]?
    /// Unmanaged path patterns (absent when none).
    var unmanaged: [String]?
    /// Owner, extended attributes (values as byte arrays), hard links, sparseness, by path.
    var metadata: [String: EntryMetadata]?
    var entries: [EntryJSON]
}

/// One manifest entry in JSON form (see docs/format.md, "Manifest JSON").
public struct EntryJSON: Codable, Sendable, Equatable {
    public var path: String
    public var kind: String
    public var mode: String?
    public var size: UInt64?
    public var xxh128: String?
    public var sha256: String?
    public var target: String?

    /// The JSON form of `entry`.
    public init(_ entry: ManifestEntry) {
        path = entry.path
        kind = entry.kind.description
        switch entry.content {
        case .file(let file):
            mode = FileMode.string(entry.mode)
            size = file.size
            xxh128 = file.xxh128.hex
            sha256 = file.sha256?.hex
        case .directory:
            mode = FileMode.string(entry.mode)
        case .symlink(let target):
            self.target = target
        }
    }

    /// The entry, checking every field.
    public func entry() throws(ManifestDecodingError) -> ManifestEntry {
        let shown = path.debugDescription
        guard let kind = EntryKind(name: kind) else {
            throw .malformed("entry \(shown) has unknown kind \(kind.debugDescription)")
        }
        func parsedMode() throws(ManifestDecodingError) -> UInt32 {
            guard let mode, let value = FileMode.parse(mode) else {
                throw .malformed("entry \(shown) needs an octal mode such as \"0644\"")
            }
            return value
        }
        switch kind {
        case .file:
            guard let size else { throw .malformed("file \(shown) has no size") }
            guard let hex = xxh128, let xxh = XXH128Digest(hex: hex) else {
                throw .malformed("file \(shown) needs a 32-digit hex xxh128")
            }
            var sha: SHA256Hash?
            if let hex = sha256 {
                guard let digest = SHA256Hash(hex: hex) else { throw .malformed("file \(shown) has a bad sha256") }
                sha = digest
            }
            return .file(path, mode: try parsedMode(), FileContent(size: size, xxh128: xxh, sha256: sha))
        case .directory:
            return .directory(path, mode: try parsedMode())
        case .symlink:
            guard let target else { throw .malformed("symlink \(shown) has no target") }
            return .symlink(path, target: target)
        }
    }
}

/// Octal permission strings as people write them ("0755").
public enum FileMode {
    /// Four octal digits.
    public static func string(_ mode: UInt32) -> String {
        let digits = String(mode & 0o7777, radix: 8)
        return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
    }

    /// Parses up to four octal digits; nil for anything else.
    public static func parse(_ text: String) -> UInt32? {
        guard (1...4).contains(text.count), let value = UInt32(text, radix: 8) else { return nil }
        return value
    }
}

/// Shared JSON settings: deterministic output.
public enum JSON {
    /// Encodes with sorted keys, pretty printed, slashes unescaped.
    public static func encode(_ value: some Encodable) -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        // Our documents hold only strings, integers, arrays and objects: encoding cannot fail.
        return try! encoder.encode(value)
    }

    /// A one-line reason for a decoding failure.
    public static func describe(_ error: any Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, let context):
            return "missing key \(key.stringValue.debugDescription) at \(path(context))"
        case DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context):
            return "\(context.debugDescription) at \(path(context))"
        case DecodingError.dataCorrupted(let context):
            return context.debugDescription + (context.codingPath.isEmpty ? "" : " at \(path(context))")
        default:
            return "\(error)"
        }
    }

    private static func path(_ context: DecodingError.Context) -> String {
        context.codingPath.isEmpty
            ? "top level"
            : context.codingPath.map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: ".")
    }
}
