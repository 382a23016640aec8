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

// Request bodies in (size-bounded, zstd-decoded, entry-counted) and JSON responses out.
extension PlanService {

    func collect(_ request: Request, limit: Int? = nil) async throws -> Data {
        var request = request
        let buffer: ByteBuffer
        do {
            buffer = try await request.collectBody(upTo: limit ?? configuration.maxRequestBytes)
        } catch {
            throw HTTPError(
                .contentTooLarge,
                message: "request body larger than \(limit ?? configuration.maxRequestBytes) bytes"
            )
        }
        let bytes = [UInt8](buffer: buffer)
        switch request.headers[.contentEncoding]?.lowercased() {
        case nil, "identity": return Data(bytes)
        case "zstd":
            let cap = min(configuration.maxDecompressedBytes, max(1 << 20, bytes.count * configuration.maxExpansion))
            do {
                return Data(try Zstd.decompress(bytes, maxSize: cap))
            } catch {
                throw HTTPError(
                    .contentTooLarge,
                    message:
                        "request body: \(error) (a \(bytes.count)-byte zstd body may decode to at most \(cap) bytes)"
                )
            }
        case let other?: throw HTTPError(.unsupportedMediaType, message: "unsupported Content-Encoding \(other)")
        }
    }

    /// Refuses, before JSON decoding, a body with more objects than `maxEntries` allows: each
    /// entry of a delta is a JSON object, so counting `{` bounds the work the decoder would do.
    func requireEntryBound(_ body: Data) throws {
        let objects = body.withUnsafeBytes { raw -> Int in
            var count = 0
            for byte in raw where byte == UInt8(ascii: "{") { count += 1 }
            return count
        }
        guard objects <= configuration.maxEntries + 16 else {
            throw HTTPError(
                .contentTooLarge,
                message: "the request describes more than \(configuration.maxEntries) entries"
            )
        }
    }

    /// Refuses a whole manifest whose declared entry count is over `maxEntries`, from its first
    /// base64 characters (magic and count), before the rest is decoded.
    func requireEntryBound(manifestPrefix encoded: String) throws {
        guard let prefix = Data(base64Encoded: String(encoded.prefix(24))), prefix.count >= 16 else { return }
        let count = prefix[8..<16].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        guard count <= UInt64(configuration.maxEntries) else {
            throw HTTPError(
                .contentTooLarge,
                message: "the manifest declares \(count) entries; this server takes at most \(configuration.maxEntries)"
            )
        }
    }

    /// A JSON response; zstd-compressed (level 3: fast, and JSON compresses ~10x) when the
    /// client accepts it and the body is worth it.
    func json(_ value: some Encodable, zstd: Bool = false) throws -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let bytes = [UInt8](try encoder.encode(value))
        if zstd && bytes.count > 1024 {
            return Response(
                status: .ok,
                headers: [.contentType: "application/json", .contentEncoding: "zstd", .vary: "Accept-Encoding"],
                body: .init(byteBuffer: ByteBuffer(bytes: try Zstd.compress(bytes, level: 3)))
            )
        }
        return Response(
            status: .ok,
            headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(bytes: bytes))
        )
    }

    /// `Accept-Encoding` names zstd (with a non-zero q, if any).
    static func acceptsZstd(_ request: Request) -> Bool {
        guard let accept = request.headers[.acceptEncoding]?.lowercased() else { return false }
        return accept.split(separator: ",").contains { item in
            let parts = item.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces) }
            return parts.first == "zstd" && !parts.dropFirst().contains { $0 == "q=0" || $0 == "q=0.0" }
        }
    }

    func read(_ path: String) -> [UInt8]? {
        FileManager.default.contents(atPath: path).map { [UInt8]($0) }
    }

    func fileSize(_ path: String) -> UInt64? {
        var info = stat()
        guard stat(path, &info) == 0, info.st_mode & S_IFMT == S_IFREG else { return nil }
        return UInt64(info.st_size)
    }
}
