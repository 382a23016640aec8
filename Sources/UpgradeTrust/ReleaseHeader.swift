import Foundation
public import UpgradeCore

/// The small signed document that names a release: what it is, where it sits in its product's
/// sequence, how long it may be installed, and the digest of its canonical manifest.
public struct ReleaseHeader: Hashable, Sendable, Codable, SignedDocument {
    /// The envelope type of a release header.
    public static let envelopeType = "upgrade-release-header/1"
    public static let role = Role.release

    public var product: String
    public var version: String
    /// Grows by one with every release of the product: the source of truth for ordering.
    public var sequence: UInt64
    /// e.g. `linux-x86_64`.
    public var platform: String
    /// Seconds since the epoch.
    public var created: Int64
    /// Seconds since the epoch; a client refuses to install the release after it.
    public var expires: Int64
    /// Manifest entries.
    public var entries: Int
    /// Total size of the release's files.
    public var totalSize: UInt64
    /// SHA-256 of the canonical manifest, hex.
    public var manifestSHA256: String
    /// Length of the canonical manifest in bytes, so a client reads no more than that (absent
    /// from headers published before it was added; ``manifestByteLimit`` then bounds by entries).
    public var manifestBytes: Int?

    /// The most manifest bytes a client should read for this release: the signed length, or
    /// for older headers the most `entries` canonical entries can take (paths and link targets
    /// of at most 4,096 bytes).
    public var manifestByteLimit: Int {
        if let manifestBytes { return manifestBytes }
        return 4096 + entries * (2 * (2 + 4096) + 1 + 2 + 8 + 16 + 1 + 32)
    }

    /// Creates a header.
    public init(
        product: String,
        version: String,
        sequence: UInt64,
        platform: String,
        created: Int64,
        expires: Int64,
        entries: Int,
        totalSize: UInt64,
        manifestSHA256: SHA256Hash,
        manifestBytes: Int? = nil
    ) {
        self.product = product
        self.version = version
        self.sequence = sequence
        self.platform = platform
        self.created = created
        self.expires = expires
        self.entries = entries
        self.totalSize = totalSize
        self.manifestSHA256 = manifestSHA256.hex
        self.manifestBytes = manifestBytes
    }

    /// Verifies `envelope` and decodes its header: signature by a trusted key, not expired at
    /// `now`, sequence at least `minimumSequence`.
    public static func verify(
        _ envelope: SignedEnvelope,
        trusted: TrustedKeys,
        now: Int64,
        minimumSequence: UInt64 = 0
    ) throws(TrustError) -> ReleaseHeader {
        let header = try open(envelope, trusted: trusted, now: now, minimumSequence: minimumSequence)
        guard SHA256Hash(hex: header.manifestSHA256) != nil else { throw .malformed("manifestSHA256 is not a SHA-256") }
        return header
    }

    /// Checks that `manifest` is the one this header signs.
    public func check(_ manifest: Manifest) throws(TrustError) {
        let digest = manifest.digest.hex
        guard digest == manifestSHA256 else {
            throw .mismatch("manifest digest \(digest) is not the signed \(manifestSHA256)")
        }
        let summary = manifest.summary
        guard manifest.entries.count == entries, summary.bytes == totalSize else {
            throw .mismatch(
                "manifest has \(manifest.entries.count) entries / \(summary.bytes) bytes, header says \(entries) / \(totalSize)"
            )
        }
    }
}

/// The signed pointer from a channel (`stable`, `beta`, …) to a release.
public struct ChannelRecord: Hashable, Sendable, Codable, SignedDocument {
    /// The envelope type of a channel record.
    public static let envelopeType = "upgrade-channel/1"
    public static let role = Role.channel

    public var product: String
    public var channel: String
    public var version: String
    /// The release's own sequence.
    public var releaseSequence: UInt64
    /// SHA-256 of the release header file (the envelope bytes), hex.
    public var headerSHA256: String
    /// Grows with every re-signing of this channel, so an old record cannot be replayed.
    public var sequence: UInt64
    public var created: Int64
    /// A client refuses the record after this time: a frozen mirror cannot hide new releases forever.
    public var expires: Int64
    /// Which devices take the release (absent: every device).
    public var rollout: Rollout?

    /// Creates a record.
    public init(
        product: String,
        channel: String,
        version: String,
        releaseSequence: UInt64,
        headerSHA256: SHA256Hash,
        sequence: UInt64,
        created: Int64,
        expires: Int64,
        rollout: Rollout? = nil
    ) {
        self.rollout = rollout
        self.product = product
        self.channel = channel
        self.version = version
        self.releaseSequence = releaseSequence
        self.headerSHA256 = headerSHA256.hex
        self.sequence = sequence
        self.created = created
        self.expires = expires
    }

