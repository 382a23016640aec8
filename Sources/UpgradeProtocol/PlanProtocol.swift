import Foundation
public import UpgradeCore

/// `POST /v1/plan`: what a client has, so the server can diff it against the channel's release.
///
/// The client's tree travels either whole (`manifest`, canonical bytes in base64) or, when it
/// knows its installed release, as a ``ManifestDelta`` against that release's manifest, so a
/// routine request costs O(local changes). Bodies may be zstd-compressed (`Content-Encoding: zstd`).
public struct PlanRequest: Codable, Sendable {
    public var product: String
    public var channel: String
    public var installed: Installed?
    public var device: Device
    /// The whole tree, canonical encoding, base64.
    public var manifest: String?
    /// Or the tree as changes against the installed release.
    public var delta: ManifestDelta?
    /// What this client understands beyond the first protocol: `inline-plan` (the plan as a
    /// JSON object in `planJSON`, not base64 in `plan`). Servers ignore what they do not know.
    public var accepts: [String]?
    /// `sync --version V`: plan to this release of the product instead of the channel's.
    public var version: String?

    /// The release a client has installed.
    public struct Installed: Codable, Sendable {
        public var version: String
        public var sequence: UInt64
        public var manifestSHA256: String

        public init(version: String, sequence: UInt64, manifestSHA256: String) {
            self.version = version
            self.sequence = sequence
            self.manifestSHA256 = manifestSHA256
        }
    }

    /// Who asks: enough for a fleet view, nothing more.
    public struct Device: Codable, Sendable {
        public var os: String
        public var arch: String
        public var id: String
        /// `linux-x86_64`: what release headers name.
        public var platform: String?
        /// From /etc/os-release (PRETTY_NAME), else the kernel release.
        public var osVersion: String?
        /// Hardware model (DMI product name or device-tree model), when the machine says.
        public var model: String?
        /// Operator tags from the config (`tag = [...]`, `--tag`).
        public var tags: [String]?

        public init(os: String, arch: String, id: String) {
            self.os = os
            self.arch = arch
            self.id = id
        }

        /// PRETTY_NAME of /etc/os-release, else `uname -r`.
        public static var hostOSVersion: String? {
            if let text = try? String(contentsOfFile: "/etc/os-release", encoding: .utf8) {
                for line in text.split(separator: "\n") where line.hasPrefix("PRETTY_NAME=") {
                    return String(line.dropFirst("PRETTY_NAME=".count)).trimmingCharacters(
                        in: CharacterSet(charactersIn: "\"")
                    )
                }
            }
            var name = utsname()
            guard uname(&name) == 0 else { return nil }
            return withUnsafeBytes(of: &name.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        }

        /// The DMI product name or the device-tree model.
        public static var hostModel: String? {
            for path in ["/sys/class/dmi/id/product_name", "/proc/device-tree/model"] {
                if let text = try? String(contentsOfFile: path, encoding: .utf8) {
                    let model = text.trimmingCharacters(
                        in: .whitespacesAndNewlines.union(CharacterSet(charactersIn: "\u{0}"))
                    )
                    if !model.isEmpty { return String(model.prefix(128)) }
                }
            }
            return nil
        }
    }

    public init(product: String, channel: String, installed: Installed?, device: Device) {
        self.product = product
        self.channel = channel
        self.installed = installed
        self.device = device
    }
}

/// A tree described as changes against a known manifest.
public struct ManifestDelta: Codable, Sendable, Equatable {
    /// SHA-256 (hex) of the base manifest.
    public var base: String
    /// Entries that are new or differ from the base.
    public var changed: [EntryJSON]
    /// Paths of the base that are gone.
    public var removed: [String]

    /// True when the tree is the base.
    public var isEmpty: Bool { changed.isEmpty && removed.isEmpty }

    /// A delta from its parts.
    public init(base: String, changed: [EntryJSON], removed: [String]) {
        self.base = base
        self.changed = changed
        self.removed = removed
    }

    /// The changes that turn `base` into `tree`.
    /// One merge walk of the two sorted lists; an entry of `tree` whose size and XXH3-128 match
    /// `base` takes base's SHA-256 (what ``Manifest/adoptingDigests(from:)`` does) before the
    /// two are compared, so an unchanged file is not sent.
    ///
    /// `baseDigest` is the base's SHA-256 hex when the caller knows it (the signed header names
    /// it), saving a re-encoding and hash of the whole base.
    public init(from base: Manifest, to tree: Manifest, baseDigest: String? = nil) {
        var changed = [EntryJSON]()
        var removed = [String]()
        let left = tree.entries
        let right = base.entries
        var i = 0
        var j = 0
        while i < left.count || j < right.count {
            if j == right.count || (i < left.count && PathRules.byteOrder(left[i].path, right[j].path)) {
                changed.append(EntryJSON(left[i]))
                i += 1
            } else if i == left.count || PathRules.byteOrder(right[j].path, left[i].path) {
                removed.append(right[j].path)
                j += 1
            } else {
                var entry = left[i]
                if case .file(var content) = entry.content, content.sha256 == nil, let theirs = right[j].file,
                    theirs.size == content.size, theirs.xxh128 == content.xxh128
                {
                    content.sha256 = theirs.sha256
                    entry.content = .file(content)
                }
                if entry != right[j] { changed.append(EntryJSON(entry)) }
                i += 1
                j += 1
            }
        }
        self.base = baseDigest ?? base.digest.hex
        self.changed = changed
        self.removed = removed
    }

