import Foundation
import UpgradeProtocol
import UpgradeTrust

/// A value in or out of a SQL statement.
enum SQLValue: Sendable, Equatable {
    case null
    case text(String)
    case real(Double)
    case integer(Int64)

    init(_ text: String?) { self = text.map { .text($0) } ?? .null }

    var text: String? {
        if case .text(let value) = self { return value }
        return nil
    }
    var integer: Int64 {
        switch self {
        case .integer(let value): value
        case .real(let value): Int64(value)
        default: 0
        }
    }
    var real: Double {
        switch self {
        case .real(let value): value
        case .integer(let value): Double(value)
        default: 0
        }
    }
}

/// One statement: SQL with `?` placeholders and its arguments.
struct SQLStatement: Sendable {
    var sql: String
    var arguments: [SQLValue]
    init(_ sql: String, _ arguments: [SQLValue] = []) {
        self.sql = sql
        self.arguments = arguments
    }
}

/// Where the two databases differ in what the ledger writes.
enum SQLDialect: Sendable {
    case sqlite
    case postgres

    var real: String { self == .sqlite ? "REAL" : "DOUBLE PRECISION" }
    var bigint: String { self == .sqlite ? "INTEGER" : "BIGINT" }
    var serial: String { self == .sqlite ? "INTEGER PRIMARY KEY AUTOINCREMENT" : "BIGSERIAL PRIMARY KEY" }
    var greatest: String { self == .sqlite ? "MAX" : "GREATEST" }
    /// `haystack` (a `,a,b,` list) holds `,needle,`.
    func contains(_ haystack: String, _ needle: String) -> String {
        self == .sqlite ? "instr(\(haystack), \(needle)) > 0" : "position(\(needle) in \(haystack)) > 0"
    }
}

/// A database the ledger runs on: statements in one transaction, queries returning rows.
protocol SQLDatabase: Sendable {
    var dialect: SQLDialect { get }
    func transaction(_ statements: [SQLStatement]) async throws
    func rows(_ statement: SQLStatement) async throws -> [[SQLValue]]
    func close() async
}

/// The fleet store's logic over either database: schema, migrations, writes and queries.
final class FleetLedger<Database: SQLDatabase>: FleetStore {
    let database: Database
    /// Attempts counted per release for auto-halt (the rule's `after`).
    let attemptsCounted: Int
    /// History rows kept per device.
    let historyPerDevice: Int

    init(database: Database, attemptsCounted: Int, historyPerDevice: Int = 100) {
        self.database = database
        self.attemptsCounted = attemptsCounted
        self.historyPerDevice = historyPerDevice
    }

    /// Schema versions in order; a store records the ones it applied and applies the rest.
    static func migrations(_ d: SQLDialect) -> [[String]] {
        [
            [
                """
                CREATE TABLE devices (
                    product TEXT NOT NULL, device_id TEXT NOT NULL, version TEXT, release_digest TEXT,
                    attempted TEXT, result TEXT, reason TEXT, last_seen \(d.real) NOT NULL,
                    last_report \(d.real), bytes_server \(d.bigint) NOT NULL DEFAULT 0,
                    bytes_peers \(d.bigint) NOT NULL DEFAULT 0, platform TEXT, os_version TEXT, model TEXT,
                    tags TEXT NOT NULL DEFAULT ',', via TEXT, PRIMARY KEY (product, device_id))
                """,
                "CREATE INDEX devices_version ON devices (product, version)",
                "CREATE INDEX devices_result ON devices (product, result)",
                "CREATE INDEX devices_seen ON devices (last_seen)",
                """
                CREATE TABLE history (
                    id \(d.serial), product TEXT NOT NULL, device_id TEXT NOT NULL, at \(d.real) NOT NULL,
                    received \(d.real) NOT NULL, from_version TEXT, to_version TEXT, result TEXT NOT NULL,
                    reason TEXT, bytes_server \(d.bigint) NOT NULL, bytes_peers \(d.bigint) NOT NULL, via TEXT NOT NULL)
                """,
                "CREATE INDEX history_device ON history (product, device_id, at)",
                "CREATE INDEX history_at ON history (at)",
                """
                CREATE TABLE release_attempts (
                    product TEXT NOT NULL, version TEXT NOT NULL, attempts \(d.bigint) NOT NULL,
                    failures \(d.bigint) NOT NULL, PRIMARY KEY (product, version))
                """,
            ]
        ]
    }

