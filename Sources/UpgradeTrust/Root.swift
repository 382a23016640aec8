import Foundation

/// What a key may sign. A repository's root document lists the keys of each role and how many
/// of them must sign (the threshold).
public enum Role: String, Codable, CodingKeyRepresentable, CaseIterable, Sendable, Hashable {
    /// Signs root documents: the next root needs a threshold of the current root keys and of its own.
    case root
    /// Signs release headers (the offline key).
    case release
    /// Signs channel records (may be an online key, rotated more often).
    case channel
}

/// The signed root of trust of a repository (envelope type `upgrade-root/1`), in the manner of
/// TUF's root role: every key and role, a version that grows by one per rotation, and an
/// expiry. Clients start from a root they were given once and walk forward: root N+1 is
/// accepted only when signed by a threshold of root N's root keys and a threshold of its own.
public struct RootDocument: Codable, Hashable, Sendable, SignedDocument {
    public static let envelopeType = "upgrade-root/1"
    public static let role = Role.root

    /// Grows by one with every root.
    public var version: UInt64
    /// Seconds since the epoch; the newest root a client holds must not be past it.
    public var expires: Int64
    /// Public keys by key id (`ed25519:…` text).
    public var keys: [String: String]
    /// Keys and threshold per role.
    public var roles: [Role: Assignment]

    /// The keys of one role and how many must sign.
    public struct Assignment: Codable, Hashable, Sendable {
        public var keyids: [String]
        public var threshold: Int

        public init(keyids: [String], threshold: Int) {
            self.keyids = keyids.sorted()
            self.threshold = threshold
        }
    }

    public init(version: UInt64, expires: Int64, keys: [PublicKey], roles: [Role: Assignment]) {
        self.version = version
        self.expires = expires
        self.keys = Dictionary(keys.map { ($0.keyID, $0.text) }, uniquingKeysWith: { first, _ in first })
        self.roles = roles
    }

    /// The implicit root of clients given bare keys (`--trust ed25519:…`): version 0, every key
    /// in every role with threshold 1, never expiring. A repository's root 1 signed by one of
    /// these keys takes such a client onto the signed chain.
    public static func implicit(_ keys: [PublicKey]) -> RootDocument {
        let ids = keys.map(\.keyID)
        return RootDocument(
            version: 0,
            expires: .max,
            keys: keys,
            roles: Dictionary(uniqueKeysWithValues: Role.allCases.map { ($0, Assignment(keyids: ids, threshold: 1)) })
        )
    }

    /// The public keys of `role`.
    public func keys(for role: Role) -> [String: PublicKey] {
        var result = [String: PublicKey]()
        for id in roles[role]?.keyids ?? [] {
            if let text = keys[id], let key = try? PublicKey(text: text), key.keyID == id { result[id] = key }
        }
        return result
    }

    /// The threshold of `role` (a missing role can sign nothing).
    public func threshold(for role: Role) -> Int { roles[role]?.threshold ?? Int.max }

    /// Why this document is not a well-formed root, or nil.
    public var problem: String? {
        for (id, text) in keys {
            guard let key = try? PublicKey(text: text), key.keyID == id else {
                return "key \(id) is not the id of its key"
            }
        }
        for role in Role.allCases {
            guard let assignment = roles[role] else { return "no \(role.rawValue) role" }
            guard assignment.threshold >= 1 else { return "the \(role.rawValue) threshold is below 1" }
            guard Set(assignment.keyids).count == assignment.keyids.count else {
                return "the \(role.rawValue) role lists a key twice"
            }
            guard assignment.keyids.allSatisfy({ keys[$0] != nil }) else {
                return "the \(role.rawValue) role names a key the root does not list"
            }
            guard assignment.keyids.count >= assignment.threshold else {
                return
                    "the \(role.rawValue) role has \(assignment.keyids.count) keys, fewer than its threshold \(assignment.threshold)"
            }
        }
        return nil
    }

    /// The version is the sequence that must not go backwards.
    public var sequence: UInt64 { version }
    public var subject: String { "root \(version)" }

    /// Verifies that `envelope` is a trustworthy self-signed first root (a threshold of its
    /// own root keys): the check for a root given with `--trust`, where the file itself is the
    /// anchor.
    public static func verifyAnchor(_ envelope: SignedEnvelope) throws(TrustError) -> RootDocument {
        let root = try RootDocument(unverified: envelope)
        if let problem = root.problem { throw .malformed("root \(root.version): \(problem)") }
        _ = try envelope.verify(
            expectedType: envelopeType,
            keys: root.keys(for: .root),
            threshold: root.threshold(for: .root),
            what: "root \(root.version) (its own root keys)"
        )
        return root
    }