    /// Verifies `envelope` and decodes its record: trusted signature, not expired, sequence at
    /// least `minimumSequence`.
    public static func verify(
        _ envelope: SignedEnvelope,
        trusted: TrustedKeys,
        now: Int64,
        minimumSequence: UInt64 = 0
    ) throws(TrustError) -> ChannelRecord {
        let record = try open(envelope, trusted: trusted, now: now, minimumSequence: minimumSequence)
        if let rollout = record.rollout, !(0...100).contains(rollout.percent) {
            throw .malformed("rollout percentage \(rollout.percent) is outside 0...100")
        }
        return record
    }
}

/// Compact JSON with sorted keys: the signed payload bytes.
enum Payload {
    static func encode(_ value: some Encodable) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return [UInt8](try! encoder.encode(value))
    }

    static func decode<T: Decodable>(_ bytes: [UInt8]) throws(TrustError) -> T {
        do {
            return try JSONDecoder().decode(T.self, from: Data(bytes))
        } catch {
            throw .malformed("payload: \(JSON.describe(error))")
        }
    }
}

extension ReleaseHeader {
    /// What the header names, in messages.
    public var subject: String { "release \(product) \(version)" }
}

extension ChannelRecord {
    /// What the record names, in messages.
    public var subject: String { "channel \(product)/\(channel)" }
}

/// A signed document of the trust model (release header, channel record): one envelope type,
/// an expiry and a sequence that must not go backwards.
public protocol SignedDocument: Codable {
    static var envelopeType: String { get }
    /// The role whose keys sign documents of this type.
    static var role: Role { get }
    var expires: Int64 { get }
    var sequence: UInt64 { get }
    /// What the document names, in messages.
    var subject: String { get }
}

extension SignedDocument {
    /// Signs the document.
    public func signed(with key: PrivateKey) -> SignedEnvelope {
        SignedEnvelope(type: Self.envelopeType, payload: Payload.encode(self), signedWith: key)
    }

    /// Signs the document with several keys (a role with a threshold above 1).
    public func signed(with keys: [PrivateKey]) -> SignedEnvelope {
        SignedEnvelope(type: Self.envelopeType, payload: Payload.encode(self), signedWith: keys)
    }

    /// Decodes the payload without checking any signature: for a publisher reading its own
    /// repository to pick the next sequence, never for deciding what to install.
    public init(unverified envelope: SignedEnvelope) throws(TrustError) {
        guard envelope.type == Self.envelopeType else {
            throw .wrongType(expected: Self.envelopeType, found: envelope.type)
        }
        self = try Payload.decode(envelope.payload)
    }

    /// A trusted signature of the right type, not expired at `now`, sequence at least `minimumSequence`.
    static func open(
        _ envelope: SignedEnvelope,
        trusted: TrustedKeys,
        now: Int64,
        minimumSequence: UInt64
    ) throws(TrustError) -> Self {
        _ = try envelope.verify(
            expectedType: envelopeType,
            keys: trusted.root.keys(for: role),
            threshold: trusted.root.threshold(for: role),
            what: "\(role.rawValue) signature"
        )
        let document: Self = try Payload.decode(envelope.payload)
        guard now < document.expires else {
            throw .expired(what: document.subject, expiredAt: document.expires, now: now)
        }
        guard document.sequence >= minimumSequence else {
            throw .sequenceTooLow(what: document.subject, sequence: document.sequence, minimum: minimumSequence)
        }
        return document
    }
}

extension ReleaseHeader {
    /// This machine's platform name, what `publish` records by default: `linux-x86_64`,
    /// `linux-aarch64`.
    public static var hostPlatform: String {
        #if arch(x86_64)
        "linux-x86_64"
        #elseif arch(arm64)
        "linux-aarch64"
        #else
        "linux-unknown"
        #endif
    }

    /// The platform of a release that installs on any machine (scripts, data).
    public static let anyPlatform = "any"

    /// True when the release may be installed on `host`: the same platform, or ``anyPlatform``.
    public func installs(on host: String = ReleaseHeader.hostPlatform) -> Bool {
        platform == host || platform == Self.anyPlatform
    }

    /// Why the release may not be installed on `host`, or nil when it may.
    public func platformMismatch(host: String = ReleaseHeader.hostPlatform) -> PlatformMismatch? {
        installs(on: host) ? nil : PlatformMismatch(product: product, version: version, platform: platform, host: host)
    }
}

/// A release published for another platform than this machine's (`--json` error documents
/// carry it as `platform`).
public struct PlatformMismatch: Hashable, Sendable, Encodable, CustomStringConvertible {
    public let product: String
    public let version: String
    /// The platform the release is published for.
    public let platform: String
    /// This machine's.
    public let host: String

    public var description: String { "\(product) \(version) is published for \(platform), this machine is \(host)" }
}
