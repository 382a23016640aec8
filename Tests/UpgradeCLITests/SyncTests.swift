import Crypto
import Foundation
import Testing
import UpgradeCore
import UpgradeProtocol
import UpgradeRepository
import UpgradeTestSupport
import UpgradeTrust

#if canImport(Glibc)
import Glibc
#endif

/// `upgrade serve` as a subprocess on 127.0.0.1 port 0.
final class ServerProcess {
    let server: ListeningProcess
    var url: String { server.url }
    var process: Process { server.process }
    var pid: Int32 { process.processIdentifier }

    /// `umask`, when given, is set for the server (through /bin/sh) before it starts.
    init(repo: String, umask: Int? = nil, extra: [String] = []) throws {
        let command =
            [Upgrade.binary, "serve", "--repo", repo, "--listen", "127.0.0.1:0", "--log-level", "error"] + extra
        if let umask {
            server = try ListeningProcess(
                ["/bin/sh", "-c", "umask \(String(umask, radix: 8)); exec \"$0\" \"$@\""] + command
            )
        } else {
            server = try ListeningProcess(command)
        }
    }
}

/// A repository with three releases of a small app and a server for it.
final class SyncFixture {
    let fixture: ApplyFixture
    let trees: [TemporaryTree]
    var repo: String { fixture.repo }

    init(releases: Int = 3, bigFile: Bool = false) throws {
        fixture = try ApplyFixture()
        var trees = [TemporaryTree]()
        for version in 1...3 {
            let tree = try TemporaryTree()
            try tree.file("bin/app", "#!/bin/sh\necho v\(version)\n", mode: 0o755)
            try tree.file("lib/core.so", noise(20_000, seed: 7) + noise(500, seed: UInt64(version)))
            try tree.file("share/v\(version).txt", "only in \(version)")
            try tree.file("share/common.txt", "shared by every release")
            if bigFile { try tree.file("data/big.bin", noise(3 << 20, seed: UInt64(100 + version))) }
            trees.append(tree)
        }
        self.trees = trees
        for version in 1...releases { try publish(version) }
    }

    func publish(_ version: Int) throws {
        try fixture.publish("\(version).0", trees[version - 1].root)
    }

    func sync(_ server: ServerProcess, root: String, _ extra: [String] = []) throws -> CommandResult {
        try Upgrade.run(
            ["sync", "--server", server.url, "--product", fixture.product, "--root", root, "--trust", fixture.pub]
                + extra
        )
    }

    func expect(_ root: String, equals version: Int, _ context: String = "") async throws {
        let tree = try await ApplyFixture.scan(root)
        let expected = try await ApplyFixture.scan(trees[version - 1].root)
        let equal = tree == expected
        #expect(equal, "\(context): tree differs from \(version).0 at \(tree.differingPaths(from: expected).prefix(5))")
    }
}