    /// `base` with these changes, read lazily; throws when an entry does not decode.
    public func changedTree(base: Manifest) throws(ManifestDecodingError) -> ChangedTree {
        var entries = [String: ManifestEntry](minimumCapacity: changed.count)
        for entry in changed {
            let decoded = try entry.entry()
            entries[decoded.path] = decoded
        }
        return ChangedTree(base: base, changed: entries, removed: Set(removed))
    }
}

/// The server's answer: the signed channel record and header, and the plan from the client's
/// tree to that release. Everything signed travels as the exact signed bytes; the plan is not
/// signed and the client verifies it against the signed manifest.
public struct PlanResponse: Codable, Sendable {
    /// The channel record file, base64.
    public var channel: String
    /// The release header file, base64.
    public var header: String
    public var version: String
    /// Path of the release manifest relative to the repository root (same on a mirror).
    public var manifestPath: String
    /// The plan JSON, base64 (empty when `planJSON` carries it).
    public var plan: String
    /// The plan inline, for clients that accept `inline-plan`.
    public var planJSON: PlanJSON?
    /// Compressed size of each payload the plan needs, by SHA-256 hex (unsigned; for progress
    /// and dry runs).
    public var objects: [String: UInt64]
    /// Target path → a binary delta from content the client has, where that is smaller than the
    /// whole object (unsigned: the result is checked against the signed SHA-256).
    public var deltas: [String: DeltaChoice]?
    /// True when the server sent no plan because the client asked (`accepts: local-plan`) and has
    /// nothing the server could diff against (a first install): the client computes the plan from
    /// the signed manifest, so the response does not repeat the whole tree.
    public var localPlan: Bool?

    public init(
        channel: [UInt8],
        header: [UInt8],
        version: String,
        manifestPath: String,
        plan: Plan,
        objects: [String: UInt64]
    ) {
        self.channel = Data(channel).base64EncodedString()
        self.header = Data(header).base64EncodedString()
        self.version = version
        self.manifestPath = manifestPath
        self.plan = plan.jsonEncoded().base64EncodedString()
        self.objects = objects
    }
}

/// `POST /v1/reports`: the outcome of a sync, for the fleet view.
public struct SyncOutcome: Codable, Sendable {
    public var product: String
    public var device: PlanRequest.Device
    public var fromVersion: String?
    public var toVersion: String?
    public var result: String
    public var bytesDownloaded: UInt64
    public var durationSeconds: Double
    /// Files that came as binary deltas.
    public var deltas: Int?
    /// Deltas that could not be used (the files came whole), with the reason.
    public var fallbacks: [String]?
    /// Payload bytes that came from LAN peers instead of this server or its mirror.
    public var peerBytes: UInt64?
    /// Peers dropped for misbehaving, with the reason.
    public var badPeers: [String]?
    /// SHA-256 hex of the signed header of the release installed after the run.
    public var releaseDigest: String?
    /// `offline` for a run that did not ask this server (a bundle, LAN peers): queued on the
    /// device and sent with the next online sync. Absent: online.
    public var via: String?
    /// When the run ended (ISO 8601 UTC); queued reports carry it, the server's clock otherwise.
    public var at: String?

    public init(
        product: String,
        device: PlanRequest.Device,
        fromVersion: String?,
        toVersion: String?,
        result: String,
        bytesDownloaded: UInt64,
        durationSeconds: Double
    ) {
        self.product = product
        self.device = device
        self.fromVersion = fromVersion
        self.toVersion = toVersion
        self.result = result
        self.bytesDownloaded = bytesDownloaded
        self.durationSeconds = durationSeconds
    }
}

/// HTTP header names of the plan exchange.
public enum PlanHeaders {
    /// On a plan response: the signed release header (base64), so a client can bound the body
    /// it reads by what the publisher signed before reading it.
    public static let releaseHeader = "Upgrade-Release-Header"
}

/// An error body: `{"error": "..."}`.
public struct ErrorBody: Codable, Sendable {
    public var error: String
    public init(error: String) { self.error = error }
}

/// A binary delta the client can fetch instead of a whole object.
public struct DeltaChoice: Codable, Sendable, Equatable {
    /// Path, in the client's tree, of the file the delta starts from.
    public var base: String
    public var baseSize: UInt64
    public var baseXXH128: String
    public var baseSHA256: String
    public var targetSHA256: String
    /// Delta bytes.
    public var size: UInt64
    /// Path of the delta relative to the repository root (same on a mirror).
    public var path: String

