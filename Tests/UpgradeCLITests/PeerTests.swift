import Foundation
import Testing
import UpgradeTestSupport

#if canImport(Glibc)
import Glibc
#endif

@Suite("LAN peers: upgrade share and sync --peers", .serialized)
struct PeerTests {
    /// Server with 1.0 and 2.0, peer A at 2.0 sharing, client B at 1.0 syncing: most payload
    /// bytes come from A. Then the server stops and client C upgrades from A alone, offline.
    func threeMachines(server serverMachine: Machine, a: Machine, b: Machine, c: Machine) async throws {
        let peers = try PeerFixture()
        let server = try serverMachine.start([
            "serve", "--repo", peers.sync.repo, "--listen", "\(serverMachine.address):0", "--log-level", "error",
        ])
        let rootA = peers.fixture.work.path("a")
        let first = try a.run([
            "sync", "--server", server.url, "--product", peers.fixture.product, "--root", rootA, "--trust",
            peers.fixture.pub,
        ])
        #expect(first.status == 0, "\(first.stderr)")
        let share = try peers.share(rootA, on: a)

        let rootB = try peers.root("b", at: 1)
        let (synced, report) = try peers.syncWithPeers(rootB, on: b, server: server.url)
        #expect(synced.status == 0, "\(synced.stderr)")
        try await peers.sync.expect(rootB, equals: 2, "B after sync with peer A")
        let fromPeers = number(report, "bytesFromPeers")
        let payload = number(report, "bytesDownloaded")
        #expect(fromPeers > 0 && fromPeers * 2 > payload, "peer bytes \(fromPeers) of \(payload)")
        #expect(peerList(report).first?["status"] as? String == "used", "\(peerList(report))")
        print(
            "three machines: B received \(payload) payload bytes, \(fromPeers) from peer A, \(payload - fromPeers) from the server; \(number(report, "bytesReceived")) bytes in all"
        )

        // The server goes away; C upgrades from A alone.
        server.stop()
        let rootC = try peers.root("c", at: 1)
        let (offline, offlineReport) = try peers.syncWithPeers(
            rootC,
            on: c,
            server: nil,
            ["--offline", "--peers", "auto"]
        )
        #expect(offline.status == 0, "\(offline.stderr)")
        try await peers.sync.expect(rootC, equals: 2, "C after an offline sync from A")
        #expect(number(offlineReport, "bytesFromPeers") > 0)
        #expect(number(offlineReport, "bytesFromPeers") == number(offlineReport, "bytesDownloaded"))
        #expect(try c.run(["verify", "--root", rootC]).status == 0)
        share.stop()
    }

    @Test("three machines on loopback (multicast pinned to 127.0.0.1)")
    func threeMachinesOnLoopback() async throws {
        if let why = NamespaceLAN.unavailable {
            print("network namespaces cannot be made here (\(why)); only the loopback variant runs")
        }
        try await threeMachines(server: .loopback, a: .loopback, b: .loopback, c: .loopback)
    }

    @Test(
        "three machines in network namespaces on a bridge the test creates",
        .enabled(if: NamespaceLAN.unavailable == nil)
    )
    func threeMachinesInNamespaces() async throws {
        let lan = try NamespaceLAN(machines: 4)
        try await threeMachines(server: lan.machine(1), a: lan.machine(2), b: lan.machine(3), c: lan.machine(4))
    }