@Suite("upgrade serve and sync", .serialized)
struct SyncTests {
    @Test("fresh install, v1 -> v2 -> v3, v1 -> v3 directly, repair of local changes, silent no-op, dry run")
    func endToEnd() async throws {
        let sync = try SyncFixture(releases: 1)
        let server = try ServerProcess(repo: sync.repo)
        let a = sync.fixture.work.path("a")

        let first = try sync.sync(server, root: a)
        #expect(first.status == 0, "\(first.stderr)")
        try await sync.expect(a, equals: 1, "fresh install")

        let b = sync.fixture.work.path("b")
        #expect(try sync.sync(server, root: b).status == 0)

        try sync.publish(2)
        #expect(try sync.sync(server, root: a).status == 0)
        try await sync.expect(a, equals: 2, "v1 -> v2")
        try sync.publish(3)
        #expect(try sync.sync(server, root: a).status == 0)
        try await sync.expect(a, equals: 3, "v2 -> v3")

        // b is still at 1.0: straight to 3.0, as JSON.
        let direct = try sync.sync(server, root: b, ["--json"])
        #expect(direct.status == 0)
        let report = try #require(try JSONSerialization.jsonObject(with: direct.stdout) as? [String: Any])
        #expect(report["fromVersion"] as? String == "1.0")
        #expect(report["toVersion"] as? String == "3.0")
        #expect(report["result"] as? String == "installed")
        try await sync.expect(b, equals: 3, "v1 -> v3")

        // A no-op prints nothing and exits 0.
        let noop = try sync.sync(server, root: a)
        #expect(noop.status == 0)
        #expect(noop.text.isEmpty && noop.stderr.isEmpty, "\(noop.text)\(noop.stderr)")
        // The no-op read the installed manifest and recorded its scan fingerprint beside it:
        // the next run compares fingerprints instead of reading the manifest.
        let current = try String(contentsOfFile: a + "/.upgrade/current", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let fingerprint = try String(contentsOfFile: a + "/.upgrade/state/\(current)/fingerprint", encoding: .utf8)
        #expect(fingerprint == (try await ApplyFixture.scan(a)).scanFingerprint)
        #expect(try sync.sync(server, root: a).status == 0)

        // Local damage is repaired: modified, deleted and added files.
        try "tampered".write(toFile: a + "/share/common.txt", atomically: false, encoding: .utf8)
        try FileManager.default.removeItem(atPath: a + "/bin/app")
        try "stray".write(toFile: a + "/stray.txt", atomically: false, encoding: .utf8)
        #expect(try Upgrade.run(["verify", "--root", a]).status == 4)
        let dry = try sync.sync(server, root: a, ["--dry-run"])
        #expect(dry.status == 0)
        #expect(dry.text.contains("nothing was changed"))
        #expect(FileManager.default.fileExists(atPath: a + "/stray.txt"))
        let repair = try sync.sync(server, root: a)
        #expect(repair.status == 0, "\(repair.stderr)")
        try await sync.expect(a, equals: 3, "repair")
    }

    @Test(
        "a lying server is refused with a documented exit code and the tree unchanged",
        arguments: [
            ("extra-file", Int32(4)), ("wrong-hash", 4), ("tamper-object", 4), ("truncate-object", 4),
            ("endless-object", 4),
        ]
    )
    func lyingServer(fault: String, expected: Int32) async throws {
        let sync = try SyncFixture(releases: 1)
        let honest = try ServerProcess(repo: sync.repo)
        let root = sync.fixture.work.path("root")
        #expect(try sync.sync(honest, root: root).status == 0)
        try sync.publish(2)
        let liar = try ServerProcess(repo: sync.repo, extra: ["--fault", fault])
        let result = try sync.sync(liar, root: root)
        #expect(result.status == expected, "\(fault): \(result.stderr)")
        #expect(
            result.stderr.contains("nothing was changed") || result.stderr.contains("verification failed"),
            "\(result.stderr)"
        )
        try await sync.expect(root, equals: 1, fault)
        #expect(!FileManager.default.fileExists(atPath: root + "/planted-by-server"))
        guard fault == "tamper-object" else { return }
        // The error document names the object, where it came from, and what it decoded to.
        let json = try sync.sync(liar, root: root, ["--json"])
        #expect(json.status == 4)
        let document = try #require(try JSONSerialization.jsonObject(with: json.stdout) as? [String: Any])
        let payload = try #require(document["payload"] as? [String: Any], "\(document)")
        let expected = try #require(payload["sha256"] as? String)
        #expect(expected.count == 64)
        #expect((payload["source"] as? String)?.hasSuffix("/objects/\(expected.prefix(2))/\(expected)") == true)
        #expect(payload["decodedSHA256"] as? String != expected, "\(payload)")
        #expect((payload["attempts"] as? Int ?? 0) >= 1, "\(payload)")
    }