    public init(
        base: String,
        baseSize: UInt64,
        baseXXH128: String,
        baseSHA256: String,
        targetSHA256: String,
        size: UInt64,
        path: String
    ) {
        self.base = base
        self.baseSize = baseSize
        self.baseXXH128 = baseXXH128
        self.baseSHA256 = baseSHA256
        self.targetSHA256 = targetSHA256
        self.size = size
        self.path = path
    }
}

/// Paths of the repository's files as a client fetches them from the server or a mirror.
public enum RepositoryPaths {
    /// The compressed manifest and (with the SHA-256 of the manifest a client has) the patch
    /// from it, beside a release's `releases/P/V/manifest` (docs/format.md, "Release
    /// repository").
    public static func manifestSiblings(
        _ manifestPath: String,
        from base: String?
    ) -> (
        compressed: String, patch: String?
    ) {
        let directory = manifestPath.hasSuffix("/manifest") ? String(manifestPath.dropLast("manifest".count)) : ""
        return (manifestPath + ".zst", base.map { directory + "manifest-from/" + $0 + ".zst" })
    }
}

/// `POST /v1/deltas`: many small deltas in one response, as ``ObjectPack`` does for objects. The
/// request is `{"deltas": ["<base SHA-256>-<target SHA-256>", ...]}` (the names of
/// `deltas/ab/<base>-<target>`, at most ``maximumCount``); the response is one frame per
/// requested delta, in request order: 32 bytes of base SHA-256, 32 of target SHA-256, one status
/// byte (0: found, 1: missing or too large), a big-endian u64 length and that many bytes of the
/// delta, which the client applies to its own base and checks against the signed SHA-256 like
/// any delta. Mirrors have no such endpoint; clients fetch deltas one by one there.
public enum DeltaPack {
    public static let path = "v1/deltas"
    public static let contentType = "application/x-upgrade-pack"
    /// Deltas per request.
    public static let maximumCount = 1024
    /// Deltas at most this large travel in packs; larger ones alone.
    public static let smallDelta: UInt64 = 64 << 10

    public struct Request: Codable, Sendable {
        public var deltas: [String]
        public init(deltas: [String]) { self.deltas = deltas }
    }

    /// Frame head: base SHA-256, target SHA-256, status, length.
    public static let headSize = 64 + 1 + 8
}

/// `POST /v1/objects`: many small objects in one response, so a change of 1,500 small files is
/// not 1,500 round trips. The request is `{"objects": [SHA-256 hex, ...]}` (at most
/// ``maximumCount``); the response (`application/x-upgrade-pack`) is one frame per requested
/// object, in request order: 32 bytes of SHA-256, one status byte (0: found, 1: missing), a
/// big-endian u64 length and that many bytes of the object file (zstd), which the client checks
/// like any download. Mirrors have no such endpoint; clients fetch objects one by one there.
public enum ObjectPack {
    public static let path = "v1/objects"
    public static let contentType = "application/x-upgrade-pack"
    /// Objects per request.
    public static let maximumCount = 1024
    /// Objects at most this large (compressed) travel in packs; larger ones alone (resumable).
    public static let smallObject: UInt64 = 64 << 10

    public struct Request: Codable, Sendable {
        public var objects: [String]
        public init(objects: [String]) { self.objects = objects }
    }

    /// Frame head: SHA-256, status, length.
    public static let headSize = 32 + 1 + 8
}

/// One frame of an ``ObjectPack`` or ``DeltaPack`` response: the name (32 or 64 bytes), a
/// status byte (0: found, 1: missing), a big-endian u64 length and that many bytes.
public struct PackFrame: Equatable, Sendable {
    public var name: [UInt8]
    /// The payload; nil for a missing one.
    public var bytes: ArraySlice<UInt8>?

    public init(name: [UInt8], bytes: ArraySlice<UInt8>?) {
        self.name = name
        self.bytes = bytes
    }

    /// The frame as it travels.
    public func encoded() -> [UInt8] {
        var out = name
        out.append(bytes == nil ? 1 : 0)
        let length = UInt64(bytes?.count ?? 0)
        for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: length >> shift)) }
        if let bytes { out += bytes }
        return out
    }

    /// The frames of `body`, whose names are `nameSize` bytes, in order; reading stops at a
    /// frame that runs past the end (a cut response yields the frames before the cut).
    public static func frames(in body: [UInt8], nameSize: Int) -> [PackFrame] {
        var frames = [PackFrame]()
        var offset = 0
        while offset + nameSize + 9 <= body.count {
            let found = body[offset + nameSize] == 0
            let length = body[(offset + nameSize + 1)..<(offset + nameSize + 9)].reduce(UInt64(0)) {
                $0 << 8 | UInt64($1)
            }
            let start = offset + nameSize + 9
            guard length <= UInt64(body.count - start) else { break }
            let end = start + Int(length)
            frames.append(
                PackFrame(name: Array(body[offset..<offset + nameSize]), bytes: found ? body[start..<end] : nil)
            )
            offset = end
        }
        return frames
    }
}
