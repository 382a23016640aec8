public import Logging

/// Opens the store `upgrade serve --database` names.
public enum FleetStores {
    /// `location` is a PostgreSQL URL (`postgres://…`) or the path of a SQLite file (created
    /// with its schema when missing). `attemptsCounted` is the auto-halt rule's `after`.
    public static func open(_ location: String, attemptsCounted: Int, logger: Logger) async throws -> any FleetStore {
        let migrations = FleetLedger<SQLiteDatabase>.migrations
        if location.hasPrefix("postgres://") || location.hasPrefix("postgresql://") {
            let database = try PostgresDatabase(url: location, logger: logger)
            do {
                try await database.migrate(migrations(.postgres))
            } catch {
                await database.close()
                throw FleetStoreError.badDatabase(
                    "cannot use the PostgreSQL fleet store \(PostgresDatabase.redacted(location)): \(String(reflecting: error))"
                )
            }
            return FleetLedger(database: database, attemptsCounted: attemptsCounted)
        }
        let database = try SQLiteDatabase(path: location, migrations: migrations(.sqlite))
        return FleetLedger(database: database, attemptsCounted: attemptsCounted)
    }
}
