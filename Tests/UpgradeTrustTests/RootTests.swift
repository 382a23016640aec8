import Foundation
import Testing
import UpgradeCore
import UpgradeTrust

/// Roots of trust without a disk: thresholds, rotation, revocation, the checks on the chain.
@Suite("Roots of trust")
struct RootTests {
    static let now: Int64 = 1_800_000_000
    static let rootKeys = (0..<3).map { _ in PrivateKey() }
    static let release = PrivateKey()
    static let channel = PrivateKey()

    /// Root `version`: root role = `rootKeys` with `threshold`, release and channel one key each.
    static func root(
        _ version: UInt64,
        rootKeys: [PrivateKey] = rootKeys,
        threshold: Int = 2,
        release: PrivateKey = release,
        expires: Int64 = now + 1000
    ) -> RootDocument {
        RootDocument(
            version: version,
            expires: expires,
            keys: rootKeys.map(\.publicKey) + [release.publicKey, channel.publicKey],
            roles: [
                .root: .init(keyids: rootKeys.map(\.publicKey.keyID), threshold: threshold),
                .release: .init(keyids: [release.publicKey.keyID], threshold: 1),
                .channel: .init(keyids: [channel.publicKey.keyID], threshold: 1),
            ]
        )
    }

    static func header(signedBy keys: [PrivateKey]) -> SignedEnvelope {
        ReleaseHeader(
            product: "myapp",
            version: "1.0.0",
            sequence: 1,
            platform: "linux-x86_64",
            created: now,
            expires: now + 1000,
            entries: 0,
            totalSize: 0,
            manifestSHA256: Manifest.empty.digest
        ).signed(with: keys)
    }

    @Test("an anchor needs a threshold of its own root keys; a mix of other roots' signatures does not count")
    func anchor() throws {
        let root = Self.root(1)
        #expect(try RootDocument.verifyAnchor(root.signed(with: Array(Self.rootKeys.prefix(2)))) == root)
        #expect(throws: TrustError.belowThreshold(what: "root 1 (its own root keys)", valid: 1, threshold: 2)) {
            try RootDocument.verifyAnchor(root.signed(with: [Self.rootKeys[0]]))
        }
        // Signatures over another root's payload, pasted on: they do not verify.
        let other = Self.root(1, expires: Self.now + 5).signed(with: Array(Self.rootKeys.prefix(2)))
        let spliced = try SignedEnvelope(
            encoded: Array(
                String(decoding: other.encoded(), as: UTF8.self).replacingOccurrences(
                    of: Data(other.payload).base64EncodedString(),
                    with: Data(root.signed(with: []).payload).base64EncodedString()
                ).utf8
            )
        )
        #expect(throws: TrustError.self) { try RootDocument.verifyAnchor(spliced) }
    }

    @Test("the next root needs the old root's threshold and its own; versions move by exactly one")
    func rotation() throws {
        let current = Self.root(1)
        let newKeys = (0..<2).map { _ in PrivateKey() }
        let next = Self.root(2, rootKeys: newKeys, threshold: 2)
        let both = next.signed(with: Array(Self.rootKeys.prefix(2)) + newKeys)
        #expect(try current.verifyNext(both) == next)
        // Only the new keys: the old root did not agree.
        #expect(throws: TrustError.self) { try current.verifyNext(next.signed(with: newKeys)) }
        // Only the old keys: the new root's own threshold is missing.
        #expect(throws: TrustError.self) {
            try current.verifyNext(next.signed(with: Array(Self.rootKeys.prefix(2)) + [newKeys[0]]))
        }
        // A skipped or replayed version.
        #expect(throws: TrustError.rootVersion(expected: 2, found: 3)) {
            try current.verifyNext(Self.root(3).signed(with: Self.rootKeys))
        }
        #expect(throws: TrustError.rootVersion(expected: 2, found: 1)) {
            try current.verifyNext(Self.root(1).signed(with: Self.rootKeys))
        }
        // An expired newest root.
        #expect(throws: TrustError.self) { try Self.root(2, expires: Self.now - 1).checkExpiry(now: Self.now) }
        // Revocation is visible as the keys a role lost.
        let revoked = Self.root(2, release: PrivateKey())
        #expect(current.removed(.release, in: revoked) == [Self.release.publicKey.keyID])
    }

    @Test("release and channel documents are checked against their role's keys and threshold")
    func roles() throws {
        let trusted = TrustedKeys(root: Self.root(1))
        _ = try ReleaseHeader.verify(Self.header(signedBy: [Self.release]), trusted: trusted, now: Self.now)
        // A root key or the channel key cannot sign a release.
        #expect(throws: TrustError.self) {
            try ReleaseHeader.verify(Self.header(signedBy: [Self.channel]), trusted: trusted, now: Self.now)
        }
        #expect(throws: TrustError.self) {
            try ReleaseHeader.verify(Self.header(signedBy: [Self.rootKeys[0]]), trusted: trusted, now: Self.now)
        }
        // Two of two release keys.
        let second = PrivateKey()
        var strict = Self.root(1)
        strict.keys[second.publicKey.keyID] = second.publicKey.text
        strict.roles[.release] = .init(keyids: [Self.release.publicKey.keyID, second.publicKey.keyID], threshold: 2)
        let twoOfTwo = TrustedKeys(root: strict)
        #expect(throws: TrustError.belowThreshold(what: "release signature", valid: 1, threshold: 2)) {
            try ReleaseHeader.verify(Self.header(signedBy: [Self.release]), trusted: twoOfTwo, now: Self.now)
        }
        _ = try ReleaseHeader.verify(Self.header(signedBy: [Self.release, second]), trusted: twoOfTwo, now: Self.now)
        // The same key twice is one signature.
        #expect(throws: TrustError.self) {
            try ReleaseHeader.verify(
                Self.header(signedBy: [Self.release, Self.release]),
                trusted: twoOfTwo,
                now: Self.now
            )
        }
    }

    @Test("malformed roots are refused: a role over its key count, a key under a wrong id, a missing role")
    func malformed() {
        var root = Self.root(1)
        root.roles[.release]?.threshold = 2
        #expect(root.problem?.contains("fewer than its threshold") == true)
        root = Self.root(1)
        root.keys["0000000000000000"] = Self.release.publicKey.text
        #expect(root.problem?.contains("not the id") == true)
        root = Self.root(1)
        root.roles[.channel] = nil
        #expect(root.problem == "no channel role")
    }
}