    @Test("hostile peers: a wrong byte, a stall, an unknown key, a flood; B still ends at 2.0 from the server")
    func hostilePeers() async throws {
        let peers = try PeerFixture(bigFile: true)
        let server = try ServerProcess(repo: peers.sync.repo)
        let held = try peers.root("held", at: 2)
        let wrong = try peers.share(held, on: .loopback, ["--fault", "wrong-byte"])
        let stall = try peers.share(held, on: .loopback, ["--fault", "stall"])
        let flood = try peers.share(held, on: .loopback, ["--fault", "flood"])

        // 2.0 of the same product, signed by a key B does not trust.
        let other = try ApplyFixture()
        try other.publish("2.0", peers.sync.trees[1].root)
        let foreignRoot = other.work.path("foreign")
        #expect(try other.apply(try other.bundle(from: nil, to: "2.0"), root: foreignRoot).status == 0)
        let foreign = try peers.share(foreignRoot, on: .loopback)

        // Baseline memory: the same sync without peers.
        let quiet = try peers.root("quiet", at: 1)
        let baseline = try runProgram(
            "/usr/bin/time",
            [
                "-f", "%M", Upgrade.binary, "sync", "--server", server.url, "--product", peers.fixture.product,
                "--root", quiet, "--trust", peers.fixture.pub,
            ]
        )
        #expect(baseline.status == 0, "\(baseline.stderr)")

        let rootB = try peers.root("b", at: 1)
        let result = try runProgram(
            "/usr/bin/time",
            [
                "-f", "%M", Upgrade.binary, "sync", "--server", server.url, "--product", peers.fixture.product,
                "--root",
                rootB, "--trust", peers.fixture.pub, "--json", "--peers", "auto", "--announce", peers.group,
                "--interface", "127.0.0.1", "--peer-wait", "2", "--peer-timeout", "2",
            ]
        )
        #expect(result.status == 0, "\(result.stderr)")
        try await peers.sync.expect(rootB, equals: 2, "B with hostile peers")
        let report = try #require(try JSONSerialization.jsonObject(with: result.stdout) as? [String: Any])
        let outcomes = Dictionary(
            peerList(report).map { ($0["url"] as? String ?? "", $0["status"] as? String ?? "") },
            uniquingKeysWith: { first, _ in first }
        )
        #expect(outcomes[wrong.url]?.contains("do not match the signed SHA-256") == true, "\(outcomes)")
        #expect(outcomes[stall.url]?.hasPrefix("dropped: stalled") == true, "\(outcomes)")
        #expect(outcomes[flood.url]?.hasPrefix("dropped: flooded announcements") == true, "\(outcomes)")
        #expect(outcomes[foreign.url]?.contains("fails verification") == true, "\(outcomes)")
        // What the bad peers sent did not count: the rest came from the server.
        #expect(number(report, "bytesDownloaded") > number(report, "bytesFromPeers"))

        // Memory stays bounded under thousands of announcements a second.
        func peakKiB(_ stderr: String) -> Int {
            Int(stderr.split(separator: "\n").last?.trimmingCharacters(in: .whitespaces) ?? "") ?? Int.max
        }
        let quietPeak = peakKiB(baseline.stderr)
        let floodedPeak = peakKiB(result.stderr)
        for (url, status) in outcomes.sorted(by: { $0.key < $1.key }) { print("hostile peers: \(url) \(status)") }
        print("hostile peers: peak RSS \(floodedPeak) KiB with the flood, \(quietPeak) KiB without peers")
        #expect(floodedPeak < quietPeak + 64 * 1024, "peak RSS \(floodedPeak) KiB vs \(quietPeak) KiB")
        _ = (wrong, stall, flood, foreign)
    }

    @Test(
        "a peer serves only verified files of its releases: paths, ../, unknown hashes, changed files and symlinks get 404"
    )
    func peerServesOnlyVerifiedFiles() async throws {
        let peers = try PeerFixture()
        let server = try ServerProcess(repo: peers.sync.repo)
        let root = try peers.root("a", at: 1)
        #expect(try peers.sync.sync(server, root: root).status == 0)
        let outside = try TemporaryTree()
        try outside.file("secret.txt", "shared by every release")  // the content of share/common.txt
        try "a stray file".write(toFile: root + "/stray.txt", atomically: false, encoding: .utf8)
        let traced = peers.fixture.work.path("share.strace")
        let share = try ListeningProcess([
            "/usr/bin/strace", "-f", "-qq", "-e", "trace=open,openat", "-o", traced, Upgrade.binary, "share", "--root",
            root, "--listen", "127.0.0.1:0", "--announce", "off", "--log-level", "error",
        ])

        func get(_ path: String) throws -> (Int, String) {
            let result = try runProgram(
                "/usr/bin/curl",
                ["-s", "--path-as-is", "-o", "-", "-w", "\n%{http_code}", share.url + path]
            )
            let lines = result.text.split(separator: "\n", omittingEmptySubsequences: false)
            return (Int(lines.last ?? "") ?? 0, lines.dropLast().joined(separator: "\n"))
        }
        func sha(_ text: String) throws -> String {
            let result = try runProgram("/bin/sh", ["-c", "printf %s \"$1\" | sha256sum", "sh", text])
            return String(result.text.prefix(64))
        }
        let common = try sha("shared by every release")
        let (okStatus, body) = try get("/v1/peer/objects/\(common)")
        #expect(okStatus == 200 && body == "shared by every release", "the control request must work")
        #expect(try get("/v1/peer/objects/\(try sha("a stray file"))").0 == 404, "a file outside the release")
        #expect(try get("/v1/peer/objects/\(String(repeating: "ab", count: 32))").0 == 404, "an unknown hash")
        #expect(try get("/v1/peer/objects/../../../../etc/passwd").0 == 404)
        #expect(try get("/v1/peer/objects/..%2F..%2Fetc%2Fpasswd").0 == 404)
        #expect(try get("/v1/peer/releases/../../../etc/passwd").0 == 404)
        #expect(try get("/etc/passwd").0 == 404)
        #expect(try get("/v1/peer/objects/share/common.txt").0 == 404, "paths are not names")
        let statcache = try runProgram("/bin/sh", ["-c", "sha256sum \"$1\"/.upgrade/statcache", "sh", root])
        #expect(try get("/v1/peer/objects/\(statcache.text.prefix(64))").0 == 404, "the state directory")

        // The release file swapped for a symlink to an outside file with the same bytes: not followed.
        unlink(root + "/share/common.txt")
        symlink(outside.path("secret.txt"), root + "/share/common.txt")
        #expect(try get("/v1/peer/objects/\(common)").0 == 404)
        // A release file changed in place is verified again and refused.
        let core = try runProgram("/bin/sh", ["-c", "sha256sum \"$1\"/lib/core.so", "sh", root])
        let coreSHA = String(core.text.prefix(64))
        #expect(try get("/v1/peer/objects/\(coreSHA)").0 == 200)
        let handle = try #require(FileHandle(forWritingAtPath: root + "/lib/core.so"))
        try handle.seek(toOffset: 10)
        handle.write(Data("changed".utf8))
        try handle.close()
        #expect(try get("/v1/peer/objects/\(coreSHA)").0 == 404)
        // Stop the traced share itself (strace would detach and leave it running).
        var log = try String(contentsOfFile: traced, encoding: .utf8)
        if let pid = log.split(separator: " ").first.flatMap({ Int32($0) }) { kill(pid, SIGTERM) }
        share.stop()
        log = try String(contentsOfFile: traced, encoding: .utf8)
        #expect(!log.contains("/etc/passwd"), "the share opened /etc/passwd")
        #expect(!log.contains(outside.root), "the share opened a file outside the root")
        #expect(!log.contains("stray.txt"), "the share opened a file outside the release")
    }

