import Foundation
import Hummingbird
import Logging
import Synchronization
import UpgradeFleet
import UpgradeProtocol
import UpgradeRepository
import UpgradeTrust

/// How `upgrade serve` keeps the fleet.
public struct FleetConfiguration: Sendable {
    public var store: any FleetStore
    /// Auto-halt (nil: off).
    public var halt: HaltRule?
    /// History and devices older than this are forgotten.
    public var retentionDays: Double = 90

    public init(store: any FleetStore) { self.store = store }
}

/// The fleet view: contacts and reports into the store, the device and summary queries,
/// auto-halt, per-release gauges, the dashboard.
final class FleetService: Sendable {
    let configuration: FleetConfiguration
    let layout: RepositoryLayout
    let logger: Logger
    let metrics: ServerMetrics
    private let lastPrune = Mutex(Date.distantPast)

    init(_ configuration: FleetConfiguration, layout: RepositoryLayout, logger: Logger, metrics: ServerMetrics) {
        self.configuration = configuration
        self.layout = layout
        self.logger = logger
        self.metrics = metrics
    }

    var store: any FleetStore { configuration.store }

    func addRoutes(to router: Router<BasicRequestContext>) {
        router.get("v1/devices") { request, _ in try await self.devices(request) }
        router.get("v1/fleet") { request, _ in try await self.summaryResponse(request) }
        router.get("dashboard") { _, _ in
            Response(
                status: .ok,
                headers: [.contentType: "text/html; charset=utf-8", .cacheControl: "no-store"],
                body: .init(byteBuffer: ByteBuffer(string: Dashboard.html))
            )
        }
    }

    /// A plan request: the device is alive. A store that fails does not fail the plan.
    func contact(_ request: PlanRequest) async {
        do {
            try await store.contact(
                FleetContact(
                    product: request.product,
                    device: request.device,
                    version: request.installed?.version,
                    at: Date()
                )
            )
        } catch {
            metrics.countFleetError()
            logger.error("fleet store: \(String(reflecting: error))")
        }
    }

    /// Refuses (409, `Upgrade-Halted`) to offer a halted release to a device that does not run
    /// it. A store that cannot answer offers the release: the signed rollout rules still hold.
    func requireOffered(product: String, version: String, installed: String?) async throws {
        guard let rule = configuration.halt, installed != version else { return }
        let counts: (attempts: Int, failures: Int)
        do {
            counts = try await store.attempts(product: product, version: version)
        } catch {
            metrics.countFleetError()
            logger.error("fleet store: \(String(reflecting: error))")
            return
        }
        guard rule.halted(failures: counts.failures) else { return }
        throw HTTPError(
            .conflict,
            headers: [HTTPFields.Element.Name(FleetHeaders.halted)!: version],
            message:
                "release \(version) of \(product) is halted: \(counts.failures) of its first \(counts.attempts) attempts failed (more than \(rule.above * 100)% of \(rule.after))"
        )
    }

    func record(_ outcome: SyncOutcome) async throws {
        let now = Date()
        do {
            try await store.record(FleetReport(outcome, received: now))
        } catch {
            metrics.countFleetError()
            logger.error("fleet store: \(String(reflecting: error))")
            throw HTTPError(.serviceUnavailable, headers: [.retryAfter: "5"], message: "fleet store unavailable")
        }
        // Retention, at most once an hour, by whichever request comes.
        let due = lastPrune.withLock { last in
            guard now.timeIntervalSince(last) > 3600 else { return false }
            last = now
            return true
        }
        if due {
            do {
                try await store.prune(before: now.addingTimeInterval(-configuration.retentionDays * 86400))
            } catch {
                logger.error("fleet store prune: \(String(reflecting: error))")
            }
        }
    }

    // MARK: Queries

    private func devices(_ request: Request) async throws -> Response {
        let parameters = request.uri.queryParameters
        var query = DeviceQuery(product: parameters["product"].map(String.init))
        query.version = parameters["version"].map(String.init)
        query.results = parameters.getAll("result").flatMap { $0.split(separator: ",").map(String.init) }
        query.tag = parameters["tag"].map(String.init)
        if let hours = parameters["unseen-hours"] {
            guard let hours = Double(hours), hours >= 0 else {
                throw HTTPError(.badRequest, message: "unseen-hours must be a non-negative number of hours")
            }
            query.unseenSince = Date().addingTimeInterval(-hours * 3600)
            query.oldestFirst = true
        }
        if let limit = parameters["limit"] {
            guard let limit = Int(limit), (0...10_000).contains(limit) else {
                throw HTTPError(.badRequest, message: "limit must be a number from 0 to 10000")
            }
            query.limit = limit
        }
        for result in query.results where result != "failing" && !FleetReport.resultClasses.contains(result) {
            throw HTTPError(
                .badRequest,
                message: "result \(result.debugDescription) is not one of failing, "
                    + FleetReport.resultClasses.joined(separator: ", ")
            )
        }
        return try jsonResponse(try await queried { try await self.store.devices(query) })
    }

