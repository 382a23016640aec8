import AsyncHTTPClient
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOSSL

#if canImport(Glibc)
import Glibc
#endif

/// HTTP with retries and backoff over AsyncHTTPClient.
final class HTTPTransport: Sendable {
    let client: HTTPClient
    let attempts: Int
    /// Every response body byte received, for the report.
    ///
    /// A copyable lock box, not a `Mutex` or `Atomic`: with a noncopyable stored property the
    /// Swift 6.3.1 optimizer crashed (CopyPropagation, "Found outside of lifetime use") when it
    /// inlined this class's deinit into `SyncClient`, where the transports are made and dropped.
    private let received = NIOLockedValueBox<UInt64>(0)

    /// Response body bytes received so far, over every request.
    var bytesReceived: UInt64 { received.withLockedValue { $0 } }

    init(caCertificate: String?, readTimeout: Int64, attempts: Int, connectTimeout: Int64 = 10) throws {
        var tls = TLSConfiguration.makeClientConfiguration()
        if let caCertificate {
            tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caCertificate))
        }
        var configuration = HTTPClient.Configuration(tlsConfiguration: tls)
        configuration.timeout = .init(connect: .seconds(connectTimeout), read: .seconds(readTimeout))
        configuration.decompression = .disabled
        client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        self.attempts = attempts
    }

    func shutdown() async {
        try? await client.shutdown()
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
                if case .server(let status, _) = error, status < 500 { throw error }
                if case .verification = error { throw error }
                lastError = error
            } catch {
                lastError = error
            }
            if attempt < attempts {
                try await Task.sleep(nanoseconds: delay)
                delay = min(delay * 2, 5_000_000_000)
            }
        }
        if case .corruptPayload(let why) = lastError as? SyncError {
            throw SyncError.verification("\(why) (after \(attempts) attempts)")
        }
        throw SyncError.network(
            "\(what) failed after \(attempts) attempts: \(lastError.map { "\($0)" } ?? "unknown error")"
        )
    }

    /// A request whose whole response body is read, up to `limit` bytes.
    func fetch(
        _ url: String,
        method: HTTPMethod = .GET,
        headers: [(String, String)] = [],
        body: [UInt8]? = nil,
        limit: Int
    ) async throws -> (Int, [UInt8]) {
        var request = HTTPClientRequest(url: url)
        request.method = method
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        if let body { request.body = .bytes(ByteBuffer(bytes: body)) }
        // A cold server may compute deltas for the plan; the read timeout still catches a dead peer.
        let response = try await client.execute(request, timeout: .seconds(600))
        var bytes = [UInt8]()
        for try await chunk in response.body {
            received.withLockedValue { $0 += UInt64(chunk.readableBytes) }
            bytes += chunk.readableBytesView
            if bytes.count > limit {
                throw SyncError.verification("response from \(url) is larger than \(limit) bytes")
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
        received onBytes: (Int) -> Void
    ) async throws -> (received: UInt64, resumed: Bool) {
        var existing: UInt64 = 0
        var info = stat()
        if stat(path, &info) == 0 { existing = UInt64(info.st_size) }
        if existing > limit {
            unlink(path)
            existing = 0
        }
        var request = HTTPClientRequest(url: url)
        if existing > 0 { request.headers.add(name: "Range", value: "bytes=\(existing)-") }
        let response = try await client.execute(request, timeout: .hours(6))
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
        let fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | (append ? O_APPEND : O_TRUNC), 0o600)
        guard fd >= 0 else { throw SyncError.network("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var size = append ? existing : 0
        var received: UInt64 = 0
        for try await chunk in response.body {
            received += UInt64(chunk.readableBytes)
            size += UInt64(chunk.readableBytes)
            onBytes(chunk.readableBytes)
            self.received.withLockedValue { $0 += UInt64(chunk.readableBytes) }
            guard size <= limit else {
                throw SyncError.verification("\(url) sends more than the \(limit) bytes its signed size allows")
            }
            try chunk.withUnsafeReadableBytes { raw in
                var offset = 0
                while offset < raw.count {
                    let n = write(fd, raw.baseAddress! + offset, raw.count - offset)
                    if n < 0 && errno == EINTR { continue }
                    guard n >= 0 else { throw SyncError.network("write \(path): \(String(cString: strerror(errno)))") }
                    offset += n
                }
            }
        }
        return (received, append)
    }
}
