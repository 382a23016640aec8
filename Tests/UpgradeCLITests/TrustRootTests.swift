import Crypto
import Foundation
import Testing
import UpgradeCore
import UpgradeRepository
import UpgradeTestSupport
import UpgradeTrust

#if canImport(Glibc)
import Glibc
#endif

/// A repository with a root of trust: `k` (the fixture's publisher key) signs releases and
/// channel records, `root` signs roots; clients are given `roots/1.json` once.
final class TrustFixture {
    let sync: SyncFixture
    var fixture: ApplyFixture { sync.fixture }
    var repo: String { sync.repo }
    var anchor: String { repo + "/roots/1.json" }

    init(threshold: Int = 1, rootKeys: Int = 1) throws {
        sync = try SyncFixture(releases: 1)
        var arguments = ["root", "init", "--repo", sync.repo, "--release-key", sync.fixture.pub]
        for index in 0..<rootKeys {
            try keygen("root\(index)")
            arguments += ["--key", key("root\(index)")]
        }
        arguments += ["--threshold", String(threshold)]
        let made = try Upgrade.run(arguments)
        #expect(made.status == 0, "\(made.stderr)")
        #expect(FileManager.default.fileExists(atPath: anchor), "\(made.text)")
    }

    func key(_ name: String) -> String { fixture.work.path("keys/\(name)") }

    @discardableResult
    func keygen(_ name: String) throws -> String {
        try FileManager.default.createDirectory(atPath: fixture.work.path("keys"), withIntermediateDirectories: true)
        #expect(try Upgrade.run(["keygen", "--output", key(name)]).status == 0)
        return try KeyFiles.loadPrivate(key(name)).publicKey.keyID
    }

    var publisherKeyID: String { (try? KeyFiles.loadPrivate(fixture.key).publicKey.keyID) ?? "" }

    func sync(_ server: ServerProcess, root: String, _ extra: [String] = []) throws -> CommandResult {
        try Upgrade.run(
            ["sync", "--server", server.url, "--product", fixture.product, "--root", root, "--trust", anchor] + extra
        )
    }

    func publish(_ version: Int, key: String, repo: String? = nil) throws -> CommandResult {
        try Upgrade.run([
            "publish", "--repo", repo ?? self.repo, "--product", fixture.product, "--version", "\(version).0", "--key",
            key, "--level", "3", sync.trees[version - 1].root,
        ])
    }

    /// Rotates the root: `arguments` after `root rotate --repo REPO`.
    func rotate(_ arguments: [String]) throws -> CommandResult {
        try Upgrade.run(["root", "rotate", "--repo", repo] + arguments)
    }
}

