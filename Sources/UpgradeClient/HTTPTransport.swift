import AsyncHTTPClient
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOSSL
import UpgradeSystem
import UpgradeZstd

#if canImport(Glibc)
import Glibc
#endif

/// How slow a transfer may be before it is abandoned, and when the whole run gives up.
struct TransferLimits: Sendable {
    /// A transfer that delivers fewer bytes than this per second, measured over `window`, is
    /// abandoned (like curl's `--speed-limit`/`--speed-time`): a source trickling 1 byte/s would
    /// otherwise never trip the read timeout.
    var minimumRate: UInt64 = 1024
    /// Seconds over which `minimumRate` is measured.
    var window: Double = 30
    /// The run's deadline (`--timeout`); nil waits as long as the sources keep up the rate.
    var deadline: ContinuousClock.Instant?

    /// Seconds left before the deadline, or nil without one.
    var remaining: Double? {
        deadline.map { now in
            let left = ContinuousClock.now.duration(to: now).components
            return Double(left.seconds) + Double(left.attoseconds) / 1e18
        }
    }

    /// Throws when the run's deadline has passed.
    func checkDeadline(_ what: String) throws {
        if let remaining, remaining <= 0 { throw SyncError.timedOut(what) }
    }
}

/// Watches one response body: its rate over the window, and the run's deadline.
struct RateWatch {
    let limits: TransferLimits
    let url: String
    private var windowStart = ContinuousClock.now
    private var windowBytes: UInt64 = 0

    init(limits: TransferLimits, url: String) {
        self.limits = limits
        self.url = url
    }

    /// Counts `bytes` that just arrived; throws when the source is too slow or time is up.
    mutating func received(_ bytes: Int) throws {
        windowBytes += UInt64(bytes)
        try limits.checkDeadline("receiving \(url)")
        let elapsed = windowStart.duration(to: .now).components
        let seconds = Double(elapsed.seconds) + Double(elapsed.attoseconds) / 1e18
        guard seconds >= limits.window else { return }
        let rate = Double(windowBytes) / seconds
        if rate < Double(limits.minimumRate) {
            throw SyncError.tooSlow(url: url, bytesPerSecond: rate, window: seconds)
        }
        windowStart = .now
        windowBytes = 0
    }
}

/// Errors no retry can fix, told apart from passing trouble so that a run does not spend a
/// minute of backoff on them, each with the hint a person needs.
enum PermanentFailure {
    static func classify(_ error: any Error, what: String) -> SyncError? {
        if let error = error as? HTTPClientError {
            let unusable: [HTTPClientError] = [.invalidURL, .emptyHost, .emptyScheme]
            guard unusable.contains(error) || "\(error)".contains("unsupportedScheme") else { return nil }
            return .permanent("\(what): not a usable URL (\(error)); URLs start with http:// or https://")
        }
        let text = "\(error)"
        if error is NIOSSLError || text.contains("BoringSSL") || text.contains("handshakeFailed") {
            if text.contains("WRONG_VERSION_NUMBER") || text.contains("wrong version number") {
                return .permanent("\(what): the server does not speak TLS here (\(text)); try http://")
            }
            if text.contains("CERTIFICATE_VERIFY_FAILED") || text.contains("certificate verify failed") {
                return .permanent(
                    "\(what): the server's certificate is not trusted (\(text)); pass --ca-cert FILE with the CA that signed it"
                )
            }
            return .permanent("\(what): TLS failed (\(text)); check https:// and --ca-cert")
        }
        // Only an answer that does not start like HTTP at all (TLS bytes); a response cut
        // short (`invalidEOFState`) is passing trouble and retried.
        if let parser = error as? HTTPParserError,
            [.invalidConstant, .invalidVersion, .invalidStatus].contains(parser),
            what.contains("http://")
        {
            return .permanent("\(what): the answer is not HTTP (\(text)); if the server speaks TLS, use https://")
        }
        return nil
    }
}

/// HTTP with retries and backoff over AsyncHTTPClient.
final class HTTPTransport: Sendable {
    let client: HTTPClient
    let attempts: Int
    let limits: TransferLimits
    /// Every response body byte received, for the report.
    ///
    /// A copyable lock box, not a `Mutex` or `Atomic`: with a noncopyable stored property the
    /// Swift 6.3.1 optimizer crashed (CopyPropagation, "Found outside of lifetime use") when it
    /// inlined this class's deinit into `SyncClient`, where the transports are made and dropped.
    private let received = NIOLockedValueBox<UInt64>(0)
    /// HOST:PORT of the proxy requests go through, for messages.
    private let configuredProxy: String?

    /// Response body bytes received so far, over every request.
    var bytesReceived: UInt64 { received.withLockedValue { $0 } }

