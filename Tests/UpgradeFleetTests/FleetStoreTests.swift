import Foundation
import Logging
import Testing
import UpgradeFleet
import UpgradeProtocol
import UpgradeTestSupport

/// The SQLite fleet store on a real file: device state, history order, auto-halt counts,
/// queries, retention, migrations kept across reopening.
@Suite struct FleetStoreTests {
    static func outcome(
        _ device: String,
        from: String?,
        to: String?,
        result: String,
        tags: [String] = [],
        at: Date? = nil
    ) -> SyncOutcome {
        var identity = PlanRequest.Device(os: "linux", arch: "x86_64", id: device)
        identity.platform = "linux-x86_64"
        identity.tags = tags
        var outcome = SyncOutcome(
            product: "app",
            device: identity,
            fromVersion: from,
            toVersion: to,
            result: result,
            bytesDownloaded: 1000,
            durationSeconds: 1
        )
        outcome.at = at?.formatted(.iso8601)
        return outcome
    }

    @Test func stateHistoryAndHaltCounts() async throws {
        let tree = try TemporaryTree()
        let store = try await FleetStores.open(
            tree.path("fleet.sqlite"),
            attemptsCounted: 4,
            logger: Logger(label: "t")
        )
        let now = Date()
        try await store.record(
            FleetReport(Self.outcome("a", from: "1.0", to: "2.0", result: "installed"), received: now)
        )
        try await store.record(
            FleetReport(
                Self.outcome("b", from: "1.0", to: "2.0", result: "failed: post-install exited 1", tags: ["lab"]),
                received: now
            )
        )
        try await store.record(
            FleetReport(Self.outcome("c", from: "1.0", to: "1.0", result: "up-to-date"), received: now)
        )
        // An older queued report of `a` arrives late: history only, the state stays 2.0.
        var late = Self.outcome("a", from: nil, to: "1.0", result: "installed", at: now.addingTimeInterval(-3600))
        late.via = "offline"
        try await store.record(FleetReport(late, received: now.addingTimeInterval(1)))

        let releases = try await store.releases(product: "app")
        #expect(releases.map(\.version) == ["1.0", "2.0"])
        #expect(releases.map(\.devices) == [2, 1])
        #expect(releases[0].failing == 1)
        #expect(releases[1].attempts == 2 && releases[1].failures == 1)

        let failing = try await store.devices(
            {
                var query = DeviceQuery(product: "app")
                query.results = ["failing"]
                return query
            }()
        )
        #expect(failing.devices.map(\.id) == ["b"])
        #expect(failing.devices[0].reason == "post-install exited 1")
        #expect(failing.devices[0].attempted == "2.0")
        #expect(failing.devices[0].version == "1.0")
        let a = try await store.devices(
            {
                var query = DeviceQuery(product: "app")
                query.version = "2.0"
                return query
            }()
        )
        #expect(a.devices.map(\.id) == ["a"])
        #expect(a.devices[0].via == "online")
        #expect(a.devices[0].bytesFromServer == 2000)
        let tagged = try await store.devices(
            {
                var query = DeviceQuery(product: "app")
                query.tag = "lab"
                return query
            }()
        )
        #expect(tagged.devices.map(\.id) == ["b"] && tagged.devices[0].tags == ["lab"])

        // Only the first 4 attempts count.
        for index in 0..<6 {
            try await store.record(
                FleetReport(Self.outcome("d\(index)", from: "1.0", to: "2.0", result: "rolled-back"), received: now)
            )
        }
        let counts = try await store.attempts(product: "app", version: "2.0")
        #expect(counts.attempts == 4 && counts.failures == 3)
        #expect(HaltRule(above: 0.5, after: 4).halted(failures: counts.failures))
        #expect(!HaltRule(above: 0.75, after: 4).halted(failures: counts.failures))
        await store.close()

        // Reopened: the schema is not applied twice and the data is there.
        let again = try await FleetStores.open(
            tree.path("fleet.sqlite"),
            attemptsCounted: 4,
            logger: Logger(label: "t")
        )
        #expect(try await again.devices(DeviceQuery(product: "app")).total == 9)
        // Retention: a device not seen for longer is forgotten, with its history.
        try await again.prune(before: now.addingTimeInterval(3600))
        #expect(try await again.devices(DeviceQuery(product: "app")).total == 0)
        await again.close()
    }

    @Test func contactsMarkDevicesSeen() async throws {
        let tree = try TemporaryTree()
        let store = try await FleetStores.open(
            tree.path("fleet.sqlite"),
            attemptsCounted: 20,
            logger: Logger(label: "t")
        )
        var device = PlanRequest.Device(os: "linux", arch: "x86_64", id: "quiet")
        device.tags = ["edge"]
        let old = Date().addingTimeInterval(-7200)
        try await store.contact(FleetContact(product: "app", device: device, version: "1.0", at: old))
        var stale = DeviceQuery(product: "app")
        stale.unseenSince = Date().addingTimeInterval(-3600)
        #expect(try await store.devices(stale).devices.map(\.id) == ["quiet"])
        try await store.contact(FleetContact(product: "app", device: device, version: "1.0", at: Date()))
        #expect(try await store.devices(stale).total == 0)
        let all = try await store.devices(DeviceQuery(product: "app")).devices
        #expect(all.count == 1 && all[0].version == "1.0" && all[0].result == nil && all[0].tags == ["edge"])
        await store.close()
    }

    @Test func badLocationsAreNamed() async throws {
        await #expect(throws: FleetStoreError.self) {
            _ = try await FleetStores.open(
                "/nonexistent/dir/fleet.sqlite",
                attemptsCounted: 20,
                logger: Logger(label: "t")
            )
        }
        do {
            _ = try await FleetStores.open(
                "postgres://host-without-user/db",
                attemptsCounted: 20,
                logger: Logger(label: "t")
            )
            Issue.record("a URL without a user opened")
        } catch {
            #expect("\(error)".contains("is not postgres://USER"))
        }
    }

    @Test func resultClasses() {
        #expect(FleetReport.classify("up to date") == ("up-to-date", nil))
        #expect(FleetReport.classify("failed: network: refused") == ("failed", "network: refused"))
        #expect(FleetReport.classify("rolled-back") == ("rolled-back", nil))
        #expect(FleetReport.classify("failed: the tree was rolled back") == ("failed", "the tree was rolled back"))
        #expect(FleetReport.classify("whatever").result == "other")
    }
}
