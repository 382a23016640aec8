import AsyncHTTPClient
import Foundation
import NIOCore
import Testing
import UpgradeCore
import UpgradeProtocol
import UpgradeTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The fleet store through the real server and client: device state, auto-halt, the queries,
/// device tokens, queued offline reports, SQLite and PostgreSQL.
@Suite("Fleet", .serialized)
struct FleetTests {
    static func json(_ result: CommandResult) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: result.stdout) as? [String: Any], "\(result.stderr)")
    }

    static func get(_ url: String) throws -> (status: Int32, body: Data) {
        let result = try runProgram("/usr/bin/curl", ["-s", "-o", "-", "-w", "\n%{http_code}", url])
        let text = result.stdout
        let cut = text.lastIndex(of: 0x0a) ?? text.endIndex
        return (Int32(String(decoding: text[text.index(after: cut)...], as: UTF8.self)) ?? 0, Data(text[..<cut]))
    }

    /// POSTs a JSON report to `server`'s `/v1/reports`; the HTTP status curl saw.
    static func postReport(_ json: String, to server: String, headers: [String] = []) throws -> String {
        let extra = headers.flatMap { ["-H", $0] }
        return try runProgram(
            "/usr/bin/curl",
            ["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Content-Type: application/json"] + extra
                + ["-d", json, server + "/v1/reports"]
        ).text
    }

    static func summary(_ server: String) throws -> FleetSummary {
        let (status, body) = try get(server + "/v1/fleet")
        #expect(status == 200, "\(String(decoding: body, as: UTF8.self))")
        return try JSONDecoder().decode(FleetSummary.self, from: body)
    }

    static func release(_ summary: FleetSummary, _ version: String?) -> FleetSummary.Release? {
        summary.releases.first { $0.product == "app" && $0.version == version }
    }

    @Test(
        "SQLite store: devices per release, failures with reasons, auto-halt stops offering a failing release, visible in /metrics and upgrade fleet"
    )
    func autoHalt() async throws {
        let sync = try SyncFixture(releases: 1)
        let database = sync.fixture.work.path("fleet.sqlite")
        let server = try ServerProcess(
            repo: sync.repo,
            extra: ["--database", database, "--halt-above", "0.5", "--halt-after", "2"]
        )
        let roots = (0..<3).map { sync.fixture.work.path("root\($0)") }
        for (index, root) in roots.enumerated() {
            #expect(try sync.sync(server, root: root, ["--device-id", "dev-\(index)", "--tag", "lab"]).status == 0)
        }
        var summary = try Self.summary(server.url)
        #expect(Self.release(summary, "1.0")?.devices == 3, "\(summary)")
        #expect(summary.devices == 3)

        // 2.0 fails its health check on two devices: more than 50% of the first 2 attempts.
        let bad = try TemporaryTree()
        try ApplyFixture.copy(sync.trees[1].root + "/.", bad.root)
        try bad.file("check.sh", "#!/bin/sh\necho broken >&2\nexit 1\n", mode: 0o755)
        try sync.fixture.publish("2.0", bad.root, extra: ["--health-check", "check.sh"])
        for index in 0..<2 {
            let failed = try sync.sync(server, root: roots[index], ["--device-id", "dev-\(index)", "--tag", "lab"])
            #expect(failed.status == 8, "\(failed.stderr)")
        }
        let held = try sync.sync(server, root: roots[2], ["--device-id", "dev-2", "--tag", "lab", "--json"])
        #expect(held.status == 0, "\(held.stderr)")
        let report = try Self.json(held)
        #expect(report["result"] as? String == "held", "\(report)")
        #expect(report["bytesDownloaded"] as? Int == 0)
        #expect((report["reason"] as? String ?? "").contains("halted"), "\(report)")
        try await sync.expect(roots[2], equals: 1, "halted release not installed")

        summary = try Self.summary(server.url)
        let two = try #require(Self.release(summary, "2.0"), "\(summary)")
        #expect(two.halted && two.attempts == 2 && two.failures == 2, "\(two)")
        #expect(Self.release(summary, "1.0")?.devices == 3)
        #expect(Self.release(summary, "1.0")?.failing == 2)
        #expect(Set(summary.failures.map(\.id)) == ["dev-0", "dev-1"])
        #expect(summary.failures.allSatisfy { $0.attempted == "2.0" && ($0.reason ?? "").contains("health") })
        #expect(summary.channels.first?.version == "2.0")
        #expect(summary.channels.first?.devicesOnRelease == 0)
        try Self.expectDashboard(server.url, profile: sync.fixture.work.path("chromium"))

        let metrics = String(decoding: try Self.get(server.url + "/metrics").body, as: UTF8.self)
        #expect(metrics.contains("upgrade_release_halted{product=\"app\",version=\"2.0\"} 1"), "\(metrics)")
        #expect(metrics.contains("upgrade_fleet_devices{product=\"app\",version=\"1.0\"} 3"), "\(metrics)")

        let human = try Upgrade.run(["fleet", "--server", server.url])
        #expect(human.status == 0, "\(human.stderr)")
        #expect(human.text.contains("HALTED") && human.text.contains("dev-1"), "\(human.text)")
        let failing = try Upgrade.run(["fleet", "devices", "--server", server.url, "--result", "failing", "--json"])
        #expect(failing.status == 0, "\(failing.stderr)")
        #expect(try Self.json(failing)["total"] as? Int == 2)
        let tagged = try Upgrade.run([
            "fleet", "devices", "--server", server.url, "--tag", "lab", "--version", "1.0", "--json",
        ])
        #expect(try Self.json(tagged)["total"] as? Int == 3, "\(tagged.text)")
        let wrong = try Upgrade.run(["fleet", "devices", "--server", server.url, "--result", "exploded"])
        #expect(wrong.status == 2 && wrong.stderr.contains("exploded"), "\(wrong.stderr)")

        // A device the signed record pins to 1.0 is not held by 2.0's halt: it installs its pin.
        let pin = try Upgrade.run([
            "channel", "set", "--pin", "device:dev-3=1.0", "--repo", sync.repo, "--product", "app", "--key",
            sync.fixture.key,
        ])
        #expect(pin.status == 0, "\(pin.stderr)")
        let pinnedRoot = sync.fixture.work.path("root3")
        let pinned = try sync.sync(server, root: pinnedRoot, ["--device-id", "dev-3", "--json"])
        #expect(pinned.status == 0, "\(pinned.stderr)")
        let pinnedReport = try Self.json(pinned)
        #expect(pinnedReport["pinnedVersion"] as? String == "1.0", "\(pinnedReport)")
        try await sync.expect(pinnedRoot, equals: 1, "the pinned release despite the halt")
        let stillHeld = try Self.json(try sync.sync(server, root: roots[2], ["--device-id", "dev-2", "--json"]))
        #expect(stillHeld["result"] as? String == "held", "an unpinned device is still held: \(stillHeld)")

        // A fixed release is offered again; the device that was held installs it.
        try sync.fixture.publish("3.0", sync.trees[2].root)
        #expect(try sync.sync(server, root: roots[2], ["--device-id", "dev-2"]).status == 0)
        try await sync.expect(roots[2], equals: 3, "3.0 after the halt")
    }

    /// The dashboard in a real headless Chromium, on the fleet `autoHalt` leaves: three devices
    /// on 1.0, two of them failing at 2.0, 2.0 halted. Keeps `.build/test-artifacts/dashboard.png`.
    static func expectDashboard(_ server: String, profile: String) throws {
        guard Chromium.unavailable == nil else {
            FileHandle.standardError.write(Data("dashboard test skipped: \(Chromium.unavailable ?? "")\n".utf8))
            return
        }
        let loaded = try Chromium.dom(server + "/dashboard", profile: profile)
        #expect(loaded.status == 0, "chromium: \(loaded.stderr)")
        let dom = loaded.text
        #expect(dom.contains("3 devices, 0 not seen for 24 h; auto-halt above 50% of the first 2 attempts"), "\(dom)")
        let releases = Chromium.rows(dom, table: "releases")
        #expect(releases.contains("app | 1.0 | 3 | 2 | 2 | 0 | offered"), "\(releases)")
        #expect(releases.contains("app | 2.0 | 0 | 0 | 2 | 2 | halted"), "\(releases)")
        let channels = Chromium.rows(dom, table: "channels")
        #expect(channels.count == 1 && channels[0].hasPrefix("app | stable | 2.0 | 100% | 0 of 3"), "\(channels)")
        let failures = Chromium.rows(dom, table: "failures")
        #expect(failures.count == 2, "\(failures)")
        #expect(
            failures.allSatisfy {
                $0.contains("| 1.0 | 2.0 | failed | health-check hook failed") && $0.contains("rolled back")
            },
            "\(failures)"
        )
        let devices = Chromium.rows(dom, table: "devices")
        #expect(devices.map { $0.components(separatedBy: " | ")[0] }.sorted() == ["dev-0", "dev-1", "dev-2"])
        #expect(devices.allSatisfy { $0.contains("lab") && $0.contains("linux") }, "\(devices)")

        let png = Chromium.artifacts + "/dashboard.png"
        try? FileManager.default.removeItem(atPath: png)
        let shot = try Chromium.screenshot(server + "/dashboard", to: png, profile: profile)
        #expect(shot.status == 0, "chromium: \(shot.stderr)")
        let bytes = (try? Data(contentsOf: URL(fileURLWithPath: png))) ?? Data()
        #expect(bytes.starts(with: [0x89, 0x50, 0x4e, 0x47]) && bytes.count > 10_000, "screenshot at \(png)")
    }

    @Test("device tokens: plan requests and reports without a valid token get 401; with one, sync works")
    func deviceTokens() async throws {
        let sync = try SyncFixture(releases: 1)
        let tokens = sync.fixture.work.path("tokens")
        let made = try Upgrade.run(["fleet", "token", "dev-a", "--tokens", tokens])
        #expect(made.status == 0, "\(made.stderr)")
        let token = made.text.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(token.count == 64)
        #expect(!(try String(contentsOfFile: tokens, encoding: .utf8)).contains(token), "the file holds the token")
        let tokenFile = try sync.fixture.work.file("token", Array(token.utf8))
        let wrongFile = try sync.fixture.work.file("wrong", Array(String(repeating: "0", count: 64).utf8))
        let server = try ServerProcess(repo: sync.repo, extra: ["--device-tokens", tokens])
        let root = sync.fixture.work.path("root")

        let none = try sync.sync(server, root: root, ["--device-id", "dev-a"])
        #expect(none.status == 5 && none.stderr.contains("token"), "\(none.status) \(none.stderr)")
        let wrong = try sync.sync(server, root: root, ["--device-id", "dev-a", "--token-file", wrongFile])
        #expect(wrong.status == 5, "\(wrong.stderr)")
        let stolen = try sync.sync(server, root: root, ["--device-id", "dev-b", "--token-file", tokenFile])
        #expect(stolen.status == 5, "another device's token: \(stolen.stderr)")
        #expect(!FileManager.default.fileExists(atPath: root + "/bin/app"))
        let good = try sync.sync(server, root: root, ["--device-id", "dev-a", "--token-file", tokenFile])
        #expect(good.status == 0, "\(good.stderr)")
        try await sync.expect(root, equals: 1)

        let report =
            #"{"product":"app","device":{"os":"linux","arch":"x86_64","id":"dev-a"},"result":"installed","bytesDownloaded":0,"durationSeconds":1}"#
        #expect(try Self.postReport(report, to: server.url) == "401")
        #expect(try Self.postReport(report, to: server.url, headers: ["Authorization: Bearer \(token)"]) == "202")
        let devices = try JSONDecoder().decode(DeviceList.self, from: try Self.get(server.url + "/v1/devices").body)
        #expect(devices.devices.map(\.id) == ["dev-a"], "\(devices)")
    }

    @Test(
        "an offline upgrade from a peer is reported with the next online sync, marked offline; a report the store cannot take is kept and sent later"
    )
    func queuedOfflineReports() async throws {
        let sync = try SyncFixture(releases: 2)
        let database = sync.fixture.work.path("f.sqlite")
        let server = try ServerProcess(repo: sync.repo, extra: ["--database", database])
        let holder = sync.fixture.work.path("holder")
        #expect(try sync.sync(server, root: holder, ["--device-id", "holder"]).status == 0)
        let share = try ListeningProcess([
            Upgrade.binary, "share", "--root", holder, "--listen", "127.0.0.1:0", "--announce", "off", "--log-level",
            "warning",
        ])
        defer { share.stop() }
        let root = sync.fixture.work.path("root")
        #expect(try sync.sync(server, root: root, ["--device-id", "roamer", "--version", "1.0"]).status == 0)
        let offline = try Upgrade.run([
            "sync", "--offline", "--peers", String(share.url.dropFirst("http://".count)), "--product", "app",
            "--root", root, "--trust", sync.fixture.pub, "--device-id", "roamer",
        ])
        #expect(offline.status == 0, "\(offline.stderr)")
        try await sync.expect(root, equals: 2, "offline from the peer")
        let queue = root + "/.upgrade/reports"
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: queue)) ?? []).count == 1)

        // The next online sync is up to date and sends the queued report.
        #expect(try sync.sync(server, root: root, ["--device-id", "roamer"]).status == 0)
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: queue)) ?? []).isEmpty)
        var list = try JSONDecoder().decode(DeviceList.self, from: try Self.get(server.url + "/v1/devices").body)
        #expect(list.devices.map(\.id).sorted() == ["holder", "roamer"], "\(list)")
        let roamer = list.devices.first { $0.id == "roamer" }
        #expect(roamer?.version == "2.0" && roamer?.via == "offline" && roamer?.result == "installed", "\(list)")
        #expect(roamer?.bytesFromPeers ?? 0 > 0, "the offline run's peer bytes count")

        // A store that cannot take a report (503): the device keeps it and sends it next time.
        try Self.sqlite(database, "ALTER TABLE history RENAME TO history_away")
        try sync.publish(3)
        #expect(try sync.sync(server, root: root, ["--device-id", "roamer"]).status == 0)
        try await sync.expect(root, equals: 3)
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: queue)) ?? []).count == 1)
        try Self.sqlite(database, "ALTER TABLE history_away RENAME TO history")
        #expect(try sync.sync(server, root: root, ["--device-id", "roamer"]).status == 0)
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: queue)) ?? []).isEmpty)
        list = try JSONDecoder().decode(
            DeviceList.self,
            from: try Self.get(server.url + "/v1/devices?version=3.0").body
        )
        #expect(list.devices.map(\.id) == ["roamer"] && list.devices.first?.via == "online", "\(list)")
    }

    /// Runs one SQL statement on a SQLite file (Debian's sqlite3 shell, beside the server's GRDB).
    static func sqlite(_ path: String, _ sql: String) throws {
        let result = try runProgram("/usr/bin/sqlite3", [path, sql])
        #expect(result.status == 0, "\(sql): \(result.stderr)")
    }

    /// Posts `count` simulated reports, alternating between `servers`: 60% installed 2.0,
    /// 30% up to date on 1.0, 10% failed at 2.0.
    static func simulate(_ count: Int, servers: [String]) async throws {
        let client = HTTPClient(eventLoopGroupProvider: .singleton)
        func post(_ index: Int) async throws -> Int {
            let (from, to, result): (String, String, String) =
                switch index % 10 {
                case 0..<6: ("1.0", "2.0", "installed")
                case 6..<9: ("1.0", "1.0", "up-to-date")
                default: ("1.0", "2.0", "failed: health-check exited 1")
                }
            var device = PlanRequest.Device(os: "linux", arch: "x86_64", id: "sim-\(index)")
            device.tags = [index % 2 == 0 ? "even" : "odd"]
            let outcome = SyncOutcome(
                product: "app",
                device: device,
                fromVersion: from,
                toVersion: to,
                result: result,
                bytesDownloaded: 100,
                durationSeconds: 0.5
            )
            var request = HTTPClientRequest(url: servers[index % servers.count] + "/v1/reports")
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: try JSONEncoder().encode(outcome)))
            let response = try await client.execute(request, timeout: .seconds(30))
            _ = try await response.body.collect(upTo: 1 << 16)
            return Int(response.status.code)
        }
        do {
            try await withThrowingTaskGroup(of: Int.self) { group in
                for worker in 0..<16 {
                    group.addTask {
                        var failures = 0
                        for index in stride(from: worker, to: count, by: 16) where try await post(index) != 202 {
                            failures += 1
                        }
                        return failures
                    }
                }
                var refused = 0
                for try await failures in group { refused += failures }
                #expect(refused == 0, "\(refused) reports were not accepted")
            }
        } catch {
            try await client.shutdown()
            throw error
        }
        try await client.shutdown()
    }

    static func expectExactCounts(_ server: String, devices: Int) throws {
        let summary = try Self.summary(server)
        #expect(summary.devices == devices, "\(summary.releases)")
        #expect(release(summary, "2.0")?.devices == devices * 6 / 10)
        #expect(release(summary, "1.0")?.devices == devices * 4 / 10)
        #expect(release(summary, "1.0")?.failing == devices / 10)
        let even = try JSONDecoder().decode(
            DeviceList.self,
            from: try get(server + "/v1/devices?tag=even&limit=0").body
        )
        #expect(even.total == devices / 2)
    }

    @Test("2,000 simulated devices through one server on SQLite: exact per-release counts")
    func sqliteFleetCounts() async throws {
        let sync = try SyncFixture(releases: 2)
        let server = try ServerProcess(
            repo: sync.repo,
            extra: ["--database", sync.fixture.work.path("fleet.sqlite"), "--reports-per-second", "100000"]
        )
        try await Self.simulate(2000, servers: [server.url])
        try Self.expectExactCounts(server.url, devices: 2000)
    }

    @Test(
        "2,000 simulated devices through two plan servers sharing one PostgreSQL: exact per-release counts on both; a halted release is not offered by the other server",
        .enabled(if: PostgresServer.unavailable == nil, "PostgreSQL could not start here (reason on stderr)")
    )
    func postgresFleetCounts() async throws {
        let postgres = try PostgresServer()
        let sync = try SyncFixture(releases: 2)
        // Halted once more than 10% of the first 2,000 attempts at a release failed.
        let extra = [
            "--database", postgres.url, "--reports-per-second", "100000", "--halt-above", "0.1", "--halt-after", "2000",
        ]
        let first = try ServerProcess(repo: sync.repo, extra: extra)
        let second = try ServerProcess(repo: sync.repo, extra: extra)
        try await Self.simulate(2000, servers: [first.url, second.url])
        try Self.expectExactCounts(first.url, devices: 2000)
        try Self.expectExactCounts(second.url, devices: 2000)
        // 200 failures of 1,400 attempts: exactly 10%, still offered.
        let before = try #require(Self.release(try Self.summary(second.url), "2.0"))
        #expect(before.attempts == 1400 && before.failures == 200 && !before.halted, "\(before)")

        let root = sync.fixture.work.path("late")
        #expect(try sync.sync(first, root: root, ["--device-id", "late", "--version", "1.0"]).status == 0)
        // One more failure, through the first server, halts 2.0 for a device of the second.
        let failure =
            #"{"product":"app","device":{"os":"linux","arch":"x86_64","id":"one-more"},"fromVersion":"1.0","toVersion":"2.0","result":"rolled-back","bytesDownloaded":0,"durationSeconds":1}"#
        #expect(try Self.postReport(failure, to: first.url) == "202")
        let held = try sync.sync(second, root: root, ["--device-id", "late", "--json"])
        #expect(held.status == 0, "\(held.stderr)")
        let report = try Self.json(held)
        #expect(
            report["result"] as? String == "held" && (report["reason"] as? String ?? "").contains("halted"),
            "\(report)"
        )
        try await sync.expect(root, equals: 1, "2.0 halted")
        let metrics = String(decoding: try Self.get(second.url + "/metrics").body, as: UTF8.self)
        #expect(metrics.contains("upgrade_release_halted{product=\"app\",version=\"2.0\"} 1"), "\(metrics)")
    }
}