    func contact(_ contact: FleetContact) async throws {
        let d = database.dialect
        try await database.transaction([
            SQLStatement(
                """
                INSERT INTO devices (product, device_id, version, last_seen, platform, os_version, model, tags)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (product, device_id) DO UPDATE SET
                    release_digest = CASE WHEN devices.version = excluded.version
                        THEN devices.release_digest ELSE NULL END,
                    version = excluded.version, last_seen = \(d.greatest)(devices.last_seen, excluded.last_seen),
                    platform = excluded.platform, os_version = excluded.os_version, model = excluded.model,
                    tags = excluded.tags
                """,
                [
                    .text(contact.product), .text(contact.deviceID), SQLValue(contact.version),
                    .real(contact.at.timeIntervalSince1970), SQLValue(contact.platform), SQLValue(contact.osVersion),
                    SQLValue(contact.model), .text(Self.tagList(contact.tags)),
                ]
            )
        ])
    }

    func record(_ report: FleetReport) async throws {
        let d = database.dialect
        let device: [SQLValue] = [.text(report.product), .text(report.deviceID)]
        var statements = [
            // The device's state follows its newest run; an older queued report only adds history
            // and its bytes.
            SQLStatement(
                """
                INSERT INTO devices (product, device_id, version, release_digest, attempted, result, reason,
                    last_seen, last_report, platform, os_version, model, tags, via)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (product, device_id) DO UPDATE SET
                    version = excluded.version, release_digest = excluded.release_digest,
                    attempted = excluded.attempted, result = excluded.result, reason = excluded.reason,
                    last_report = excluded.last_report, platform = excluded.platform,
                    os_version = excluded.os_version, model = excluded.model, tags = excluded.tags,
                    via = excluded.via
                WHERE devices.last_report IS NULL OR devices.last_report <= excluded.last_report
                """,
                device + [
                    SQLValue(report.version), SQLValue(report.releaseDigest), SQLValue(report.attempted),
                    .text(report.result), SQLValue(report.reason), .real(report.received.timeIntervalSince1970),
                    .real(report.at.timeIntervalSince1970), SQLValue(report.platform), SQLValue(report.osVersion),
                    SQLValue(report.model), .text(Self.tagList(report.tags)), .text(report.via),
                ]
            ),
            SQLStatement(
                """
                UPDATE devices SET bytes_server = bytes_server + ?, bytes_peers = bytes_peers + ?,
                    last_seen = \(d.greatest)(last_seen, ?)
                WHERE product = ? AND device_id = ?
                """,
                [
                    .integer(Int64(clamping: report.bytesFromServer)), .integer(Int64(clamping: report.bytesFromPeers)),
                    .real(report.received.timeIntervalSince1970),
                ] + device
            ),
            SQLStatement(
                """
                INSERT INTO history (product, device_id, at, received, from_version, to_version, result, reason,
                    bytes_server, bytes_peers, via)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
                device + [
                    .real(report.at.timeIntervalSince1970), .real(report.received.timeIntervalSince1970),
                    SQLValue(report.fromVersion), SQLValue(report.toVersion), .text(report.result),
                    SQLValue(report.reason), .integer(Int64(clamping: report.bytesFromServer)),
                    .integer(Int64(clamping: report.bytesFromPeers)), .text(report.via),
                ]
            ),
            // Bounded history per device: the newest rows stay.
            SQLStatement(
                """
                DELETE FROM history WHERE product = ? AND device_id = ? AND id NOT IN (
                    SELECT id FROM history WHERE product = ? AND device_id = ? ORDER BY at DESC, id DESC LIMIT ?)
                """,
                device + device + [.integer(Int64(historyPerDevice))]
            ),
        ]
        if report.isAttempt, let version = report.toVersion {
            // Only the first attempts count; the row stops growing once it has them.
            statements.append(
                SQLStatement(
                    """
                    INSERT INTO release_attempts (product, version, attempts, failures) VALUES (?, ?, 1, ?)
                    ON CONFLICT (product, version) DO UPDATE SET
                        attempts = release_attempts.attempts + 1,
                        failures = release_attempts.failures + excluded.failures
                    WHERE release_attempts.attempts < ?
                    """,
                    [
                        .text(report.product), .text(version), .integer(report.isFailure ? 1 : 0),
                        .integer(Int64(attemptsCounted)),
                    ]
                )
            )
        }
        try await database.transaction(statements)
    }

    static var deviceColumns: String {
        """
        product, device_id, version, release_digest, attempted, result, reason, last_seen, bytes_server,
        bytes_peers, platform, os_version, model, tags, via
        """
    }

    func devices(_ query: DeviceQuery) async throws -> DeviceList {
        var conditions = [String]()
        var arguments = [SQLValue]()
        if let product = query.product {
            conditions.append("product = ?")
            arguments.append(.text(product))
        }
        if let version = query.version {
            conditions.append("version = ?")
            arguments.append(.text(version))
        }
        let results = query.results.flatMap { $0 == "failing" ? ["failed", "rolled-back"] : [$0] }
        if !results.isEmpty {
            conditions.append("result IN (" + results.map { _ in "?" }.joined(separator: ", ") + ")")
            arguments += results.map { .text($0) }
        }
        if let tag = query.tag {
            conditions.append(database.dialect.contains("tags", "?"))
            arguments.append(.text("," + tag + ","))
        }
        if let unseen = query.unseenSince {
            conditions.append("last_seen < ?")
            arguments.append(.real(unseen.timeIntervalSince1970))
        }
        let filter = conditions.isEmpty ? "" : " WHERE " + conditions.joined(separator: " AND ")
        let order = query.oldestFirst ? "last_seen ASC" : "last_seen DESC"
        let rows = try await database.rows(
            SQLStatement(
                "SELECT \(Self.deviceColumns) FROM devices\(filter) ORDER BY \(order), device_id LIMIT ?",
                arguments + [.integer(Int64(max(0, query.limit)))]
            )
        )
        let total = try await database.rows(SQLStatement("SELECT COUNT(*) FROM devices\(filter)", arguments))
        return DeviceList(devices: rows.map(Self.device), total: Int(total.first?.first?.integer ?? 0))
    }

    func releases(product: String?) async throws -> [FleetSummary.Release] {
        let filter = product == nil ? "" : " WHERE product = ?"
        let arguments = product.map { [SQLValue.text($0)] } ?? []
        let counts = try await database.rows(
            SQLStatement(
                """
                SELECT product, version, COUNT(*),
                    COUNT(CASE WHEN result IN ('failed', 'rolled-back') THEN 1 END)
                FROM devices\(filter) GROUP BY product, version
                """,
                arguments
            )
        )
        let attempts = try await database.rows(
            SQLStatement("SELECT product, version, attempts, failures FROM release_attempts\(filter)", arguments)
        )
        var releases = [String: FleetSummary.Release]()
        func key(_ product: String, _ version: String?) -> String { product + "\n" + (version ?? "") }
        for row in counts {
            var release = FleetSummary.Release(
                product: row[0].text ?? "",
                version: row[1].text,
                devices: Int(row[2].integer)
            )
            release.failing = Int(row[3].integer)
            releases[key(release.product, release.version)] = release
        }
        for row in attempts {
            let product = row[0].text ?? ""
            let version = row[1].text
            var release = releases[key(product, version)] ?? .init(product: product, version: version, devices: 0)
            release.attempts = Int(row[2].integer)
            release.failures = Int(row[3].integer)
            releases[key(product, version)] = release
        }
        // Product, then release in version order; devices with nothing installed first.
        func order(_ release: FleetSummary.Release) -> (String, Version?) {
            (release.product, release.version.flatMap { Version($0) })
        }
        return releases.values.sorted { left, right in
            let (a, b) = (order(left), order(right))
            if a.0 != b.0 { return a.0 < b.0 }
            switch (a.1, b.1) {
            case (nil, nil): return false
            case (nil, _): return true
            case (_, nil): return false
            case (let x?, let y?): return x < y
            }
        }
    }

    func attempts(product: String, version: String) async throws -> (attempts: Int, failures: Int) {
        let rows = try await database.rows(
            SQLStatement(
                "SELECT attempts, failures FROM release_attempts WHERE product = ? AND version = ?",
                [.text(product), .text(version)]
            )
        )
        guard let row = rows.first else { return (0, 0) }
        return (Int(row[0].integer), Int(row[1].integer))
    }

    func prune(before: Date) async throws {
        let cutoff = SQLValue.real(before.timeIntervalSince1970)
        try await database.transaction([
            SQLStatement("DELETE FROM history WHERE at < ?", [cutoff]),
            SQLStatement("DELETE FROM devices WHERE last_seen < ?", [cutoff]),
        ])
    }

    func close() async { await database.close() }

    static func tagList(_ tags: [String]) -> String {
        "," + tags.filter { !$0.contains(",") }.sorted().joined(separator: ",") + (tags.isEmpty ? "" : ",")
    }

    static func device(_ row: [SQLValue]) -> DeviceState {
        var device = DeviceState(
            product: row[0].text ?? "",
            id: row[1].text ?? "",
            lastSeen: Date(timeIntervalSince1970: row[7].real).fleetStamp
        )
        device.version = row[2].text
        device.releaseDigest = row[3].text
        device.attempted = row[4].text
        device.result = row[5].text
        device.reason = row[6].text
        device.bytesFromServer = UInt64(clamping: row[8].integer)
        device.bytesFromPeers = UInt64(clamping: row[9].integer)
        device.platform = row[10].text
        device.osVersion = row[11].text
        device.model = row[12].text
        device.tags = (row[13].text ?? "").split(separator: ",").map(String.init)
        device.via = row[14].text
        return device
    }
}