@Suite("Root of trust: rotation, revocation, thresholds", .serialized)
struct TrustRootTests {
    @Test("a leaked key: clients took its release (sequence 2^62); a root rotation alone recovers them")
    func leakedKeyRecovery() async throws {
        let trust = try TrustFixture()
        let server = try ServerProcess(repo: trust.repo)
        let root = trust.fixture.work.path("client")
        #expect(try trust.sync(server, root: root).status == 0)
        try await trust.sync.expect(root, equals: 1, "first install")

        // The attacker holds the publisher key: a copy of the repository with a 2.0 whose header
        // and channel record claim sequence 2^62, served by a server of its own.
        let evil = trust.fixture.work.path("evil")
        #expect(try runProgram("/bin/cp", ["-a", trust.repo, evil]).status == 0)
        #expect(try trust.publish(2, key: trust.fixture.key, repo: evil).status == 0)
        let leaked = try KeyFiles.loadPrivate(trust.fixture.key)
        let layout = RepositoryLayout(root: evil)
        var header = try ReleaseHeader(
            unverified: SignedEnvelope(
                encoded: [UInt8](try Data(contentsOf: URL(fileURLWithPath: layout.header("app", "2.0"))))
            )
        )
        header.sequence = 1 << 62
        let headerBytes = header.signed(with: leaked).encoded()
        try Data(headerBytes).write(to: URL(fileURLWithPath: layout.header("app", "2.0")))
        var record = try ChannelRecord(
            unverified: SignedEnvelope(
                encoded: [UInt8](try Data(contentsOf: URL(fileURLWithPath: layout.channel("app", "stable"))))
            )
        )
        record.releaseSequence = 1 << 62
        record.sequence = 1 << 62
        record.headerSHA256 = SHA256Hash(bytes: Array(SHA256.hash(data: headerBytes)))!.hex
        try Data(record.signed(with: leaked).encoded()).write(to: URL(fileURLWithPath: layout.channel("app", "stable")))
        let evilServer = try ServerProcess(repo: evil)
        let taken = try trust.sync(evilServer, root: root)
        #expect(taken.status == 0, "the leaked key was trusted then: \(taken.stderr)")
        try await trust.sync.expect(root, equals: 2, "the attacker's release")

        // Before any rotation the legitimate next release cannot win: the floors are 2^62.
        #expect(try trust.publish(3, key: trust.fixture.key).status == 0)
        let stuck = try trust.sync(server, root: root)
        #expect(stuck.status == 4, "\(stuck.stderr)")

        // The publisher revokes the leaked key and names a new one; re-publishes 3.0 with it.
        let newKeyID = try trust.keygen("release2")
        let rotated = try Upgrade.run([
            "root", "revoke", "--repo", trust.repo, "--key", trust.key("root0"), "--release-key",
            trust.key("release2") + ".pub", "--channel-key", trust.key("release2") + ".pub", trust.publisherKeyID,
        ])
        #expect(rotated.status == 0 && rotated.text.contains("root 2 published"), "\(rotated.text)\(rotated.stderr)")
        let republished = try trust.publish(3, key: trust.key("release2"))
        #expect(republished.status == 0 && republished.text.contains("signed again"), "\(republished.text)")

        let recovered = try trust.sync(server, root: root)
        #expect(recovered.status == 0, "\(recovered.stderr)")
        try await trust.sync.expect(root, equals: 3, "after the rotation")
        #expect(FileManager.default.fileExists(atPath: root + "/.upgrade/roots/2.json"))

        // The revoked key's release is refused from now on, whoever serves it.
        let refused = try trust.sync(evilServer, root: root)
        #expect(refused.status == 4, "\(refused.stderr)")
        #expect(refused.stderr.contains("untrusted key") || refused.stderr.contains("signature"), "\(refused.stderr)")
        try await trust.sync.expect(root, equals: 3, "after the refused release")
        // The old key can no longer publish into the repository either.
        let old = try trust.publish(3, key: trust.fixture.key)
        #expect(old.status == 5 && old.stderr.contains("not a release key"), "\(old.stderr)")
        _ = newKeyID
    }

    @Test("a root signed below its threshold is refused by clients; it waits as a draft until signed enough")
    func threshold() async throws {
        let trust = try TrustFixture(threshold: 2, rootKeys: 3)
        let server = try ServerProcess(repo: trust.repo)
        let root = trust.fixture.work.path("client")
        #expect(try trust.sync(server, root: root).status == 0)
        try trust.keygen("release2")
        let partial = try trust.rotate([
            "--key", trust.key("root0"), "--release-key", trust.key("release2") + ".pub", "--channel-key",
            trust.key("release2") + ".pub",
        ])
        #expect(partial.status == 0 && partial.text.contains("draft"), "\(partial.text)\(partial.stderr)")
        #expect(!FileManager.default.fileExists(atPath: trust.repo + "/roots/2.json"))
        // A mirror or server that serves the under-signed draft as root 2 is not believed.
        #expect(try trust.publish(2, key: trust.fixture.key).status == 0)
        try FileManager.default.copyItem(atPath: trust.repo + "/roots/draft.json", toPath: trust.repo + "/roots/2.json")
        let refused = try trust.sync(server, root: root)
        #expect(refused.status == 4 && refused.stderr.contains("1 valid signature of the 2"), "\(refused.stderr)")
        try await trust.sync.expect(root, equals: 1, "refused root")
        try FileManager.default.removeItem(atPath: trust.repo + "/roots/2.json")

        let signed = try Upgrade.run(["root", "sign", "--repo", trust.repo, "--key", trust.key("root1")])
        #expect(signed.status == 0 && signed.text.contains("root 2 published"), "\(signed.text)\(signed.stderr)")
        #expect(try trust.publish(2, key: trust.key("release2")).status == 0)
        let accepted = try trust.sync(server, root: root)
        #expect(accepted.status == 0, "\(accepted.stderr)")
        try await trust.sync.expect(root, equals: 2, "after the rotation")
    }

