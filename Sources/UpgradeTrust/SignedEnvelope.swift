import Foundation
import UpgradeCore

/// A signed document: a payload kept as the exact bytes that were signed, its type, and one or
/// more signatures. Verifiers check the signatures over those bytes before decoding anything,
/// so no re-encoding ambiguity can creep in (the DSSE approach).
///
/// Each signature covers `upgrade-signature/1\n<type>\n<payload>`, so a signature on a channel
/// record can never pass as one on a release header.
public struct SignedEnvelope: Hashable, Sendable {
    /// What the payload is, e.g. `upgrade-release-header/1`.
    public let type: String
    /// The signed bytes (compact JSON).
    public let payload: [UInt8]
    /// Signatures by key id.
    public let signatures: [Signature]

    /// One signature.
    public struct Signature: Hashable, Sendable, Codable {
        /// ``PublicKey/keyID`` of the signer.
        public let keyid: String
        /// The Ed25519 signature bytes.
        public let sig: [UInt8]
    }

    /// Signs `payload` of `type` with `key`.
    public init(type: String, payload: [UInt8], signedWith key: PrivateKey) {
        self.type = type
        self.payload = payload
        signatures = [
            Signature(keyid: key.publicKey.keyID, sig: key.signature(for: Self.message(type: type, payload: payload)))
        ]
    }

    init(type: String, payload: [UInt8], signatures: [Signature]) {
        self.type = type
        self.payload = payload
        self.signatures = signatures
    }

    static func message(type: String, payload: [UInt8]) -> [UInt8] {
        Array("upgrade-signature/1\n\(type)\n".utf8) + payload
    }

    /// The file form: JSON with the payload and signatures in base64.
    public func encoded() -> [UInt8] {
        let file = EnvelopeFile(
            type: type,
            payload: Data(payload).base64EncodedString(),
            signatures: signatures.map { .init(keyid: $0.keyid, sig: Data($0.sig).base64EncodedString()) }
        )
        return [UInt8](JSON.encode(file)) + [0x0a]
    }

    /// Parses the file form.
    public init(encoded bytes: [UInt8]) throws(TrustError) {
        guard let file = try? JSONDecoder().decode(EnvelopeFile.self, from: Data(bytes)) else {
            throw .malformed("not a signed envelope (JSON with type, payload, signatures)")
        }
        guard let payload = Data(base64Encoded: file.payload) else { throw .malformed("payload is not base64") }
        var signatures = [Signature]()
        for signature in file.signatures {
            guard let sig = Data(base64Encoded: signature.sig) else { throw .malformed("signature is not base64") }
            signatures.append(Signature(keyid: signature.keyid, sig: [UInt8](sig)))
        }
        self.init(type: file.type, payload: [UInt8](payload), signatures: signatures)
    }
}

private struct EnvelopeFile: Codable {
    struct Signature: Codable {
        var keyid: String
        var sig: String
    }

    var type: String
    var payload: String
    var signatures: [Signature]
}

/// Why a signed document is not accepted.
public enum TrustError: Error, Hashable, Sendable, CustomStringConvertible {
    case malformed(String)
    case wrongType(expected: String, found: String)
    case untrustedKey(keyIDs: [String])
    case badSignature(keyID: String)
    case expired(what: String, expiredAt: Int64, now: Int64)
    case sequenceTooLow(what: String, sequence: UInt64, minimum: UInt64)
    case mismatch(String)
    case belowThreshold(what: String, valid: Int, threshold: Int)
    case rootVersion(expected: UInt64, found: UInt64)

    public var description: String {
        switch self {
        case .malformed(let why): "malformed signed document: \(why)"
        case .wrongType(let expected, let found): "signed document is a \(found), expected a \(expected)"
        case .untrustedKey(let ids):
            ids.isEmpty
                ? "signed document carries no signature"
                : "signed by untrusted key \(ids.joined(separator: ", ")), which the trusted root does not authorize for this (trust its key or root with --trust; a publisher re-publishes with an authorized key)"
        case .badSignature(let id): "signature by key \(id) does not match the document (tampered?)"
        case .expired(let what, let at, let now):
            "\(what) expired at \(Timestamps.iso(at)) (now \(Timestamps.iso(now))); the publisher must re-sign it"
        case .sequenceTooLow(let what, let sequence, let minimum):
            "\(what) has sequence \(sequence), lower than the \(minimum) already seen (rollback attempt?)"
        case .mismatch(let why): why
        case .belowThreshold(let what, let valid, let threshold):
            "\(what) carries \(valid) valid signature\(valid == 1 ? "" : "s") of the \(threshold) its trusted root requires"
        case .rootVersion(let expected, let found):
            "root version \(found) where \(expected) was expected (a root may only move forward by one)"
        }
    }
}

/// Seconds since the epoch, shown as ISO 8601.
public enum Timestamps {
    /// Now, in whole seconds.
    public static func now() -> Int64 { Int64(Date().timeIntervalSince1970) }

    /// `2026-11-21T05:00:00Z`.
    public static func iso(_ seconds: Int64) -> String {
        let formatter = ISO8601DateFormatter()
        return formatter.string(from: Date(timeIntervalSince1970: TimeInterval(seconds)))
    }
}