    init(
        caCertificate: String?,
        readTimeout: Int64,
        attempts: Int,
        connectTimeout: Int64 = 10,
        limits: TransferLimits = TransferLimits(),
        proxy: HTTPClient.Configuration.Proxy? = nil
    ) throws {
        var tls = TLSConfiguration.makeClientConfiguration()
        if let caCertificate {
            tls.trustRoots = .certificates(try Self.loadCertificates(caCertificate))
        }
        var configuration = HTTPClient.Configuration(tlsConfiguration: tls)
        configuration.proxy = proxy
        // Connection failures come back to `retrying` at once, which retries what is passing
        // and stops at what is permanent (a certificate, a TLS mismatch). With the pool's own
        // retries on, a TLS failure surfaced only when the connect timeout ran out (10 s).
        configuration.connectionPool.retryConnectionEstablishment = false
        configuration.timeout = .init(connect: .seconds(connectTimeout), read: .seconds(readTimeout))
        configuration.decompression = .disabled
        client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        configuredProxy = proxy.map { "\($0.host):\($0.port)" }
        self.attempts = attempts
        self.limits = limits
    }

    /// The PEM certificates of `--ca-cert`; errors name the path and what is wrong with it.
    private static func loadCertificates(_ path: String) throws -> [NIOSSLCertificate] {
        guard let data = FileManager.default.contents(atPath: path) else {
            let why = access(path, F_OK) == 0 ? "cannot be read" : "no such file"
            throw SyncError.configuration("--ca-cert \(path): \(why)")
        }
        do {
            let certificates = try NIOSSLCertificate.fromPEMBytes([UInt8](data))
            guard !certificates.isEmpty else {
                throw SyncError.configuration("--ca-cert \(path): no certificate in it")
            }
            return certificates
        } catch let error as SyncError {
            throw error
        } catch {
            throw SyncError.configuration("--ca-cert \(path): not a PEM certificate (\(error))")
        }
    }

    /// How long a request may wait for its response head: `seconds`, cut to the run's deadline.
    private static func headTimeout(_ seconds: Int64, _ limits: TransferLimits) -> TimeAmount {
        guard let remaining = limits.remaining else { return .seconds(seconds) }
        return .milliseconds(max(1, min(seconds * 1000, Int64(remaining * 1000))))
    }

    /// Runs `body` with `transport` and shuts its client down whether `body` returns or throws
    /// (AsyncHTTPClient's `withHTTPClient` shape): every transport is scoped this way.
    static func using<T>(_ transport: HTTPTransport, _ body: (HTTPTransport) async throws -> T) async throws -> T {
        let result: Result<T, any Error>
        do {
            result = .success(try await body(transport))
        } catch {
            result = .failure(error)
        }
        try? await transport.client.shutdown()
        return try result.get()
    }

    /// Runs `body` up to `attempts` times with exponential backoff while it fails with a
    /// retryable error (connection trouble, 5xx, a transfer cut short).
    func retrying<T>(_ what: String, _ body: () async throws -> T) async throws -> T {
        var delay: UInt64 = 200_000_000
        var lastError: (any Error)?
        for attempt in 1...attempts {
            do {
                return try await body()
            } catch let error as SyncError {
                switch error {
                case .server(let status, _) where status < 500: throw error
                // A source too slow for --min-rate stays slow: the caller moves on to the next one.
                case .verification, .noSpace, .timedOut, .tooSlow, .notFound, .permanent: throw error
                default: break
                }
                lastError = error
            } catch {
                if let permanent = PermanentFailure.classify(error, what: what) { throw permanent }
                lastError = error
            }
            if attempt < attempts {
                try limits.checkDeadline(what)
                try await Task.sleep(nanoseconds: delay)
                delay = min(delay * 2, 5_000_000_000)
            }
        }
        if case .corruptPayload(var mismatch) = lastError as? SyncError {
            mismatch.attempts = attempts
            throw SyncError.corruptPayload(mismatch)
        }
        var hint = ""
        if let error = lastError as? HTTPClientError, error == .remoteConnectionClosed, what.contains("http://") {
            hint = " (if the server speaks TLS, use https://)"
        }
        if let proxy = configuredProxy, lastError is HTTPClientError {
            hint += " (through the proxy \(proxy); no_proxy lists hosts reached directly)"
        }
        throw SyncError.network(
            "\(what) failed after \(attempts) attempts: \(lastError.map { "\($0)" } ?? "unknown error")\(hint)"
        )
    }

    /// POSTs `body` as JSON and returns the status and at most `limit` bytes of the answer,
    /// with the transport's retries (the object and delta packs).
    func postJSON(_ url: String, _ body: some Encodable, limit: Int) async throws -> (Int, [UInt8]) {
        let bytes = [UInt8](try JSONEncoder().encode(body))
        return try await retrying("POST \(url)") {
            try await fetch(
                url,
                method: .POST,
                headers: [("Content-Type", "application/json")],
                body: bytes,
                limit: limit
            )
        }
    }

