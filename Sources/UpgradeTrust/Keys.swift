import Crypto
import Foundation
import UpgradeCore

/// A publisher's Ed25519 public key, in the text form that fits a config file or a flag:
/// `ed25519:<base64 of the 32 raw bytes>`.
public struct PublicKey: Hashable, Sendable, CustomStringConvertible {
    /// The raw 32 bytes.
    public let rawRepresentation: [UInt8]

    /// Wraps raw bytes; nil unless they are a valid Ed25519 public key.
    public init?(rawRepresentation: some Collection<UInt8>) {
        guard (try? Curve25519.Signing.PublicKey(rawRepresentation: Array(rawRepresentation))) != nil else {
            return nil
        }
        self.rawRepresentation = Array(rawRepresentation)
    }

    /// Parses the text form (surrounding whitespace ignored).
    public init(text: String) throws(KeyError) {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard trimmed.hasPrefix(Self.prefix),
            let data = Data(base64Encoded: String(trimmed.dropFirst(Self.prefix.count))),
            let key = PublicKey(rawRepresentation: [UInt8](data))
        else { throw trimmed.hasPrefix(PrivateKey.prefix) ? .privateKeyGiven : .malformedPublicKey }
        self = key
    }

    static let prefix = "ed25519:"

    /// `ed25519:<base64>`.
    public var text: String { Self.prefix + Data(rawRepresentation).base64EncodedString() }

    /// First 16 hex digits of the SHA-256 of the raw key: names the key in signatures and messages.
    public var keyID: String { String(SHA256Hash(bytes: Array(SHA256.hash(data: rawRepresentation)))!.hex.prefix(16)) }

    public var description: String { "key \(keyID)" }

    /// Checks `signature` over `message`.
    public func isValidSignature(_ signature: [UInt8], for message: [UInt8]) -> Bool {
        guard let key = try? Curve25519.Signing.PublicKey(rawRepresentation: rawRepresentation) else { return false }
        return key.isValidSignature(signature, for: message)
    }
}

/// A publisher's Ed25519 private key. The file form is one line,
/// `upgrade-ed25519-private:<base64 of the 32-byte seed>`, in a file of mode 0600.
public struct PrivateKey: Sendable {
    private let key: Curve25519.Signing.PrivateKey

    /// A new random key.
    public init() { key = Curve25519.Signing.PrivateKey() }

    /// Parses the file form.
    public init(text: String) throws(KeyError) {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard trimmed.hasPrefix(Self.prefix),
            let data = Data(base64Encoded: String(trimmed.dropFirst(Self.prefix.count))),
            let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: data)
        else { throw .malformedPrivateKey }
        self.key = key
    }

    static let prefix = "upgrade-ed25519-private:"

    /// The file form, with a trailing newline.
    public var text: String { Self.prefix + key.rawRepresentation.base64EncodedString() + "\n" }

    /// The matching public key.
    public var publicKey: PublicKey { PublicKey(rawRepresentation: key.publicKey.rawRepresentation)! }

    /// Signs `message`.
    public func signature(for message: [UInt8]) -> [UInt8] {
        // Ed25519 signing only fails on malformed keys, which the initializers exclude.
        [UInt8](try! key.signature(for: message))
    }
}

/// The set of keys a client or verifier trusts; several at once allow key rotation.
public struct TrustedKeys: Sendable {
    /// The root of trust: which keys sign what, with which thresholds.
    public let root: RootDocument

    /// Every key the root lists, by key id.
    public var keys: [String: PublicKey] {
        var result = [String: PublicKey]()
        for role in Role.allCases { result.merge(root.keys(for: role)) { first, _ in first } }
        return result
    }

    /// Trusts `keys` for every role, one signature enough (the implicit root 0).
    public init(_ keys: [PublicKey]) {
        root = .implicit(keys)
    }

    /// Trusts what `root` says.
    public init(root: RootDocument) {
        self.root = root
    }
}

/// A key that cannot be read.
public enum KeyError: Error, Hashable, Sendable, CustomStringConvertible {
    /// Never carries the text it was given: that might be a secret pasted in the wrong place,
    /// and errors end up in cron mail and logs.
    case malformedPublicKey
    /// A private key where a public key belongs.
    case privateKeyGiven
    case malformedPrivateKey

    public var description: String {
        switch self {
        case .malformedPublicKey:
            "not a public key (expected ed25519:<base64>, as written by `upgrade keygen` into KEY.pub)"
        case .privateKeyGiven:
            "this is a private key, not a public key: pass the .pub file `upgrade keygen` wrote beside it (and keep the private key secret)"
        case .malformedPrivateKey: "not a private key written by `upgrade keygen`"
        }
    }
}
