import Foundation
import Hummingbird
import Logging
import Synchronization
import UpgradeCore
import UpgradeProtocol
import UpgradeRepository
import UpgradeTrust
import UpgradeZstd

#if canImport(Glibc)
import Glibc
#endif

// POST /v1/report: a device's outcome, checked, rate-limited, logged, appended, recorded.
extension PlanService {

    func report(_ request: Request, context: BasicRequestContext) async throws -> Response {
        let credential = try configuration.deviceTokens?.credential(request.headers[.authorization])
        let body = try await collect(request, limit: 64 << 10)
        let outcome: SyncOutcome
        do {
            outcome = try JSONDecoder().decode(SyncOutcome.self, from: body)
        } catch {
            throw HTTPError(.badRequest, message: "malformed report: \(JSON.describe(error))")
        }
        if let problem = ReportSchema.problem(outcome) {
            throw HTTPError(.badRequest, message: "report: \(problem)")
        }
        try configuration.deviceTokens?.require(credential, for: outcome.device.id)
        guard reportLimiter.admit(outcome.device.id) else {
            metrics.countReportRefused()
            throw HTTPError(
                .tooManyRequests,
                headers: [.retryAfter: "1"],
                message: "too many reports; retry after 1 s"
            )
        }
        metrics.countReport(result: ReportSchema.resultClass(outcome.result))
        logger.info(
            "report",
            metadata: [
                "product": "\(outcome.product)", "device": "\(outcome.device.id)", "result": "\(outcome.result)",
                "to": "\(outcome.toVersion ?? "-")",
            ]
        )
        if let file = configuration.reportsFile {
            // Re-encoded, not the client's bytes: JSONEncoder escapes every control character, so
            // one report is always exactly one line.
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            var line = [UInt8](try encoder.encode(outcome))
            line.append(0x0a)
            try appendReport(line, to: file)
        }
        try await fleet?.record(outcome)
        return Response(status: .accepted)
    }

    /// Appends one line to the reports file, opened once with O_APPEND (one write per line, so
    /// lines never interleave) and created 0640 whatever the umask.
    func appendReport(_ line: [UInt8], to file: String) throws {
        try reportsFile.withLock { descriptor in
            if descriptor == nil {
                let opened = open(file, O_WRONLY | O_APPEND | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o640)
                if opened >= 0 {
                    fchmod(opened, 0o640)
                    descriptor = opened
                } else if errno == EEXIST {
                    let existing = open(file, O_WRONLY | O_APPEND | O_NOFOLLOW | O_CLOEXEC)
                    if existing >= 0 { descriptor = existing }
                }
            }
            guard let descriptor else {
                logger.error("reports file \(file): \(String(cString: strerror(errno)))")
                throw HTTPError(.internalServerError, message: "reports file unavailable")
            }
            let written = line.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
            if written != line.count {
                logger.error("reports file \(file): short write")
                throw HTTPError(.internalServerError, message: "reports file unavailable")
            }
        }
    }
}
