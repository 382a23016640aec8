import Foundation
import Testing
import UpgradeCore
import UpgradeTrust

@Suite("Signatures and trust")
struct TrustTests {
    static let key = PrivateKey()
    static let other = PrivateKey()
    static let now: Int64 = 1_800_000_000

    static func header(sequence: UInt64 = 3, expires: Int64 = now + 1000) -> ReleaseHeader {
        ReleaseHeader(
            product: "myapp",
            version: "1.2.0",
            sequence: sequence,
            platform: "linux-x86_64",
            created: now - 10,
            expires: expires,
            entries: 0,
            totalSize: 0,
            manifestSHA256: Manifest.empty.digest
        )
    }

    @Test("a signed header verifies with the signer's key and checks its manifest")
    func headerRoundTrip() throws {
        let envelope = Self.header().signed(with: Self.key)
        let decoded = try SignedEnvelope(encoded: envelope.encoded())
        let header = try ReleaseHeader.verify(decoded, trusted: TrustedKeys([Self.key.publicKey]), now: Self.now)
        #expect(header == Self.header())
        try header.check(.empty)
        let other = try Manifest(entries: [.directory("x")])
        #expect(throws: TrustError.self) { try header.check(other) }
    }

    @Test("an untrusted signer, a tampered payload and a tampered signature are rejected")
    func rejections() throws {
        let envelope = Self.header().signed(with: Self.other)
        #expect(throws: TrustError.untrustedKey(keyIDs: [Self.other.publicKey.keyID])) {
            try ReleaseHeader.verify(envelope, trusted: TrustedKeys([Self.key.publicKey]), now: Self.now)
        }
        let good = Self.header().signed(with: Self.key)
        var text = String(decoding: good.encoded(), as: UTF8.self)
        // Re-sign a different payload under the original signature: bump the sequence.
        let payload = String(decoding: good.payload, as: UTF8.self).replacingOccurrences(
            of: "\"sequence\":3",
            with: "\"sequence\":9"
        )
        text = text.replacingOccurrences(
            of: Data(good.payload).base64EncodedString(),
            with: Data(payload.utf8).base64EncodedString()
        )
        let tampered = try SignedEnvelope(encoded: Array(text.utf8))
        #expect(throws: TrustError.badSignature(keyID: Self.key.publicKey.keyID)) {
            try ReleaseHeader.verify(tampered, trusted: TrustedKeys([Self.key.publicKey]), now: Self.now)
        }
        var signatureBytes = good.signatures[0].sig
        signatureBytes[5] ^= 1
        let badSignature = try SignedEnvelope(
            encoded: Array(
                String(decoding: good.encoded(), as: UTF8.self)
                    .replacingOccurrences(
                        of: Data(good.signatures[0].sig).base64EncodedString(),
                        with: Data(signatureBytes).base64EncodedString()
                    ).utf8
            )
        )
        #expect(throws: TrustError.badSignature(keyID: Self.key.publicKey.keyID)) {
            try ReleaseHeader.verify(badSignature, trusted: TrustedKeys([Self.key.publicKey]), now: Self.now)
        }
    }

    @Test("several trusted keys allow rotation")
    func rotation() throws {
        let trusted = TrustedKeys([Self.key.publicKey, Self.other.publicKey])
        _ = try ReleaseHeader.verify(Self.header().signed(with: Self.other), trusted: trusted, now: Self.now)
        _ = try ReleaseHeader.verify(Self.header().signed(with: Self.key), trusted: trusted, now: Self.now)
    }

    @Test("a channel record signature cannot pass as a header")
    func typeSeparation() throws {
        let record = ChannelRecord(
            product: "myapp",
            channel: "stable",
            version: "1.2.0",
            releaseSequence: 3,
            headerSHA256: Manifest.empty.digest,
            sequence: 1,
            created: Self.now,
            expires: Self.now + 100
        )
        let envelope = record.signed(with: Self.key)
        #expect(throws: TrustError.wrongType(expected: ReleaseHeader.envelopeType, found: ChannelRecord.envelopeType)) {
            try ReleaseHeader.verify(envelope, trusted: TrustedKeys([Self.key.publicKey]), now: Self.now)
        }
    }

    @Test("expiry and sequence are checked against an injected clock and the last seen sequence")
    func expiryAndSequence() throws {
        let trusted = TrustedKeys([Self.key.publicKey])
        let record = ChannelRecord(
            product: "myapp",
            channel: "stable",
            version: "1.2.0",
            releaseSequence: 3,
            headerSHA256: Manifest.empty.digest,
            sequence: 7,
            created: Self.now,
            expires: Self.now + 100
        ).signed(with: Self.key)
        _ = try ChannelRecord.verify(record, trusted: trusted, now: Self.now + 99)
        #expect(
            throws: TrustError.expired(what: "channel myapp/stable", expiredAt: Self.now + 100, now: Self.now + 100)
        ) {
            try ChannelRecord.verify(record, trusted: trusted, now: Self.now + 100)
        }
        #expect(throws: TrustError.sequenceTooLow(what: "channel myapp/stable", sequence: 7, minimum: 8)) {
            try ChannelRecord.verify(record, trusted: trusted, now: Self.now, minimumSequence: 8)
        }
        #expect(throws: TrustError.self) {
            try ReleaseHeader.verify(
                Self.header(sequence: 2).signed(with: Self.key),
                trusted: trusted,
                now: Self.now,
                minimumSequence: 3
            )
        }
        #expect(throws: TrustError.self) {
            try ReleaseHeader.verify(
                Self.header(expires: Self.now).signed(with: Self.key),
                trusted: trusted,
                now: Self.now
            )
        }
    }

    @Test("public keys round-trip through their text form; garbage is rejected")
    func keyText() throws {
        let text = Self.key.publicKey.text
        #expect(text.hasPrefix("ed25519:"))
        #expect(try PublicKey(text: text + "\n") == Self.key.publicKey)
        #expect(throws: KeyError.self) { try PublicKey(text: "ed25519:AAAA") }
        #expect(throws: KeyError.self) { try PublicKey(text: "ssh-ed25519 AAAA") }
        let reloaded = try PrivateKey(text: Self.key.text)
        #expect(reloaded.publicKey == Self.key.publicKey)
    }

    @Test(
        "versions order by semantic versioning",
        arguments: [
            ("1.0.0", "1.0.1"), ("1.9.0", "1.10.0"), ("1.0.0-alpha", "1.0.0"), ("1.0.0-alpha", "1.0.0-alpha.1"),
            ("1.0.0-alpha.1", "1.0.0-alpha.beta"), ("1.0.0-beta.2", "1.0.0-beta.11"), ("1.0.0-rc.1", "1.0.0"),
            ("1.2", "1.2.1"),
        ]
    )
    func versionOrder(lower: String, higher: String) throws {
        let a = try #require(Version(lower))
        let b = try #require(Version(higher))
        #expect(a < b)
        #expect(!(b < a))
    }

    @Test("invalid versions are rejected", arguments: ["", "1.", "01.2.3", "1.2.3.4", "1.2.3-", "../x", "1/2", "v1.2"])
    func invalidVersions(text: String) {
        #expect(Version(text) == nil)
    }

    @Test("build metadata does not change precedence")
    func buildMetadata() throws {
        #expect(try #require(Version("1.2.3+abc")) == (try #require(Version("1.2.3+def"))))
    }
}
