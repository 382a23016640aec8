import Foundation
import GRDB

/// The embedded fleet store: one SQLite file (WAL), migrations through GRDB's migrator.
struct SQLiteDatabase: SQLDatabase {
    let pool: DatabasePool
    var dialect: SQLDialect { .sqlite }

    init(path: String, migrations: [[String]]) throws {
        var configuration = Configuration()
        // Another process on the same file (a second `upgrade serve`) waits instead of failing.
        configuration.busyMode = .timeout(10)
        do {
            pool = try DatabasePool(path: path, configuration: configuration)
            var migrator = DatabaseMigrator()
            for (index, statements) in migrations.enumerated() {
                migrator.registerMigration("v\(index + 1)") { db in
                    for sql in statements { try db.execute(sql: sql) }
                }
            }
            try migrator.migrate(pool)
        } catch {
            throw FleetStoreError.badDatabase("cannot open the SQLite fleet store \(path): \(error)")
        }
    }

    func transaction(_ statements: [SQLStatement]) async throws {
        try await pool.write { db in
            for statement in statements {
                try db.execute(sql: statement.sql, arguments: Self.arguments(statement))
            }
        }
    }

    func rows(_ statement: SQLStatement) async throws -> [[SQLValue]] {
        try await pool.read { db in
            try Row.fetchAll(db, sql: statement.sql, arguments: Self.arguments(statement)).map { row in
                row.databaseValues.map { value in
                    switch value.storage {
                    case .null, .blob: .null
                    case .int64(let integer): .integer(integer)
                    case .double(let real): .real(real)
                    case .string(let text): .text(text)
                    }
                }
            }
        }
    }

    func close() async { try? pool.close() }

    private static func arguments(_ statement: SQLStatement) -> StatementArguments {
        StatementArguments(
            statement.arguments.map { value -> DatabaseValue in
                switch value {
                case .null: .null
                case .text(let text): text.databaseValue
                case .real(let real): real.databaseValue
                case .integer(let integer): integer.databaseValue
                }
            }
        )
    }
}