    @Test("a peer keeps the previous release's replaced files: a neighbour goes back to 1.0 from the LAN")
    func restoreFromPeer() async throws {
        let peers = try PeerFixture()
        let server = try ServerProcess(repo: peers.sync.repo)
        let rootA = try peers.root("a", at: 1)
        #expect(try peers.sync.sync(server, root: rootA).status == 0)  // 1.0 -> 2.0 keeps 1.0's replaced files
        server.process.terminate()
        server.process.waitUntilExit()
        let share = try peers.share(rootA, on: .loopback)
        let rootD = try peers.root("d", at: 2)

        let refused = try Upgrade.run([
            "sync", "--product", peers.fixture.product, "--root", rootD, "--trust", peers.fixture.pub, "--offline",
            "--peers", share.hostPort, "--version", "1.0",
        ])
        #expect(refused.status == 5, "a downgrade needs --allow-downgrade: \(refused.stderr)")
        try await peers.sync.expect(rootD, equals: 2, "refused downgrade")

        let restored = try Upgrade.run([
            "sync", "--product", peers.fixture.product, "--root", rootD, "--trust", peers.fixture.pub, "--offline",
            "--peers", share.hostPort, "--version", "1.0", "--allow-downgrade", "--json",
        ])
        #expect(restored.status == 0, "\(restored.stderr)")
        try await peers.sync.expect(rootD, equals: 1, "restored from the peer's kept files")
        let report = try #require(try JSONSerialization.jsonObject(with: restored.stdout) as? [String: Any])
        #expect(number(report, "bytesFromPeers") > 0)

        // Sharing without the previous release: 1.0 is not offered.
        share.stop()
        let bare = try peers.share(rootA, on: .loopback, ["--no-previous"])
        let none = try Upgrade.run([
            "sync", "--product", peers.fixture.product, "--root", rootD, "--trust", peers.fixture.pub, "--offline",
            "--peers", bare.hostPort, "--version", "2.0",
        ])
        #expect(none.status == 0, "2.0 is A's installed release: \(none.stderr)")
        let missing = try Upgrade.run([
            "sync", "--product", peers.fixture.product, "--root", rootA, "--trust", peers.fixture.pub, "--offline",
            "--peers", bare.hostPort, "--version", "1.0", "--allow-downgrade",
        ])
        #expect(missing.status == 10 && missing.stderr.contains("no peer offers"), "\(missing.stderr)")
    }