    @Test("rolled-back, expired and spliced roots are refused")
    func badRoots() async throws {
        let trust = try TrustFixture()
        let server = try ServerProcess(repo: trust.repo)
        let root = trust.fixture.work.path("client")
        #expect(try trust.sync(server, root: root).status == 0)
        let rootKey = try KeyFiles.loadPrivate(trust.key("root0"))
        let current = try RootDocument(
            unverified: SignedEnvelope(encoded: [UInt8](try Data(contentsOf: URL(fileURLWithPath: trust.anchor))))
        )
        let path = trust.repo + "/roots/2.json"
        func serve(_ envelope: SignedEnvelope) throws -> CommandResult {
            try Data(envelope.encoded()).write(to: URL(fileURLWithPath: path))
            return try trust.sync(server, root: root)
        }
        // Version 1 again where 2 must come (a rolled-back root served as the next one).
        var same = current
        same.expires += 10
        let replayed = try serve(same.signed(with: [rootKey]))
        #expect(replayed.status == 4 && replayed.stderr.contains("root version 1 where 2"), "\(replayed.stderr)")
        // Signatures of a real root 2 pasted onto another root 2's payload.
        var honest = current
        honest.version = 2
        let genuine = honest.signed(with: [rootKey])
        var forged = honest
        let attacker = PrivateKey()
        forged.keys[attacker.publicKey.keyID] = attacker.publicKey.text
        forged.roles[.release] = .init(keyids: [attacker.publicKey.keyID], threshold: 1)
        let spliced = try SignedEnvelope(
            encoded: Array(
                String(decoding: genuine.encoded(), as: UTF8.self).replacingOccurrences(
                    of: Data(honest.signed(with: []).payload).base64EncodedString(),
                    with: Data(forged.signed(with: []).payload).base64EncodedString()
                ).utf8
            )
        )
        let mixed = try serve(spliced)
        #expect(mixed.status == 4 && mixed.stderr.contains("does not match"), "\(mixed.stderr)")
        #expect(!FileManager.default.fileExists(atPath: root + "/.upgrade/roots/2.json"))
        // An expired root 2, validly signed: taken into the chain, but nothing verifies under
        // it until the publisher signs a newer root (a frozen repository is not believed).
        var expired = current
        expired.version = 2
        expired.expires = Timestamps.now() - 60
        let stale = try serve(expired.signed(with: [rootKey]))
        #expect(stale.status == 4 && stale.stderr.contains("root 2 expired"), "\(stale.stderr)")
        try await trust.sync.expect(root, equals: 1, "after every bad root")
    }

