import Foundation
import Logging
import Synchronization
import UpgradeApply
import UpgradeProtocol
import UpgradeTrust

#if canImport(Glibc)
import Glibc
#endif

/// The server's auto-halt: it does not offer the channel's release (409 with `Upgrade-Halted`).
struct ReleaseHalted: Error {
    let reason: String
}

/// What the plan response's head said about a halt (read in the head callback).
final class HaltedHead: Sendable {
    let version = Mutex<String?>(nil)
}

/// Reports to the server: one per online run, and the ones queued by offline runs.
extension SyncClient {
    /// Reports an offline run keeps for the next online sync, oldest dropped beyond this.
    static let queuedReportLimit = 100

    /// This machine as plan requests and reports describe it.
    static func thisDevice(_ options: SyncOptions) -> PlanRequest.Device {
        var device = PlanRequest.Device(
            os: "linux",
            arch: PlanRequest.Device.hostArchitecture,
            id: options.deviceID ?? PlanRequest.Device.localID()
        )
        device.platform = ReleaseHeader.hostPlatform
        device.osVersion = PlanRequest.Device.hostOSVersion
        device.model = PlanRequest.Device.hostModel
        device.tags = options.tags.isEmpty ? nil : options.tags
        return device
    }

    /// `Authorization: Bearer` with the device token, for the server's plan and report routes.
    static func authorization(_ options: SyncOptions) -> [(String, String)] {
        options.deviceToken.map { [("Authorization", "Bearer " + $0)] } ?? []
    }

    static func outcome(
        options: SyncOptions,
        device: PlanRequest.Device,
        report: SyncReport,
        result: String,
        releaseDigest: String?
    ) -> SyncOutcome {
        var outcome = SyncOutcome(
            product: options.product,
            device: device,
            fromVersion: report.fromVersion,
            toVersion: report.toVersion,
            result: result,
            bytesDownloaded: report.bytesDownloaded,
            durationSeconds: report.durationSeconds
        )
        outcome.deltas = report.deltasUsed
        outcome.fallbacks = report.fallbacks.isEmpty ? nil : Array(report.fallbacks.prefix(50))
        if report.bytesFromPeers > 0 { outcome.peerBytes = report.bytesFromPeers }
        let bad = report.peers.filter(\.dropped).map { "\($0.url): \($0.status)" }
        if !bad.isEmpty { outcome.badPeers = Array(bad.prefix(20)) }
        outcome.releaseDigest = releaseDigest
        outcome.at = Date().formatted(.iso8601)
        return outcome
    }

    /// Sends one report; true when the server took it. A report is best effort: the run's
    /// result does not depend on it.
    @discardableResult
    static func sendReport(
        _ outcome: SyncOutcome,
        options: SyncOptions,
        transport: HTTPTransport,
        logger: Logger
    ) async -> Bool {
        guard let body = try? JSONEncoder().encode(outcome) else { return false }
        do {
            let (status, bytes) = try await transport.fetch(
                options.server.trimmingSuffix("/") + "/v1/reports",
                method: .POST,
                headers: [("Content-Type", "application/json")] + authorization(options),
                body: [UInt8](body),
                limit: 1 << 16
            )
            guard (200..<300).contains(status) else {
                logger.info(
                    "the server refused the sync report",
                    metadata: ["status": "\(status)", "why": "\(message(bytes))"]
                )
                return false
            }
            return true
        } catch {
            logger.info("could not send the sync report", metadata: ["error": "\(error)"])
            return false
        }
    }

    /// Keeps an offline run's report (marked `via: offline`) in the state directory for the
    /// next online sync; at most ``queuedReportLimit``, the oldest dropped.
    static func queueReport(_ outcome: SyncOutcome, session: RootSession) {
        var outcome = outcome
        outcome.via = "offline"
        guard let directory = try? session.directory("reports"), let bytes = try? JSONEncoder().encode(outcome) else {
            return
        }
        // Names sort by time: nanoseconds since 1970, then a random tail against collisions.
        let stamp = String(format: "%020.0f", Date().timeIntervalSince1970 * 1e9)
        let name = "\(stamp)-\(UInt32.random(in: 0...UInt32.max)).json"
        try? Data(bytes).write(to: URL(fileURLWithPath: directory + "/" + name + ".tmp"))
        rename(directory + "/" + name + ".tmp", directory + "/" + name)
        let queued = queuedReports(directory)
        for stale in queued.dropLast(queuedReportLimit) { unlink(directory + "/" + stale) }
    }

    /// Sends the queued reports, oldest first, removing each the server took; stops at the
    /// first it does not take (the rest wait for the next run).
    static func sendQueuedReports(
        session: RootSession,
        options: SyncOptions,
        transport: HTTPTransport,
        logger: Logger
    ) async {
        guard let directory = try? session.directory("reports") else { return }
        for name in queuedReports(directory) {
            let path = directory + "/" + name
            guard let data = FileManager.default.contents(atPath: path),
                let outcome = try? JSONDecoder().decode(SyncOutcome.self, from: data)
            else {
                unlink(path)
                continue
            }
            guard await sendReport(outcome, options: options, transport: transport, logger: logger) else { return }
            unlink(path)
        }
    }

    private static func queuedReports(_ directory: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.hasSuffix(".json") }
            .sorted()
    }
}
