import Foundation
public import Hummingbird
import HummingbirdCore
import HummingbirdTLS
public import Logging
import NIOSSL
import UpgradeProtocol

/// How `upgrade serve` runs.
public struct ServerConfiguration: Sendable {
    /// The repository directory written by `upgrade publish`.
    public var repository: String
    public var host = "127.0.0.1"
    /// 0 picks a free port (reported through `onServerRunning`).
    public var port = 8080
    /// PEM certificate chain and key for HTTPS.
    public var tls: (certificate: String, key: String)?
    /// Where sync outcomes are appended (JSON lines); nil keeps only the counters.
    public var reportsFile: String?
    /// Largest request body accepted (compressed).
    public var maxRequestBytes = 64 << 20
    /// Largest request body after decompression.
    public var maxDecompressedBytes = 256 << 20
    /// A zstd request body may expand to at most this many times its compressed size (and at
    /// least 1 MiB): a 16 KB bomb costs 1 MiB, not the absolute cap.
    public var maxExpansion = 64
    /// Entries a plan request may describe (a whole manifest, or a delta's changes and
    /// removals); a larger request is refused with 413 before its entries are decoded.
    public var maxEntries = 2_000_000
    /// Plans computed at once; the rest wait in a queue of `planQueue`, and beyond it get 503
    /// with `Retry-After`. A waiting request has not read its body yet, so it costs a socket.
    public var planConcurrency = max(1, ProcessInfo.processInfo.activeProcessorCount)
    public var planQueue = 1024
    /// Seconds a connection may sit without a complete request head or between requests
    /// before it is closed (slow-header and idle connections).
    public var idleTimeout: Double = 30
    /// Pending-connection queue of the listening socket (a burst of connects beyond it is reset).
    public var backlog = 4096
    /// On-demand delta computations one plan may start, and the server-wide budget per minute;
    /// files beyond them travel whole (and a later plan may find the cached delta).
    public var deltasPerRequest = 16
    public var deltasPerMinute = 120
    /// Reports accepted per second from the whole fleet, and per device id (burst 10).
    public var reportsPerSecond: Double = 500
    public var reportsPerDevicePerSecond: Double = 1
    /// Offer binary deltas (computed on demand and cached in the repository).
    public var deltas = true
    /// zstd level for deltas computed on demand.
    public var deltaLevel: Int32 = 19
    /// Files larger than this always travel whole (bounds the server's memory per delta).
    public var maxDeltaFileSize = 64 << 20
    /// Ways to lie, for tests of the client's defences only (`upgrade serve --fault`, hidden),
    /// applied by a middleware outside the handlers.
    public var faults: Set<ServerFault> = []
    /// The fleet store and its rules (nil: reports only counted and, with `reportsFile`, logged).
    public var fleet: FleetConfiguration?
    /// Per-device credentials: with them, plan requests and reports need
    /// `Authorization: Bearer TOKEN` for the device id they name (else 401).
    public var deviceTokens: DeviceTokens?

    public init(repository: String) {
        self.repository = repository
    }
}

/// Builds the server application; `upgrade serve` runs it and tests build the same one on port 0.
public func buildApplication(
    _ configuration: ServerConfiguration,
    logger: Logger,
    onServerRunning: @escaping @Sendable (Int) async -> Void = { _ in }
) throws -> some ApplicationProtocol {
    let service = PlanService(configuration: configuration, logger: logger)
    let router = Router()
    router.add(middleware: MetricsCountingMiddleware(metrics: service.metrics))
    if !configuration.faults.isEmpty { router.add(middleware: FaultMiddleware(faults: configuration.faults)) }
    service.addRoutes(to: router)

    // The idle timeout also closes a connection whose request head is not complete in time
    // (Hummingbird's state handler counts only decoded parts as activity), which is what a
    // slowloris client holding connections open with a byte now and then runs into.
    let http1 = HTTP1Channel.Configuration(idleTimeout: .milliseconds(Int64(configuration.idleTimeout * 1000)))
    let server: HTTPServerBuilder
    if let tls = configuration.tls {
        let chain = try ServerSetupError.loading("--tls-cert", tls.certificate) {
            try NIOSSLCertificate.fromPEMFile(tls.certificate).map { NIOSSLCertificateSource.certificate($0) }
        }
        let key = try ServerSetupError.loading("--tls-key", tls.key) {
            try NIOSSLPrivateKey(file: tls.key, format: .pem)
        }
        let tlsConfiguration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain,
            privateKey: .privateKey(key)
        )
        server = try .tls(.http1(configuration: http1), tlsConfiguration: tlsConfiguration)
    } else {
        server = .http1(configuration: http1)
    }
    return Application(
        router: router,
        server: server,
        configuration: .init(
            address: .hostname(configuration.host, port: configuration.port),
            serverName: "upgrade",
            backlog: configuration.backlog
        ),
        onServerRunning: { channel in await onServerRunning(channel.localAddress?.port ?? configuration.port) },
        logger: logger
    )
}

/// Counts every request by route and status.
struct MetricsCountingMiddleware<Context: RequestContext>: RouterMiddleware {
    let metrics: ServerMetrics

    func handle(
        _ request: Request,
        context: Context,
        next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        do {
            let response = try await next(request, context)
            metrics.countRequest(status: response.status.code)
            return response
        } catch let error as HTTPError {
            metrics.countRequest(status: error.status.code)
            throw error
        } catch {
            metrics.countRequest(status: 500)
            throw error
        }
    }
}

/// A server that cannot start as configured; the message names the flag and the file or address.
public struct ServerSetupError: Error, CustomStringConvertible {
    public let description: String

    /// Runs `load`, turning NIO SSL's bare errors (`failedToLoadCertificate`) into one naming
    /// `flag` and `path` and saying what is wrong with the file.
    static func loading<T>(_ flag: String, _ path: String, _ load: () throws -> T) throws -> T {
        do {
            return try load()
        } catch {
            let why =
                access(path, F_OK) != 0
                ? "no such file"
                : access(path, R_OK) != 0 ? "cannot be read" : "not a PEM file NIO SSL can load (\(error))"
            throw ServerSetupError(description: "\(flag) \(path): \(why)")
        }
    }
}
