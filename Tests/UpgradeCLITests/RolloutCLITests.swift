import Foundation
import Testing
import UpgradeCore
import UpgradeTestSupport
import UpgradeTrust

#if canImport(Glibc)
import Glibc
#endif

/// Rollout control from the publisher's side (`upgrade channel`) to what devices do.
@Suite("Rollouts", .serialized)
struct RolloutCLITests {
    static func report(_ result: CommandResult) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: result.stdout) as? [String: Any], "\(result.stderr)")
    }

    /// A device id whose bucket for `version` is below (or, with `inside` false, above) `percent`.
    static func device(for version: String, within percent: Int, inside: Bool = true) -> String {
        (0..<10_000).lazy.map { "device-\($0)" }.first { id in
            (Rollout.bucket(product: "app", version: version, device: id) < percent * 100) == inside
        }!
    }

    @Test(
        "phased rollout: held outside the percentage with 0 bytes, canary tags first, raising adds, pause and resume, a tampered record refused, a signed revert followed"
    )
    func phased() async throws {
        let sync = try SyncFixture(releases: 1)
        let server = try ServerProcess(repo: sync.repo)
        let key = sync.fixture.key
        func channel(_ arguments: [String]) throws {
            let result = try Upgrade.run(
                ["channel"] + arguments + ["--repo", sync.repo, "--product", "app", "--key", key]
            )
            #expect(result.status == 0, "channel \(arguments): \(result.stderr)")
        }
        let late = Self.device(for: "2.0", within: 50, inside: false)
        let middle = Self.device(for: "2.0", within: 50)
        let (a, b, c) = (sync.fixture.work.path("a"), sync.fixture.work.path("b"), sync.fixture.work.path("c"))
        for (root, id) in [(a, "canary-1"), (b, middle), (c, late)] {
            #expect(try sync.sync(server, root: root, ["--device-id", id]).status == 0)
        }

        try sync.fixture.publish("2.0", sync.trees[1].root, extra: ["--percent", "0"])
        let held = try sync.sync(server, root: b, ["--device-id", middle, "--json"])
        #expect(held.status == 0, "\(held.stderr)")
        let heldReport = try Self.report(held)
        #expect(heldReport["result"] as? String == "held", "\(heldReport)")
        #expect(heldReport["bytesDownloaded"] as? Int == 0)
        #expect((heldReport["reason"] as? String ?? "").contains("0%"), "\(heldReport)")
        try await sync.expect(b, equals: 1, "held at 0%")

        try channel(["set", "--canary", "canary"])
        #expect(try sync.sync(server, root: a, ["--device-id", "canary-1", "--tag", "canary"]).status == 0)
        try await sync.expect(a, equals: 2, "canary")
        #expect(try sync.sync(server, root: b, ["--device-id", middle]).status == 0)
        try await sync.expect(b, equals: 1, "not a canary, still 0%")

        try channel(["set", "--percent", "50"])
        #expect(try sync.sync(server, root: b, ["--device-id", middle]).status == 0)
        try await sync.expect(b, equals: 2, "inside 50%")
        #expect(try sync.sync(server, root: c, ["--device-id", late]).status == 0)
        try await sync.expect(c, equals: 1, "outside 50%")

        // A record whose percentage was changed without the channel key is refused.
        let recordPath = sync.repo + "/channels/app/stable"
        let signed = try Data(contentsOf: URL(fileURLWithPath: recordPath))
        var envelope = try #require(try JSONSerialization.jsonObject(with: signed) as? [String: Any])
        let payload = String(decoding: Data(base64Encoded: envelope["payload"] as! String)!, as: UTF8.self)
        #expect(payload.contains("\"percent\":50"), "\(payload)")
        envelope["payload"] = Data(payload.replacingOccurrences(of: "\"percent\":50", with: "\"percent\":100").utf8)
            .base64EncodedString()
        try JSONSerialization.data(withJSONObject: envelope).write(to: URL(fileURLWithPath: recordPath))
        let tampered = try sync.sync(server, root: c, ["--device-id", late])
        #expect(tampered.status == 4, "\(tampered.stderr)")
        try await sync.expect(c, equals: 1, "tampered record")
        try signed.write(to: URL(fileURLWithPath: recordPath))

        // Pause: nobody new; resume at 100%: everybody.
        try channel(["pause"])
        try channel(["set", "--percent", "100"])
        let paused = try Self.report(try sync.sync(server, root: c, ["--device-id", late, "--json"]))
        #expect(paused["result"] as? String == "held" && (paused["reason"] as? String ?? "").contains("paused"))
        try channel(["resume"])
        #expect(try sync.sync(server, root: c, ["--device-id", late]).status == 0)
        try await sync.expect(c, equals: 2, "resumed")

        // A signed revert: the channel goes back to 1.0 with a newer record; the old one is replayed.
        try sync.publish(3)
        #expect(try sync.sync(server, root: c, ["--device-id", late]).status == 0)
        try await sync.expect(c, equals: 3)
        let record3 = try Data(contentsOf: URL(fileURLWithPath: recordPath))
        try channel(["set", "--version", "1.0"])
        let reverted = try sync.sync(server, root: c, ["--device-id", late])
        #expect(reverted.status == 0, "\(reverted.stderr)")
        try await sync.expect(c, equals: 1, "revert")
        try record3.write(to: URL(fileURLWithPath: recordPath))
        let replay = try sync.sync(server, root: c, ["--device-id", late])
        #expect(replay.status == 4, "\(replay.stderr)")
        try await sync.expect(c, equals: 1, "replayed record")
    }

    @Test("--window outside the local time holds (nothing touched), inside installs; --random-delay; bad values exit 2")
    func maintenanceWindow() async throws {
        let sync = try SyncFixture(releases: 1)
        let server = try ServerProcess(repo: sync.repo)
        let root = sync.fixture.work.path("root")
        var now = time_t(Date().timeIntervalSince1970)
        var local = tm()
        localtime_r(&now, &local)
        let minute = Int(local.tm_hour) * 60 + Int(local.tm_min)
        func clock(_ offset: Int) -> String {
            let m = ((minute + offset) % 1440 + 1440) % 1440
            return String(format: "%02d:%02d", m / 60, m % 60)
        }
        let outside = try sync.sync(server, root: root, ["--window", "\(clock(60))-\(clock(120))", "--json"])
        #expect(outside.status == 0, "\(outside.stderr)")
        let report = try Self.report(outside)
        #expect(report["result"] as? String == "held" && (report["reason"] as? String ?? "").contains("window"))
        #expect(!FileManager.default.fileExists(atPath: root), "a held run created the root")
        let inside = try sync.sync(
            server,
            root: root,
            ["--window", "\(clock(-5))-\(clock(5))", "--random-delay", "0.2"]
        )
        #expect(inside.status == 0, "\(inside.stderr)")
        try await sync.expect(root, equals: 1)
        for bad in [["--window", "25:00-01:00"], ["--window", "nightly"], ["--random-delay", "-1"]] {
            let result = try sync.sync(server, root: root, bad)
            #expect(result.status == 2, "\(bad): \(result.stderr)")
        }
    }

    @Test("a signed pin holds a device (or a tag) at a version, older or newer; unpinned it follows the channel again")
    func pins() async throws {
        let sync = try SyncFixture(releases: 2)
        let server = try ServerProcess(repo: sync.repo)
        let (pinned, free) = (sync.fixture.work.path("pinned"), sync.fixture.work.path("free"))
        #expect(try sync.sync(server, root: pinned, ["--device-id", "rack-1"]).status == 0)
        #expect(try sync.sync(server, root: free, ["--device-id", "rack-2"]).status == 0)
        func channel(_ arguments: [String]) throws {
            let result = try Upgrade.run(
                ["channel", "set"] + arguments + ["--repo", sync.repo, "--product", "app", "--key", sync.fixture.key]
            )
            #expect(result.status == 0, "\(result.stderr)")
        }
        try channel(["--pin", "device:rack-1=1.0", "--pin", "tag:frozen=1.0"])
        let held = try sync.sync(server, root: pinned, ["--device-id", "rack-1", "--json"])
        #expect(held.status == 0, "\(held.stderr)")
        #expect(try Self.report(held)["pinnedVersion"] as? String == "1.0")
        try await sync.expect(pinned, equals: 1, "pinned at 1.0")
        #expect(try sync.sync(server, root: pinned, ["--device-id", "rack-1"]).status == 0)
        try await sync.expect(pinned, equals: 1, "stays pinned")
        #expect(try sync.sync(server, root: free, ["--device-id", "rack-2"]).status == 0)
        try await sync.expect(free, equals: 2, "not pinned")
        #expect(try sync.sync(server, root: free, ["--device-id", "rack-2", "--tag", "frozen"]).status == 0)
        try await sync.expect(free, equals: 1, "pinned by tag")
        try channel(["--unpin", "device:rack-1", "--unpin", "tag:frozen"])
        #expect(try sync.sync(server, root: pinned, ["--device-id", "rack-1"]).status == 0)
        try await sync.expect(pinned, equals: 2, "unpinned")
    }

    @Test("--rollback-points 2: rollback goes back one release at a time, twice; the default keeps one")
    func rollbackPoints() async throws {
        let sync = try SyncFixture(releases: 1)
        let server = try ServerProcess(repo: sync.repo)
        let (deep, shallow) = (sync.fixture.work.path("deep"), sync.fixture.work.path("shallow"))
        #expect(try sync.sync(server, root: deep, ["--rollback-points", "2"]).status == 0)
        #expect(try sync.sync(server, root: shallow).status == 0)
        for version in 2...3 {
            try sync.publish(version)
            #expect(try sync.sync(server, root: deep).status == 0)
            #expect(try sync.sync(server, root: shallow).status == 0)
        }
        for expected in [2, 1] {
            let back = try Upgrade.run(["rollback", "--root", deep])
            #expect(back.status == 0, "\(back.stderr)")
            try await sync.expect(deep, equals: expected, "rollback to \(expected).0")
        }
        let end = try Upgrade.run(["rollback", "--root", deep])
        #expect(end.status == 5 && end.stderr.contains("rollback points"), "\(end.stderr)")
        try await sync.expect(deep, equals: 1)

        #expect(try Upgrade.run(["rollback", "--root", shallow]).status == 0)
        try await sync.expect(shallow, equals: 2)
        let once = try Upgrade.run(["rollback", "--root", shallow])
        #expect(once.status == 5, "\(once.stderr)")
        #expect(try sync.sync(server, root: shallow, ["--rollback-points", "0"]).status == 2)
    }

    @Test("probation: an unconfirmed release is rolled back by the next run and then skipped; a confirmed one stays")
    func probation() async throws {
        let sync = try SyncFixture(releases: 1)
        let server = try ServerProcess(repo: sync.repo)
        let root = sync.fixture.work.path("root")
        #expect(try sync.sync(server, root: root).status == 0)
        try sync.publish(2)
        let onProbation = try sync.sync(server, root: root, ["--confirm-within", "1s"])
        #expect(onProbation.status == 0, "\(onProbation.stderr)")
        try await sync.expect(root, equals: 2, "installed on probation")
        sleep(2)
        let expired = try sync.sync(server, root: root, ["--json"])
        #expect(expired.status == 0, "\(expired.stderr)")
        let report = try Self.report(expired)
        #expect((report["recovered"] as? String ?? "").contains("rolled back 2.0"), "\(report)")
        #expect(report["result"] as? String == "skipped", "\(report)")
        try await sync.expect(root, equals: 1, "unconfirmed 2.0 rolled back")

        try sync.publish(3)
        #expect(try sync.sync(server, root: root, ["--confirm-within", "1s"]).status == 0)
        let confirmed = try Upgrade.run(["confirm", "--root", root])
        #expect(
            confirmed.status == 0 && confirmed.text.contains("confirmed 3.0"),
            "\(confirmed.text) \(confirmed.stderr)"
        )
        sleep(2)
        #expect(try sync.sync(server, root: root).status == 0)
        try await sync.expect(root, equals: 3, "confirmed 3.0 stays")
        let nothing = try Upgrade.run(["confirm", "--root", root])
        #expect(nothing.status == 0 && nothing.text.contains("nothing is on probation"))
        let bad = try sync.sync(server, root: root, ["--confirm-within", "soon"])
        #expect(bad.status == 2, "\(bad.stderr)")
    }

    @Test("sync --version installs any signed release online; older needs --allow-downgrade; unknown is exit 11")
    func onlineVersion() async throws {
        let sync = try SyncFixture(releases: 3)
        let server = try ServerProcess(repo: sync.repo)
        let root = sync.fixture.work.path("root")
        let two = try sync.sync(server, root: root, ["--version", "2.0"])
        #expect(two.status == 0, "\(two.stderr)")
        try await sync.expect(root, equals: 2, "--version 2.0 while the channel names 3.0")
        #expect(try sync.sync(server, root: root).status == 0)
        try await sync.expect(root, equals: 3)
        let older = try sync.sync(server, root: root, ["--version", "1.0"])
        #expect(older.status == 5 && older.stderr.contains("--allow-downgrade"), "\(older.stderr)")
        let back = try sync.sync(server, root: root, ["--version", "1.0", "--allow-downgrade"])
        #expect(back.status == 0, "\(back.stderr)")
        try await sync.expect(root, equals: 1, "back to 1.0")
        let unknown = try sync.sync(server, root: root, ["--version", "9.9"])
        #expect(unknown.status == 11 && unknown.stderr.contains("9.9"), "\(unknown.stderr)")
    }

    @Test(
        "a release that fails its health check is tried once, then skipped with 0 bytes and no hooks until --retry-failed or a newer release"
    )
    func failedReleaseMemory() async throws {
        let sync = try SyncFixture(releases: 1)
        let server = try ServerProcess(repo: sync.repo)
        let root = sync.fixture.work.path("root")
        #expect(try sync.sync(server, root: root).status == 0)
        let log = sync.fixture.work.path("health.log")
        let bad = try TemporaryTree()
        try ApplyFixture.copy(sync.trees[1].root + "/.", bad.root)
        try bad.file("check.sh", "#!/bin/sh\necho ran >> '\(log)'\nexit 1\n", mode: 0o755)
        try sync.fixture.publish("2.0", bad.root, extra: ["--health-check", "check.sh"])

        let first = try sync.sync(server, root: root)
        #expect(first.status == 8, "\(first.stderr)")
        try await sync.expect(root, equals: 1, "rolled back")
        let second = try sync.sync(server, root: root, ["--json"])
        #expect(second.status == 0, "\(second.stderr)")
        let skipped = try Self.report(second)
        #expect(skipped["result"] as? String == "skipped", "\(skipped)")
        #expect(skipped["bytesDownloaded"] as? Int == 0)
        let reason = skipped["reason"] as? String ?? ""
        #expect(reason.contains("2.0") && reason.contains("health-check") && reason.contains("20"), "\(reason)")
        let human = try sync.sync(server, root: root)
        #expect(human.status == 0 && human.text.hasPrefix("skipped: "), "\(human.text)")
        let runs = { (try? String(contentsOfFile: log, encoding: .utf8))?.split(separator: "\n").count ?? 0 }
        #expect(runs() == 1, "the health check ran again")

        let retry = try sync.sync(server, root: root, ["--retry-failed"])
        #expect(retry.status == 8, "\(retry.stderr)")
        #expect(runs() == 2)

        try sync.publish(3)
        #expect(try sync.sync(server, root: root).status == 0)
        try await sync.expect(root, equals: 3, "a newer release")
    }

    @Test(
        "1.0 -> 1.1 -> repair -> rollback lands on 1.0 with 1.0's post-install run (UPGRADE_PHASE=rollback); a failed health check reruns the restored post-install"
    )
    func completeRollback() async throws {
        let fixture = try ApplyFixture()
        let log = fixture.work.path("hooks.log")
        /// A release whose post-install logs the phase; `healthy` false makes its health check fail.
        func publish(_ version: String, healthy: Bool = true) throws {
            let tree = try TemporaryTree()
            try tree.file("bin/app", "#!/bin/sh\necho \(version)\n", mode: 0o755)
            try tree.file("share/data.txt", "data \(version)\n")
            try tree.file(
                "hooks/post.sh",
                "#!/bin/sh\necho \"$UPGRADE_PHASE \(version) $UPGRADE_TO_VERSION\" >> '\(log)'\n",
                mode: 0o755
            )
            try tree.file("hooks/check.sh", "#!/bin/sh\nexit \(healthy ? 0 : 1)\n", mode: 0o755)
            try fixture.publish(
                version,
                tree.root,
                extra: ["--post-install", "hooks/post.sh", "--health-check", "hooks/check.sh"]
            )
        }
        try publish("1.0")
        let server = try ServerProcess(repo: fixture.repo)
        let root = fixture.work.path("root")
        func sync(_ extra: [String] = []) throws -> CommandResult {
            try Upgrade.run(
                ["sync", "--server", server.url, "--product", "app", "--root", root, "--trust", fixture.pub] + extra
            )
        }
        func lines() -> [String] {
            ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
        }
        #expect(try sync().status == 0)
        try publish("1.1")
        #expect(try sync().status == 0)
        #expect(lines() == ["post-install 1.0 1.0", "post-install 1.1 1.1"], "\(lines())")

        // Drift, then a repair sync (1.1 -> 1.1): it must not use up the rollback point.
        try "edited\n".write(toFile: root + "/share/data.txt", atomically: true, encoding: .utf8)
        let repair = try sync()
        #expect(repair.status == 0, "\(repair.stderr)")
        #expect(
            String(decoding: try Data(contentsOf: URL(fileURLWithPath: root + "/share/data.txt")), as: UTF8.self)
                == "data 1.1\n"
        )
        let back = try Upgrade.run(["rollback", "--root", root])
        #expect(back.status == 0, "\(back.stderr)")
        #expect(
            String(decoding: try Data(contentsOf: URL(fileURLWithPath: root + "/bin/app")), as: UTF8.self).contains(
                "1.0"
            )
        )
        #expect(lines().last == "rollback 1.0 1.0", "\(lines())")

        // 1.2 fails its health check: rolled back, and the restored 1.0's post-install runs again.
        try publish("1.2", healthy: false)
        let failed = try sync()
        #expect(failed.status == 8, "\(failed.stderr)")
        #expect(Array(lines().suffix(2)) == ["post-install 1.2 1.2", "rollback 1.0 1.0"], "\(lines())")
    }
}
