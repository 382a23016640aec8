import Foundation
import Logging
import PostgresNIO

/// The shared fleet store: PostgreSQL through postgres-nio's pooled client, so several
/// stateless plan servers keep one fleet. Migrations run under an advisory lock, so servers
/// starting together apply each one once.
final class PostgresDatabase: SQLDatabase {
    let client: PostgresClient
    private let running: Task<Void, Never>
    private let logger: Logger
    var dialect: SQLDialect { .postgres }

    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=disable|prefer|require]`.
    init(url: String, logger: Logger) throws {
        guard let components = URLComponents(string: url), let host = components.host, !host.isEmpty,
            let user = components.user, !user.isEmpty
        else {
            throw FleetStoreError.badDatabase(
                "\(Self.redacted(url)) is not postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
            )
        }
        let database = components.path.drop { $0 == "/" }
        let mode = components.queryItems?.first { $0.name == "sslmode" }?.value ?? "prefer"
        let tls: PostgresClient.Configuration.TLS
        switch mode {
        case "disable": tls = .disable
        case "prefer": tls = .prefer(.makeClientConfiguration())
        case "require": tls = .require(.makeClientConfiguration())
        default: throw FleetStoreError.badDatabase("sslmode \(mode) is not disable, prefer or require")
        }
        let configuration = PostgresClient.Configuration(
            host: host,
            port: components.port ?? 5432,
            username: user,
            password: components.password,
            database: database.isEmpty ? nil : String(database),
            tls: tls
        )
        client = PostgresClient(configuration: configuration, backgroundLogger: logger)
        let client = client
        running = Task { await client.run() }
        self.logger = logger
    }

    func migrate(_ migrations: [[String]]) async throws {
        let logger = logger
        try await client.withTransaction(logger: logger) { connection in
            try await connection.query("SELECT pg_advisory_xact_lock(58107)", logger: logger)
            try await connection.query(
                "CREATE TABLE IF NOT EXISTS upgrade_schema (version INTEGER PRIMARY KEY, applied DOUBLE PRECISION NOT NULL)",
                logger: logger
            )
            var applied = Set<Int>()
            for try await version in try await connection.query("SELECT version FROM upgrade_schema", logger: logger)
                .decode(Int.self)
            {
                applied.insert(version)
            }
            for (index, statements) in migrations.enumerated() where !applied.contains(index + 1) {
                for sql in statements { try await connection.query(PostgresQuery(unsafeSQL: sql), logger: logger) }
                let now = Date().timeIntervalSince1970
                try await connection.query("INSERT INTO upgrade_schema VALUES (\(index + 1), \(now))", logger: logger)
            }
        }
    }

    func transaction(_ statements: [SQLStatement]) async throws {
        let logger = logger
        let queries = try statements.map(Self.query)
        if queries.count == 1 {
            // One statement is its own transaction: one round trip instead of BEGIN, it, COMMIT.
            for try await _ in try await client.query(queries[0], logger: logger) {}
            return
        }
        try await client.withTransaction(logger: logger) { connection in
            for query in queries { try await connection.query(query, logger: logger) }
        }
    }

    func rows(_ statement: SQLStatement) async throws -> [[SQLValue]] {
        var result = [[SQLValue]]()
        for try await row in try await client.query(Self.query(statement), logger: logger) {
            result.append(
                try row.map { cell -> SQLValue in
                    guard cell.bytes != nil else { return .null }
                    switch cell.dataType {
                    case .int2, .int4, .int8: return .integer(try cell.decode(Int64.self))
                    case .float4, .float8: return .real(try cell.decode(Double.self))
                    default: return .text(try cell.decode(String.self))
                    }
                }
            )
        }
        return result
    }

    func close() async {
        running.cancel()
        _ = await running.value
    }

    /// `?` placeholders numbered as PostgreSQL wants them (`$1`, `$2`, …).
    private static func query(_ statement: SQLStatement) throws -> PostgresQuery {
        var sql = ""
        var number = 0
        for character in statement.sql {
            if character == "?" {
                number += 1
                sql += "$\(number)"
            } else {
                sql.append(character)
            }
        }
        var binds = PostgresBindings(capacity: statement.arguments.count)
        for argument in statement.arguments {
            switch argument {
            case .null: binds.appendNull()
            case .text(let text): binds.append(text)
            case .real(let real): binds.append(real)
            case .integer(let integer): binds.append(integer)
            }
        }
        return PostgresQuery(unsafeSQL: sql, binds: binds)
    }

    /// The URL without its password, for messages.
    static func redacted(_ url: String) -> String {
        guard var components = URLComponents(string: url), components.password != nil else { return url }
        components.password = "***"
        return components.string ?? url
    }
}