    @Test("a share announces its root's new release as soon as the root is upgraded, not an interval later")
    func followsUpgrades() async throws {
        let peers = try PeerFixture()
        let server = try ServerProcess(repo: peers.sync.repo)
        let root = try peers.root("shared", at: 1)
        // An hour between looks: only the state directory's change can make it see 2.0 in time.
        let share = try Machine.loopback.start([
            "share", "--root", root, "--listen", "127.0.0.1:0", "--announce", "off", "--interval", "3600",
            "--log-level", "warning",
        ])
        func announced() throws -> String? {
            let result = try runProgram("/usr/bin/curl", ["-s", share.url + "/v1/peer"])
            let document = try? JSONSerialization.jsonObject(with: Data(result.text.utf8)) as? [String: Any]
            return document?["version"] as? String
        }
        #expect(try announced() == "1.0")
        let upgraded = try peers.sync.sync(server, root: root)
        #expect(upgraded.status == 0, "\(upgraded.stderr)")
        var version: String?
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            version = try announced()
            if version == "2.0" { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(version == "2.0", "the share still announces \(version ?? "nothing"): \(share.stderr)")
    }

    @Test("where multicast does not pass: share --peer pushes announcements by unicast, sync --peers HOST:PORT pulls")
    func unicastAnnouncements() async throws {
        let peers = try PeerFixture()
        let server = try ServerProcess(repo: peers.sync.repo)
        let held = try peers.root("held", at: 2)
        let port = Int(peers.group.split(separator: ":").last!)!
        // No multicast at all: announcements go to the client's announce port by unicast.
        let share = try Machine.loopback.start([
            "share", "--root", held, "--listen", "127.0.0.1:0", "--announce", "off", "--peer", "127.0.0.1:\(port)",
            "--interval", "0.5", "--log-level", "warning",
        ])
        let pushed = try peers.root("pushed", at: 1)
        let (result, report) = try peers.syncWithPeers(
            pushed,
            on: .loopback,
            server: server.url,
            ["--peer-wait", "1.5"]
        )
        #expect(result.status == 0, "\(result.stderr)")
        #expect(number(report, "bytesFromPeers") > 0, "\(peerList(report))")
        #expect(peerList(report).first?["url"] as? String == share.url)
        try await peers.sync.expect(pushed, equals: 2, "after unicast announcements")

        let pulled = try peers.root("pulled", at: 1)
        let (listed, listedReport) = try peers.syncWithPeers(
            pulled,
            on: .loopback,
            server: server.url,
            ["--peers", share.hostPort]
        )
        #expect(listed.status == 0, "\(listed.stderr)")
        #expect(number(listedReport, "bytesFromPeers") > 0, "\(peerList(listedReport))")
        try await peers.sync.expect(pulled, equals: 2, "after asking the listed peer")
    }

    @Test("--peers off never opens a UDP socket; auto does; bad peer flags are usage errors that change nothing")
    func optInAndBadInput() async throws {
        let peers = try PeerFixture()
        let server = try ServerProcess(repo: peers.sync.repo)
        func udpSockets(_ mode: String, root: String) throws -> Int {
            let log = peers.fixture.work.path("strace-\(mode)")
            let result = try runProgram(
                "/usr/bin/strace",
                [
                    "-f", "-qq", "-e", "trace=socket", "-o", log, Upgrade.binary, "sync", "--server", server.url,
                    "--product", peers.fixture.product, "--root", root, "--trust", peers.fixture.pub, "--peers", mode,
                    "--announce", peers.group, "--interface", "127.0.0.1", "--peer-wait", "0.3",
                ]
            )
            #expect(result.status == 0, "\(result.stderr)")
            let text = try String(contentsOfFile: log, encoding: .utf8)
            return text.split(separator: "\n").filter { $0.contains("SOCK_DGRAM") }.count
        }
        #expect(try udpSockets("off", root: try peers.root("off", at: 1)) == 0)
        #expect(try udpSockets("auto", root: try peers.root("auto", at: 1)) >= 2)

        let root = try peers.root("bad", at: 1)
        let base = [
            "sync", "--server", server.url, "--product", peers.fixture.product, "--root", root, "--trust",
            peers.fixture.pub,
        ]
        for (extra, message) in [
            (["--peers", "sideways"], "expected off, auto or HOST:PORT"),
            (["--offline"], "--offline needs peers"),
            (["--peers", "auto", "--interface", "nosuch9"], "no such interface"),
            (["--peers", "auto", "--announce", "10.1.2.3:7072", "--interface", "127.0.0.1"], "not a multicast group"),
        ] {
            let result = try Upgrade.run(base + extra)
            #expect(result.status == 2, "\(extra): \(result.status) \(result.stderr)")
            #expect(result.stderr.contains(message), "\(extra): \(result.stderr)")
        }
        try await peers.sync.expect(root, equals: 1, "after refused flags")

        let empty = try TemporaryTree()
        let nothing = try Upgrade.run(["share", "--root", empty.root, "--listen", "127.0.0.1:0", "--announce", "off"])
        #expect(nothing.status == 3 && nothing.stderr.contains("nothing is installed"), "\(nothing.stderr)")
        let badInterface = try Upgrade.run([
            "share", "--root", root, "--listen", "127.0.0.1:0", "--interface", "nosuch9",
        ])
        #expect(badInterface.status == 2, "\(badInterface.stderr)")
    }
}