    private func summaryResponse(_ request: Request) async throws -> Response {
        let parameters = request.uri.queryParameters
        var staleHours = 24.0
        if let text = parameters["stale-hours"] {
            guard let hours = Double(text), hours >= 0 else {
                throw HTTPError(.badRequest, message: "stale-hours must be a non-negative number of hours")
            }
            staleHours = hours
        }
        let product = parameters["product"].map(String.init)
        return try jsonResponse(try await queried { try await self.summary(product: product, staleHours: staleHours) })
    }

    func summary(product: String?, staleHours: Double) async throws -> FleetSummary {
        var summary = FleetSummary()
        summary.staleHours = staleHours
        summary.haltAbove = configuration.halt?.above
        summary.haltAfter = configuration.halt?.after
        summary.releases = try await store.releases(product: product)
        if let rule = configuration.halt {
            for index in summary.releases.indices {
                summary.releases[index].halted = rule.halted(failures: summary.releases[index].failures)
            }
        }
        summary.devices = summary.releases.reduce(0) { $0 + $1.devices }
        var failing = DeviceQuery(product: product)
        failing.results = ["failing"]
        summary.failures = try await store.devices(failing).devices
        var stale = DeviceQuery(product: product)
        stale.unseenSince = Date().addingTimeInterval(-staleHours * 3600)
        stale.oldestFirst = true
        let staleList = try await store.devices(stale)
        summary.stale = staleList.devices
        summary.staleCount = staleList.total
        summary.channels = channels(product: product).map { channel in
            var channel = channel
            let releases = summary.releases.filter { $0.product == channel.product }
            channel.devices = releases.reduce(0) { $0 + $1.devices }
            channel.devicesOnRelease = releases.first { $0.version == channel.version }?.devices ?? 0
            return channel
        }
        return summary
    }

    /// The channels in the repository and their rollout rules (as signed; the server does not
    /// verify what it serves, clients do).
    private func channels(product: String?) -> [FleetSummary.Channel] {
        let files = FileManager.default
        let products =
            product.map { [$0] } ?? ((try? files.contentsOfDirectory(atPath: layout.channels)) ?? []).sorted()
        var result = [FleetSummary.Channel]()
        for product in products where Names.isValid(product) {
            for name in ((try? files.contentsOfDirectory(atPath: layout.productChannels(product))) ?? []).sorted()
            where Names.isValid(name) {
                guard let bytes = files.contents(atPath: layout.channel(product, name)),
                    let record = try? ChannelRecord(unverified: SignedEnvelope(encoded: [UInt8](bytes)))
                else { continue }
                var channel = FleetSummary.Channel(product: product, channel: name, version: record.version)
                if let rollout = record.rollout {
                    channel.percent = rollout.percent
                    channel.paused = rollout.paused
                    channel.canaryTags = rollout.canaryTags
                }
                result.append(channel)
            }
        }
        return result
    }

    /// Prometheus gauges per release: devices, failing devices, halted.
    func gauges() async -> String {
        guard let releases = try? await store.releases(product: nil) else {
            metrics.countFleetError()
            return ""
        }
        var lines = [
            "# HELP upgrade_fleet_devices Devices by product and the release they run.",
            "# TYPE upgrade_fleet_devices gauge",
        ]
        func labels(_ release: FleetSummary.Release) -> String {
            "product=\"\(ServerMetrics.escape(release.product))\",version=\"\(ServerMetrics.escape(release.version ?? "none"))\""
        }
        for release in releases { lines.append("upgrade_fleet_devices{\(labels(release))} \(release.devices)") }
        lines += [
            "# HELP upgrade_fleet_failing_devices Devices whose last run failed or rolled back.",
            "# TYPE upgrade_fleet_failing_devices gauge",
        ]
        for release in releases { lines.append("upgrade_fleet_failing_devices{\(labels(release))} \(release.failing)") }
        if let rule = configuration.halt {
            lines += [
                "# HELP upgrade_release_halted 1 when the release is no longer offered to new devices (auto-halt).",
                "# TYPE upgrade_release_halted gauge",
            ]
            for release in releases where release.attempts > 0 {
                lines.append(
                    "upgrade_release_halted{\(labels(release))} \(rule.halted(failures: release.failures) ? 1 : 0)"
                )
            }
            lines += [
                "# HELP upgrade_release_attempt_failures Failures among the attempts counted for auto-halt.",
                "# TYPE upgrade_release_attempt_failures gauge",
            ]
            for release in releases where release.attempts > 0 {
                lines.append("upgrade_release_attempt_failures{\(labels(release))} \(release.failures)")
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    private func queried<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as HTTPError {
            throw error
        } catch {
            metrics.countFleetError()
            logger.error("fleet store: \(String(reflecting: error))")
            throw HTTPError(.serviceUnavailable, headers: [.retryAfter: "5"], message: "fleet store unavailable")
        }
    }

    private func jsonResponse(_ value: some Encodable) throws -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Response(
            status: .ok,
            headers: [.contentType: "application/json", .cacheControl: "no-store"],
            body: .init(byteBuffer: ByteBuffer(bytes: try encoder.encode(value)))
        )
    }
}