    /// Verifies `envelope` as the root after this one: version + 1, a threshold of this root's
    /// root keys, and a threshold of its own. Expiry is not checked here (an old root on the way
    /// to the newest may have expired); check the newest with ``checkExpiry(now:)``.
    public func verifyNext(_ envelope: SignedEnvelope) throws(TrustError) -> RootDocument {
        let next = try RootDocument(unverified: envelope)
        guard next.version == version + 1 else {
            throw .rootVersion(expected: version + 1, found: next.version)
        }
        if let problem = next.problem { throw .malformed("root \(next.version): \(problem)") }
        _ = try envelope.verify(
            expectedType: Self.envelopeType,
            keys: keys(for: .root),
            threshold: threshold(for: .root),
            what: "root \(next.version) (the root keys of root \(version))"
        )
        _ = try envelope.verify(
            expectedType: Self.envelopeType,
            keys: next.keys(for: .root),
            threshold: next.threshold(for: .root),
            what: "root \(next.version) (its own root keys)"
        )
        return next
    }

    /// Throws when this root has expired at `now`.
    public func checkExpiry(now: Int64) throws(TrustError) {
        guard now < expires else { throw .expired(what: "root \(version)", expiredAt: expires, now: now) }
    }

    /// The keys of `role` in `self` that `next` no longer has in that role: revoked keys whose
    /// signatures (and the sequence floors they set) no longer count.
    public func removed(_ role: Role, in next: RootDocument) -> Set<String> {
        Set(roles[role]?.keyids ?? []).subtracting(next.roles[role]?.keyids ?? [])
    }
}

/// What a rotation changes in a root: the keys of the roles named (the role's list is
/// replaced), thresholds, keys revoked from every role, the new expiry.
public struct RootChange: Sendable {
    public var keys: [Role: [PublicKey]] = [:]
    public var thresholds: [Role: Int] = [:]
    public var revoke: [String] = []
    public var expires: Int64

    public init(expires: Int64) { self.expires = expires }
}

extension RootDocument {
    /// The next root: version + 1 with `change` applied; keys no role uses any more leave it.
    public func next(_ change: RootChange) -> RootDocument {
        var next = self
        next.version = version + 1
        next.expires = change.expires
        for role in Role.allCases {
            var assignment = next.roles[role] ?? .init(keyids: [], threshold: 1)
            if let keys = change.keys[role], !keys.isEmpty {
                for key in keys { next.keys[key.keyID] = key.text }
                assignment = .init(keyids: keys.map(\.keyID), threshold: assignment.threshold)
            }
            if let threshold = change.thresholds[role] { assignment.threshold = threshold }
            assignment.keyids.removeAll { change.revoke.contains($0) }
            next.roles[role] = assignment
        }
        let used = Set(Role.allCases.flatMap { next.roles[$0]?.keyids ?? [] })
        next.keys = next.keys.filter { used.contains($0.key) && !change.revoke.contains($0.key) }
        return next
    }
}

extension SignedEnvelope {
    /// Signs `payload` of `type` with every key of `keys`.
    public init(type: String, payload: [UInt8], signedWith keys: [PrivateKey]) {
        let message = Self.message(type: type, payload: payload)
        var seen = Set<String>()
        var signatures = [Signature]()
        for key in keys where seen.insert(key.publicKey.keyID).inserted {
            signatures.append(Signature(keyid: key.publicKey.keyID, sig: key.signature(for: message)))
        }
        self.init(type: type, payload: payload, signatures: signatures)
    }

    /// This envelope with `key`'s signature added (or replaced).
    public func adding(signatureBy key: PrivateKey) -> SignedEnvelope {
        let id = key.publicKey.keyID
        let signature = Signature(keyid: id, sig: key.signature(for: Self.message(type: type, payload: payload)))
        return SignedEnvelope(
            type: type,
            payload: payload,
            signatures: signatures.filter { $0.keyid != id } + [signature]
        )
    }

    /// The key ids among `keys` whose signatures are valid.
    public func validSigners(among keys: [String: PublicKey]) -> Set<String> {
        let message = Self.message(type: type, payload: payload)
        var valid = Set<String>()
        for signature in signatures {
            if let key = keys[signature.keyid], key.isValidSignature(signature.sig, for: message) {
                valid.insert(signature.keyid)
            }
        }
        return valid
    }

    /// Checks that at least `threshold` distinct keys of `keys` signed validly; returns them.
    /// A signature by one of `keys` that does not verify means the document was altered.
    public func verify(
        expectedType: String,
        keys: [String: PublicKey],
        threshold: Int,
        what: String
    ) throws(TrustError) -> Set<String> {
        guard type == expectedType else { throw .wrongType(expected: expectedType, found: type) }
        let valid = validSigners(among: keys)
        if valid.count >= threshold { return valid }
        if let bad = signatures.first(where: { keys[$0.keyid] != nil && !valid.contains($0.keyid) }) {
            throw .badSignature(keyID: bad.keyid)
        }
        if valid.isEmpty {
            throw .untrustedKey(keyIDs: signatures.map(\.keyid).filter { keys[$0] == nil })
        }
        throw .belowThreshold(what: what, valid: valid.count, threshold: threshold)
    }
}