    @Test(
        "publish refuses a key the root does not authorize (exit 5, nothing written); re-publish repairs a bad signature"
    )
    func publishKeys() async throws {
        // Without a root (any key is accepted), a wrong key broke clients; publishing again
        // with the right key repairs the release.
        let sync = try SyncFixture(releases: 1)
        let server = try ServerProcess(repo: sync.repo)
        let root = sync.fixture.work.path("client")
        #expect(try sync.sync(server, root: root).status == 0)
        let wrong = sync.fixture.work.path("wrong")
        #expect(try Upgrade.run(["keygen", "--output", wrong]).status == 0)
        let publish = { (key: String) in
            try Upgrade.run([
                "publish", "--repo", sync.repo, "--product", "app", "--version", "2.0", "--key", key, "--level", "3",
                sync.trees[1].root,
            ])
        }
        #expect(try publish(wrong).status == 0)
        #expect(try sync.sync(server, root: root).status == 4)
        let repaired = try publish(sync.fixture.key)
        #expect(repaired.status == 0 && repaired.text.contains("signed again"), "\(repaired.text)")
        let fixed = try sync.sync(server, root: root)
        #expect(fixed.status == 0, "\(fixed.stderr)")
        try await sync.expect(root, equals: 2, "after the repair")

        // With a root: the wrong key is refused before anything is written.
        let trust = try TrustFixture()
        let before = try FileManager.default.subpathsOfDirectory(atPath: trust.repo).sorted()
        let refused = try trust.publish(2, key: wrong)
        #expect(
            refused.status == 5 && refused.stderr.contains("not a release key of the repository's root 1"),
            "\(refused.stderr)"
        )
        #expect(try FileManager.default.subpathsOfDirectory(atPath: trust.repo).sorted() == before)
    }

    @Test(
        "clients given bare keys keep working when a root appears; a root 1 signed by their key takes them onto the chain"
    )
    func bareKeyClients() async throws {
        // A root whose root key is a separate key: bare-key clients are not on its chain and
        // go on with their key (which root 1 still authorizes for releases).
        let separate = try TrustFixture()
        let server = try ServerProcess(repo: separate.repo)
        let root = separate.fixture.work.path("bare")
        #expect(try separate.sync.sync(server, root: root).status == 0)
        #expect(try separate.publish(2, key: separate.fixture.key).status == 0)
        let kept = try separate.sync.sync(server, root: root)
        #expect(kept.status == 0, "\(kept.stderr)")
        try await separate.sync.expect(root, equals: 2, "a bare-key client after a root appeared")

        // Root 1 signed by the key the clients were given: they walk onto the chain and follow
        // a later rotation to a new release key.
        let sync = try SyncFixture(releases: 1)
        let chained = sync.fixture.work.path("chained")
        let first = try ServerProcess(repo: sync.repo)
        #expect(try sync.sync(first, root: chained).status == 0)
        let made = try Upgrade.run([
            "root", "init", "--repo", sync.repo, "--key", sync.fixture.key, "--release-key", sync.fixture.pub,
        ])
        #expect(made.status == 0, "\(made.stderr)")
        let next = sync.fixture.work.path("next")
        #expect(try Upgrade.run(["keygen", "--output", next]).status == 0)
        let rotated = try Upgrade.run([
            "root", "rotate", "--repo", sync.repo, "--key", sync.fixture.key, "--release-key", next + ".pub",
            "--channel-key", next + ".pub",
        ])
        #expect(rotated.status == 0, "\(rotated.stderr)")
        let published = try Upgrade.run([
            "publish", "--repo", sync.repo, "--product", "app", "--version", "2.0", "--key", next, "--level", "3",
            sync.trees[1].root,
        ])
        #expect(published.status == 0, "\(published.stderr)")
        let followed = try sync.sync(first, root: chained)
        #expect(followed.status == 0, "\(followed.stderr)")
        try await sync.expect(chained, equals: 2, "a bare-key client after a rotation")
    }

    @Test("root commands refuse what they cannot do (exit 5) and verify-repo checks releases against the newest root")
    func rootCommands() throws {
        let trust = try TrustFixture()
        let again = try Upgrade.run([
            "root", "init", "--repo", trust.repo, "--key", trust.key("root0"), "--release-key", trust.fixture.pub,
        ])
        #expect(again.status == 5 && again.stderr.contains("roots/1.json already exists"), "\(again.stderr)")
        let noDraft = try Upgrade.run(["root", "sign", "--repo", trust.repo, "--key", trust.key("root0")])
        #expect(noDraft.status == 5 && noDraft.stderr.contains("no draft root"), "\(noDraft.stderr)")
        let bare = trust.fixture.work.path("bare-repo")
        let missing = try Upgrade.run(["root", "rotate", "--repo", bare, "--key", trust.key("root0")])
        #expect(missing.status == 3 && missing.stderr.contains("is not a repository"), "\(missing.stderr)")
        #expect(!FileManager.default.fileExists(atPath: bare))
        #expect(try trust.publish(1, key: trust.fixture.key, repo: bare).status == 0)
        let noRoot = try Upgrade.run(["root", "rotate", "--repo", bare, "--key", trust.key("root0")])
        #expect(noRoot.status == 5 && noRoot.stderr.contains("no root of trust"), "\(noRoot.stderr)")
        // Revoking the only release key without a replacement would leave the role empty.
        let empty = try Upgrade.run([
            "root", "revoke", "--repo", trust.repo, "--key", trust.key("root0"), trust.publisherKeyID,
        ])
        #expect(empty.status == 5 && empty.stderr.contains("fewer than its threshold"), "\(empty.stderr)")
        #expect(!FileManager.default.fileExists(atPath: trust.repo + "/roots/2.json"))

        let verified = try Upgrade.run(["verify-repo", "--repo", trust.repo, "--trust", trust.anchor])
        #expect(verified.status == 0, "\(verified.text)\(verified.stderr)")
        try trust.keygen("release2")
        #expect(
            try trust.rotate([
                "--key", trust.key("root0"), "--release-key", trust.key("release2") + ".pub", "--channel-key",
                trust.key("release2") + ".pub",
            ]).status == 0
        )
        // 1.0 is signed by a key root 2 no longer authorizes: reported until it is re-published.
        let stale = try Upgrade.run(["verify-repo", "--repo", trust.repo, "--trust", trust.anchor])
        #expect(stale.status == 4 && stale.text.contains("releases/app/1.0/header"), "\(stale.text)")
        #expect(
            try Upgrade.run([
                "publish", "--repo", trust.repo, "--product", "app", "--version", "1.0", "--key", trust.key("release2"),
                "--level", "3", trust.sync.trees[0].root,
            ]).status == 0
        )
        let clean = try Upgrade.run(["verify-repo", "--repo", trust.repo, "--trust", trust.anchor])
        #expect(clean.status == 0, "\(clean.text)\(clean.stderr)")
    }

    @Test("a rotation reaches clients through a mirror, a bundle and a LAN peer")
    func rotationEverywhere() async throws {
        let trust = try TrustFixture()
        let server = try ServerProcess(repo: trust.repo)
        let viaMirror = trust.fixture.work.path("mirror-client")
        let viaBundle = trust.fixture.work.path("bundle-client")
        let sharer = trust.fixture.work.path("sharer")
        let viaPeer = trust.fixture.work.path("peer-client")
        for root in [viaMirror, viaBundle, sharer, viaPeer] { #expect(try trust.sync(server, root: root).status == 0) }
        // Root 2: the release and channel key is replaced; 2.0 is signed by the new key only.
        try trust.keygen("release2")
        let rotated = try trust.rotate([
            "--key", trust.key("root0"), "--release-key", trust.key("release2") + ".pub", "--channel-key",
            trust.key("release2") + ".pub",
        ])
        #expect(rotated.status == 0, "\(rotated.stderr)")
        #expect(try trust.publish(2, key: trust.key("release2")).status == 0)

        let mirror = try HostileMirror(directory: trust.repo, [])
        defer { mirror.stop() }
        let mirrored = try trust.sync(server, root: viaMirror, ["--mirror", mirror.url])
        #expect(mirrored.status == 0, "\(mirrored.stderr)")
        #expect(mirror.requested.contains("/roots/2.json"), "\(mirror.requested)")
        try await trust.sync.expect(viaMirror, equals: 2, "through the mirror")

        let bundle = trust.fixture.work.path("2.bundle")
        #expect(
            try Upgrade.run([
                "bundle", "--repo", trust.repo, "--product", "app", "--from", "1.0", "--to", "2.0", "--output", bundle,
            ]).status == 0
        )
        let applied = try Upgrade.run(["apply", "--root", viaBundle, "--trust", trust.anchor, bundle])
        #expect(applied.status == 0, "\(applied.stderr)")
        try await trust.sync.expect(viaBundle, equals: 2, "through the bundle")

        // The sharer upgrades from the server (and so holds roots 1 and 2); the server stops;
        // the last client gets root 2 and the release from the sharer alone.
        #expect(try trust.sync(server, root: sharer).status == 0)
        server.process.terminate()
        server.process.waitUntilExit()
        let share = try ListeningProcess([
            Upgrade.binary, "share", "--root", sharer, "--listen", "127.0.0.1:0", "--announce", "off", "--log-level",
            "error",
        ])
        defer { share.stop() }
        let offline = try Upgrade.run([
            "sync", "--product", "app", "--root", viaPeer, "--trust", trust.anchor, "--offline", "--peers",
            share.hostPort,
        ])
        #expect(offline.status == 0, "\(offline.stderr)")
        try await trust.sync.expect(viaPeer, equals: 2, "through the peer")
        #expect(FileManager.default.fileExists(atPath: viaPeer + "/.upgrade/roots/2.json"))
    }
}