    /// A request whose whole response body is read, up to `limit` bytes.
    func fetch(
        _ url: String,
        method: HTTPMethod = .GET,
        headers: [(String, String)] = [],
        body: [UInt8]? = nil,
        limit: Int,
        limitFromHead: ((HTTPHeaders) throws -> Int?)? = nil,
        acceptZstd: Bool = false
    ) async throws -> (Int, [UInt8]) {
        var request = HTTPClientRequest(url: url)
        request.method = method
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        if let body { request.body = .bytes(ByteBuffer(bytes: body)) }
        if acceptZstd { request.headers.add(name: "Accept-Encoding", value: "zstd") }
        // A cold server may compute deltas for the plan; the read timeout still catches a dead peer.
        try limits.checkDeadline(url)
        let response = try await client.execute(request, timeout: Self.headTimeout(600, limits))
        // The head may tighten the bound (a plan's signed release header says how big it can be).
        let limit = try limitFromHead?(response.headers).map { min($0, limit) } ?? limit
        if let length = response.headers.first(name: "Content-Length").flatMap(Int.init), length > limit {
            throw SyncError.verification(
                "response from \(url) announces \(length) bytes, more than the \(limit) allowed"
            )
        }
        var bytes = [UInt8]()
        var watch = RateWatch(limits: limits, url: url)
        for try await chunk in response.body {
            received.withLockedValue { $0 += UInt64(chunk.readableBytes) }
            try watch.received(chunk.readableBytes)
            bytes += chunk.readableBytesView
            if bytes.count > limit {
                throw SyncError.verification("response from \(url) is larger than \(limit) bytes")
            }
        }
        // Compressed on the wire: decoded here, never past the same bound.
        if acceptZstd, response.headers.first(name: "Content-Encoding")?.lowercased() == "zstd" {
            do {
                bytes = try Zstd.decompress(bytes, maxSize: limit)
            } catch {
                throw SyncError.verification(
                    "the zstd body from \(url) does not decode within \(limit) bytes: \(error)"
                )
            }
        }
        return (Int(response.status.code), bytes)
    }

    /// Downloads `url` into the file `path`, appending from its current size with a Range
    /// request (so a broken transfer resumes where it stopped). Refuses to let the file grow
    /// past `limit`. Every chunk is reported to `onBytes` as it arrives (a transfer that breaks
    /// still counts what it received). Returns the bytes received and whether it resumed.
    func download(
        _ url: String,
        to path: String,
        limit: UInt64,
        limits: TransferLimits? = nil,
        received onBytes: (Int) -> Void
    ) async throws -> (received: UInt64, resumed: Bool) {
        let limits = limits ?? self.limits
        var existing: UInt64 = 0
        var info = stat()
        if stat(path, &info) == 0 { existing = UInt64(info.st_size) }
        if existing > limit {
            unlink(path)
            existing = 0
        }
        var request = HTTPClientRequest(url: url)
        if existing > 0 { request.headers.add(name: "Range", value: "bytes=\(existing)-") }
        try limits.checkDeadline(url)
        let response = try await client.execute(request, timeout: Self.headTimeout(600, limits))
        let status = Int(response.status.code)
        var append = false
        switch status {
        case 206 where existing > 0: append = true
        case 200: append = false
        case 416 where existing > 0:
            // The part file already holds everything (or garbage): start over next attempt.
            unlink(path)
            throw SyncError.network("range not satisfiable for \(url); restarting")
        case 500...: throw SyncError.server(status: status, message: "\(url)")
        default: throw SyncError.server(status: status, message: "GET \(url)")
        }
        let fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW | (append ? O_APPEND : O_TRUNC), 0o600)
        guard fd >= 0 else { throw Self.writeError("open", path) }
        defer { close(fd) }
        var size = append ? existing : 0
        var received: UInt64 = 0
        var watch = RateWatch(limits: limits, url: url)
        for try await chunk in response.body {
            try watch.received(chunk.readableBytes)
            received += UInt64(chunk.readableBytes)
            size += UInt64(chunk.readableBytes)
            onBytes(chunk.readableBytes)
            self.received.withLockedValue { $0 += UInt64(chunk.readableBytes) }
            guard size <= limit else {
                throw SyncError.verification("\(url) sends more than the \(limit) bytes its signed size allows")
            }
            do {
                try chunk.withUnsafeReadableBytes { try Posix.writeAll(fd, $0, what: path) }
            } catch let error as SystemCallError {
                throw Self.writeError(error)
            }
        }
        return (received, append)
    }

    /// The error for a failed `open`/`write` of a download: out of space (or quota) is its own
    /// case, never retried; anything else is an I/O failure naming the path.
    private static func writeError(_ error: SystemCallError) -> SyncError {
        error.isNoSpace ? .noSpace(error.description) : .network(error.description)
    }

    private static func writeError(_ call: String, _ path: String) -> SyncError {
        writeError(SystemCallError.last("\(call) \(path)"))
    }
}
