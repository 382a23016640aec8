import Foundation

/// What a sharing machine announces: the release it holds and the port of its peer server (the
/// address is the datagram's source, or the address a client was given). No paths, no device
/// identity. Nothing in it is trusted: a client fetches the signed header it names and verifies it.
public struct PeerAnnouncement: Codable, Sendable, Hashable {
    public static let typeName = "upgrade-peer/1"
    public var type = PeerAnnouncement.typeName
    public var product: String
    public var version: String
    public var sequence: UInt64
    /// SHA-256 (hex) of the signed release header bytes.
    public var header: String
    /// True when every file of the release was verified at the last check.
    public var complete: Bool
    /// HTTP port of the peer server.
    public var port: Int
    /// The release before it, of which the files the last upgrade replaced are kept.
    public var previous: HeldSummary?

    public init(product: String, version: String, sequence: UInt64, header: String, complete: Bool, port: Int) {
        self.product = product
        self.version = version
        self.sequence = sequence
        self.header = header
        self.complete = complete
        self.port = port
    }

    /// The datagram form (compact JSON; always below ``PeerWire/maxDatagram``).
    public func encoded() -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return [UInt8]((try? encoder.encode(self)) ?? Data())
    }

    /// Nil unless `bytes` is a well-formed announcement with sane fields.
    public init?(datagram bytes: some Collection<UInt8>) {
        guard bytes.count <= PeerWire.maxDatagram,
            let decoded = try? JSONDecoder().decode(PeerAnnouncement.self, from: Data(bytes)),
            decoded.type == Self.typeName, (1...65535).contains(decoded.port),
            decoded.header.count == 64, decoded.header.allSatisfy(\.isHexDigit),
            decoded.product.utf8.count <= 128, decoded.version.utf8.count <= 64
        else { return nil }
        self = decoded
    }
}

/// A release named in an announcement.
public struct HeldSummary: Codable, Sendable, Hashable {
    public var version: String
    public var sequence: UInt64
    public var header: String

    public init(version: String, sequence: UInt64, header: String) {
        self.version = version
        self.sequence = sequence
        self.header = header
    }
}

/// A request for announcements, sent to the group (or to a peer's announce port); peers answer
/// by unicast to the sender.
public struct PeerQuery: Codable, Sendable {
    public static let typeName = "upgrade-peer-query/1"
    public var type = PeerQuery.typeName
    public var product: String?

    public init(product: String?) { self.product = product }
}

/// Constants and paths of the peer protocol.
public enum PeerWire {
    /// Largest datagram read or sent; anything larger is dropped unread.
    public static let maxDatagram = 1200
    /// The default multicast group and port for announcements (organisation-local scope).
    public static let defaultGroup = "239.255.77.77:7072"
    /// The default HTTP port of `upgrade share`.
    public static let defaultPort = 7071

    /// `GET`: the announcement as JSON (the unicast way to ask a peer what it holds).
    public static let announcementPath = "/v1/peer"

    /// `GET`: the signed header (or canonical manifest) of a release the peer holds.
    public static func releasePath(header: String, file: String) -> String { "/v1/peer/releases/\(header)/\(file)" }

    /// `GET`: the bytes of a file whose content has this SHA-256, uncompressed.
    public static func objectPath(_ sha: String) -> String { "/v1/peer/objects/\(sha)" }
    /// A root of trust the peer holds (the chain it verified), by version.
    public static func rootPath(_ version: UInt64) -> String { "/v1/peer/roots/\(version).json" }

    public static func isQuery(_ bytes: some Collection<UInt8>) -> Bool {
        // Cheap test first: a flood of announcements should cost little to turn away.
        let marker = Array("-query".utf8)
        let raw = Array(bytes)
        guard raw.count <= 256, raw.count >= marker.count,
            (0...(raw.count - marker.count)).contains(where: { raw[$0..<($0 + marker.count)].elementsEqual(marker) }),
            let query = try? JSONDecoder().decode(PeerQuery.self, from: Data(bytes))
        else { return false }
        return query.type == PeerQuery.typeName
    }

    public static func query(product: String?) -> [UInt8] {
        [UInt8]((try? JSONEncoder().encode(PeerQuery(product: product))) ?? Data())
    }
}
