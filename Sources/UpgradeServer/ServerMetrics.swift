import Synchronization

/// Counters for `/metrics` (Prometheus text format).
final class ServerMetrics: Sendable {
    private struct Counters {
        var requests: [Int: Int] = [:]
        var plans = 0
        var planErrors = 0
        var planSeconds = 0.0
        var objectBytes: UInt64 = 0
        var reports: [String: Int] = [:]
        var reportsRefused = 0
        var deltasOverBudget = 0
        var fleetErrors = 0
    }

    private let counters = Mutex(Counters())

    func countRequest(status: Int) { counters.withLock { $0.requests[status, default: 0] += 1 } }
    func countPlan(seconds: Double, failed: Bool) {
        counters.withLock {
            $0.plans += 1
            $0.planSeconds += seconds
            if failed { $0.planErrors += 1 }
        }
    }
    func countObjectBytes(_ bytes: Int) { counters.withLock { $0.objectBytes += UInt64(bytes) } }
    /// `result` is one of ``ReportSchema/resultClasses`` or `other`: a bounded label set.
    func countReport(result: String) { counters.withLock { $0.reports[result, default: 0] += 1 } }
    func countReportRefused() { counters.withLock { $0.reportsRefused += 1 } }
    func countDeltaOverBudget() { counters.withLock { $0.deltasOverBudget += 1 } }
    func countFleetError() { counters.withLock { $0.fleetErrors += 1 } }

    /// A label value as the exposition format wants it: backslash, quote and newline escaped.
    static func escape(_ value: String) -> String {
        var escaped = ""
        for character in value {
            switch character {
            case "\\": escaped += "\\\\"
            case "\"": escaped += "\\\""
            case "\n": escaped += "\\n"
            default: escaped.append(character)
            }
        }
        return escaped
    }

    /// The exposition text.
    func render() -> String {
        counters.withLock { c in
            var lines = [
                "# HELP upgrade_http_requests_total HTTP requests by status code.",
                "# TYPE upgrade_http_requests_total counter",
            ]
            for (status, count) in c.requests.sorted(by: { $0.key < $1.key }) {
                lines.append("upgrade_http_requests_total{code=\"\(status)\"} \(count)")
            }
            lines += [
                "# HELP upgrade_plans_total Plans computed.", "# TYPE upgrade_plans_total counter",
                "upgrade_plans_total \(c.plans)",
                "# HELP upgrade_plan_errors_total Plan requests refused.", "# TYPE upgrade_plan_errors_total counter",
                "upgrade_plan_errors_total \(c.planErrors)",
                "# HELP upgrade_plan_seconds_total Time spent computing plans.",
                "# TYPE upgrade_plan_seconds_total counter",
                "upgrade_plan_seconds_total \(c.planSeconds)",
                "# HELP upgrade_object_bytes_total Object bytes requested (ranges counted as requested).",
                "# TYPE upgrade_object_bytes_total counter", "upgrade_object_bytes_total \(c.objectBytes)",
                "# HELP upgrade_sync_reports_total Sync outcomes reported by clients.",
                "# TYPE upgrade_sync_reports_total counter",
            ]
            for (result, count) in c.reports.sorted(by: { $0.key < $1.key }) {
                lines.append("upgrade_sync_reports_total{result=\"\(Self.escape(result))\"} \(count)")
            }
            lines += [
                "# HELP upgrade_reports_refused_total Reports refused for exceeding the rate limits.",
                "# TYPE upgrade_reports_refused_total counter", "upgrade_reports_refused_total \(c.reportsRefused)",
                "# HELP upgrade_deltas_over_budget_total Files sent whole because the on-demand delta budget was spent.",
                "# TYPE upgrade_deltas_over_budget_total counter",
                "upgrade_deltas_over_budget_total \(c.deltasOverBudget)",
                "# HELP upgrade_fleet_store_errors_total Fleet store operations that failed.",
                "# TYPE upgrade_fleet_store_errors_total counter", "upgrade_fleet_store_errors_total \(c.fleetErrors)",
            ]
            return lines.joined(separator: "\n") + "\n"
        }
    }
}
