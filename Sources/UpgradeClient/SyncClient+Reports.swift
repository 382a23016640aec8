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
            result: oneLine(result),
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

    /// The reported result of a run that ended with `error`.
    static func failed(_ error: any Error) -> String {
        "failed: \(error)".prefix(200).description
    }

    /// `text` on one line: a hook's output in an error message has newlines, which the server
    /// refuses in a report (no control characters).
    static func oneLine(_ text: String) -> String {
        String(
            String.UnicodeScalarView(
                text.unicodeScalars.map { $0.properties.generalCategory == .control ? " " : $0 }
            )
        )
    }

    /// What became of a report.
    enum ReportDelivery {
        /// The server took it.
        case taken
        /// The server will never take it (a 4xx other than 401, 408 and 429): dropped.
        case refused
        /// Not now (no answer, 5xx, 401, 408, 429): kept for the next run.
        case later
    }

    /// Sends one report. A report is best effort: the run's result does not depend on it.
    @discardableResult
    static func sendReport(
        _ outcome: SyncOutcome,
        options: SyncOptions,
        transport: HTTPTransport,
        logger: Logger
    ) async -> ReportDelivery {
        guard let body = try? JSONEncoder().encode(outcome) else { return .refused }
        do {
            let (status, bytes) = try await transport.fetch(
                options.server.trimmingSuffix("/") + "/v1/reports",
                method: .POST,
                headers: [("Content-Type", "application/json")] + authorization(options),
                body: [UInt8](body),
                limit: 1 << 16
            )
            if (200..<300).contains(status) { return .taken }
            let permanent = (400..<500).contains(status) && ![401, 408, 429].contains(status)
            logger.log(
                level: permanent ? .warning : .info,
                "the server refused the sync report",
                metadata: ["status": "\(status)", "why": "\(message(bytes))"]
            )
            return permanent ? .refused : .later
        } catch {
            logger.info("could not send the sync report", metadata: ["error": "\(error)"])
            return .later
        }
    }

    /// Sends the run's own report (after the queued ones, sent once the server answered the
    /// plan request, so the device's state ends at its newest run); one the server cannot take
    /// now is queued for the next run.
    static func deliverReport(
        _ outcome: SyncOutcome,
        session: RootSession,
        options: SyncOptions,
        transport: HTTPTransport,
        logger: Logger
    ) async {
        if await sendReport(outcome, options: options, transport: transport, logger: logger) == .later {
            queueReport(outcome, session: session)
        }
    }

    /// Keeps a report in the state directory for the next online sync; at most
    /// ``queuedReportLimit``, the oldest dropped.
    static func queueReport(_ outcome: SyncOutcome, session: RootSession) {
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

    /// Sends the queued reports, oldest first, removing each the server took or will never
    /// take; stops at the first it cannot take now (the rest wait for the next run).
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
            if await sendReport(outcome, options: options, transport: transport, logger: logger) == .later { return }
            unlink(path)
        }
    }

    private static func queuedReports(_ directory: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.hasSuffix(".json") }
            .sorted()
    }
}
