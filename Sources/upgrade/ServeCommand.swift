import ArgumentParser
import Foundation
import Hummingbird
import Logging
import NIOCore
import UpgradeFleet
import UpgradeServer

/// `upgrade serve`.
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve a repository over HTTP(S): plans, signed files, objects, reports, /healthz, /metrics.",
        discussion: """
            The repository's own layout is served at the same paths a static mirror would use \
            (objects/, releases/, channels/), plus POST /v1/plan and POST /v1/reports. The server \
            holds no key. Prints "listening on URL" once the port is bound (use port 0 for any \
            free port).
            """
    )

    @Option(help: "Repository directory written by `upgrade publish`.") var repo: String
    @Option(help: "Address to listen on, HOST:PORT (port 0 picks a free one).") var listen = "127.0.0.1:8080"
    @Option(help: "PEM certificate chain for HTTPS.") var tlsCert: String?
    @Option(help: "PEM private key for HTTPS.") var tlsKey: String?
    @Option(help: "Append client reports (JSON lines) to this file.") var reports: String?
    @Option(help: "Log level: trace, debug, info, notice, warning, error.") var logLevel = "info"
    @Option(help: "Plans computed at once (default: one per core).") var planConcurrency: Int?
    @Option(help: "Plan requests that may wait for a turn; beyond it, 503 with Retry-After.") var planQueue = 1024
    @Option(help: "Entries a plan request may describe; larger requests get 413.") var maxEntries = 2_000_000
    @Option(help: "Seconds a connection may stay idle or take to send a request head.") var idleTimeout = 30.0
    @Option(help: "On-demand delta computations per plan (the rest travel whole).") var deltasPerRequest = 16
    @Option(help: "On-demand delta computations per minute over the whole server.") var deltasPerMinute = 120
    @Option(help: "Reports accepted per second from the whole fleet.") var reportsPerSecond = 500.0
    @Option(help: "Reports accepted per second from one device id (bursts of 10).") var reportsPerDevice = 1.0
    @Option(
        help: ArgumentHelp(
            "Fleet store: a SQLite file, postgres://USER[:PASSWORD]@HOST[:PORT]/DB, or none.",
            discussion: "Default: REPO-fleet.sqlite beside the repository directory.",
            valueName: "path|url|none"
        )
    ) var database: String?
    @Option(help: "Auto-halt: stop offering a release once more than this fraction of its first attempts failed (0-1).")
    var haltAbove: Double?
    @Option(help: "Auto-halt: how many first attempts at a release are counted.") var haltAfter = 20
    @Option(help: "Days of device history kept; devices not seen for longer are forgotten.") var retentionDays = 90.0
    @Option(help: "Require per-device tokens: a file of `DEVICE-ID SHA256-HEX` lines (see `upgrade fleet token`).")
    var deviceTokens: String?
    @Option(help: .hidden) var fault: [ServerFault] = []

    func validate() throws {
        _ = try ListenAddress(listen)
        if (tlsCert == nil) != (tlsKey == nil) { throw ValidationError("--tls-cert and --tls-key go together") }
        for (name, value) in [
            ("--plan-concurrency", planConcurrency ?? 1), ("--max-entries", maxEntries),
            ("--deltas-per-minute", deltasPerMinute),
        ] where value < 1 {
            throw ValidationError("\(name) must be at least 1, not \(value)")
        }
        for (name, value) in [("--plan-queue", planQueue), ("--deltas-per-request", deltasPerRequest)] where value < 0 {
            throw ValidationError("\(name) must not be negative, not \(value)")
        }
        for (name, value) in [
            ("--idle-timeout", idleTimeout), ("--reports-per-second", reportsPerSecond),
            ("--reports-per-device", reportsPerDevice),
        ] where !(value > 0) {
            throw ValidationError("\(name) must be a positive number, not \(value)")
        }
        if let haltAbove, !(haltAbove >= 0 && haltAbove < 1) {
            throw ValidationError("--halt-above must be a fraction from 0 to below 1 (0.2 for 20%), not \(haltAbove)")
        }
        if haltAfter < 1 { throw ValidationError("--halt-after must be at least 1, not \(haltAfter)") }
        if haltAbove != nil, database == "none" {
            throw ValidationError("--halt-above needs the fleet store (--database)")
        }
        if !(retentionDays > 0) {
            throw ValidationError("--retention-days must be a positive number, not \(retentionDays)")
        }
        guard FileManager.default.fileExists(atPath: repo + "/upgrade-repository.json") else {
            throw ValidationError(
                "\(repo) is not a repository (no upgrade-repository.json); create one with `upgrade publish`"
            )
        }
    }

    func run() async throws {
        var logger = Logger(label: "upgrade.serve")
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        var configuration = ServerConfiguration(repository: repo)
        let address = try ListenAddress(listen)
        configuration.host = address.host
        configuration.port = address.port
        configuration.reportsFile = reports
        configuration.faults = Set(fault)
        if let planConcurrency { configuration.planConcurrency = planConcurrency }
        configuration.planQueue = planQueue
        configuration.maxEntries = maxEntries
        configuration.idleTimeout = idleTimeout
        configuration.deltasPerRequest = deltasPerRequest
        configuration.deltasPerMinute = deltasPerMinute
        configuration.reportsPerSecond = reportsPerSecond
        configuration.reportsPerDevicePerSecond = reportsPerDevice
        if let tlsCert, let tlsKey { configuration.tls = (tlsCert, tlsKey) }
        if let deviceTokens { configuration.deviceTokens = try DeviceTokens(contentsOf: deviceTokens) }
        let store = try await openFleetStore(logger: logger)
        if let store {
            var fleet = FleetConfiguration(store: store)
            fleet.halt = haltAbove.map { HaltRule(above: $0, after: haltAfter) }
            fleet.retentionDays = retentionDays
            configuration.fleet = fleet
        }
        defer { if let store { Task { await store.close() } } }
        let scheme = configuration.tls == nil ? "http" : "https"
        let host = configuration.host
        let app = try buildApplication(configuration, logger: logger) { port in
            // Written straight to the descriptor: scripts and tests wait for this line.
            FileHandle.standardOutput.write(Data("listening on \(scheme)://\(host):\(port)\n".utf8))
        }
        do {
            try await app.runService()
        } catch let error as IOError where error.errnoCode == EADDRINUSE || error.errnoCode == EACCES {
            let why = error.errnoCode == EADDRINUSE ? "the address is already in use" : "permission denied"
            throw CommandFailure(description: "cannot listen on \(listen): \(why)", exitStatus: .failure)
        } catch let error as IOError {
            throw CommandFailure(description: "cannot listen on \(listen): \(error)", exitStatus: .failure)
        }
    }
}

extension ServeCommand {
    /// The store `--database` names (nil for `none`).
    func openFleetStore(logger: Logger) async throws -> (any FleetStore)? {
        let location: String
        switch database {
        case "none": return nil
        case let named?: location = named
        case nil:
            let repository = URL(fileURLWithPath: repo).standardizedFileURL
            location =
                repository.deletingLastPathComponent().appendingPathComponent(
                    repository.lastPathComponent + "-fleet.sqlite"
                ).path
        }
        do {
            return try await FleetStores.open(location, attemptsCounted: haltAfter, logger: logger)
        } catch {
            throw CommandFailure(
                description: "\(error); pass --database PATH or URL, or --database none",
                exitStatus: .usage
            )
        }
    }
}

/// `--listen HOST:PORT` (`[::1]:PORT` for IPv6; port 0 picks a free one).
struct ListenAddress {
    let host: String
    let port: Int

    init(_ text: String) throws {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
            (0...65535).contains(port), colon != text.startIndex
        else { throw ValidationError("--listen must be HOST:PORT, not \(text.debugDescription)") }
        host = String(text[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        self.port = port
    }
}

extension ServerFault: ExpressibleByArgument {}