    @Test("an older signed release and an expired channel record are refused (exit 4)")
    func replayAndFreeze() async throws {
        let sync = try SyncFixture(releases: 1)
        let channel = sync.repo + "/channels/app/stable"
        let oldChannel = try Data(contentsOf: URL(fileURLWithPath: channel))
        try sync.publish(2)
        let server = try ServerProcess(repo: sync.repo)
        let root = sync.fixture.work.path("root")
        #expect(try sync.sync(server, root: root).status == 0)
        try await sync.expect(root, equals: 2)

        // Replay the 1.0 channel record (validly signed, older).
        try oldChannel.write(to: URL(fileURLWithPath: channel))
        let replay = try sync.sync(server, root: root)
        #expect(replay.status == 4, "\(replay.stderr)")
        try await sync.expect(root, equals: 2, "replay")

        // A channel record past its expiry (signed with the real key).
        let key = try KeyFiles.loadPrivate(sync.fixture.key)
        let header = try Data(contentsOf: URL(fileURLWithPath: sync.repo + "/releases/app/2.0/header"))
        let expired = ChannelRecord(
            product: "app",
            channel: "stable",
            version: "2.0",
            releaseSequence: 2,
            headerSHA256: SHA256Hash.ofBytes([UInt8](header)),
            sequence: 99,
            created: Timestamps.now() - 7200,
            expires: Timestamps.now() - 3600
        )
        try Data(expired.signed(with: key).encoded()).write(to: URL(fileURLWithPath: channel))
        let frozen = try sync.sync(server, root: root)
        #expect(frozen.status == 4, "\(frozen.stderr)")
        #expect(frozen.stderr.contains("expired"))
    }

    @Test("a TOML config file carries every flag; unknown keys and missing values are usage errors (exit 2)")
    func configFile() async throws {
        let sync = try SyncFixture(releases: 2)
        let server = try ServerProcess(repo: sync.repo)
        let root = sync.fixture.work.path("root")
        let config = sync.fixture.work.path("app.toml")
        try """
        # cron-friendly: everything in one file
        server = "\(server.url)"
        product = "app"   # the product
        root = '\(root)'
        trust = ["\(sync.fixture.pub)"]
        lock-timeout = 30
        """.write(toFile: config, atomically: true, encoding: .utf8)
        let result = try Upgrade.run(["sync", "--config", config])
        #expect(result.status == 0, "\(result.stderr)")
        try await sync.expect(root, equals: 2, "config")
        #expect(try Upgrade.run(["sync", "--config", config]).text.isEmpty)

        try "server = \"\(server.url)\"\nprodcut = \"app\"\n".write(toFile: config, atomically: true, encoding: .utf8)
        let typo = try Upgrade.run(["sync", "--config", config])
        #expect(typo.status == 2)
        #expect(typo.stderr.contains("unknown keys prodcut"))
        let missing = try Upgrade.run(["sync", "--server", server.url])
        #expect(missing.status == 2)
    }

    @Test("a download cut mid-object resumes with Range; bytes received stay below size plus one buffer")
    func resume() async throws {
        let sync = try SyncFixture(releases: 1, bigFile: true)
        let server = try ServerProcess(repo: sync.repo, extra: ["--fault", "cut-object"])
        let root = sync.fixture.work.path("root")
        let result = try sync.sync(server, root: root, ["--json"])
        #expect(result.status == 0, "\(result.stderr)")
        try await sync.expect(root, equals: 1, "resume")
        let report = try #require(try JSONSerialization.jsonObject(with: result.stdout) as? [String: Any])
        let received = try #require(report["bytesDownloaded"] as? Int)
        let needed = try #require(report["bytesToDownload"] as? Int)
        #expect((report["resumedDownloads"] as? Int ?? 0) >= 1)
        #expect(received < needed + 128 * 1024, "received \(received) for \(needed)")
        print(
            "resume: \(received) bytes received for \(needed) bytes of payloads, \(report["resumedDownloads"] ?? 0) resumed"
        )
    }
}

extension SHA256Hash {
    static func ofBytes(_ bytes: [UInt8]) -> SHA256Hash {
        SHA256Hash(bytes: Array(Crypto.SHA256.hash(data: bytes)))!
    }
}
