import Foundation
import UpgradeCore
public import UpgradeProtocol

/// `upgrade fleet`: the server's fleet view, over the same transport as `sync`.
public enum FleetClient {
    /// GET `path` (with its query) from `server` and decode it; errors are ``SyncError``s.
    public static func get<T: Decodable & Sendable>(
        _ type: T.Type,
        server: String,
        path: String,
        caCertificate: String?
    ) async throws -> T {
        let url = server.trimmingSuffix("/") + path
        let transport = try HTTPTransport(caCertificate: caCertificate, readTimeout: 30, attempts: 2)
        let (status, bytes) = try await HTTPTransport.using(transport) { transport in
            try await transport.retrying("GET \(url)") { try await transport.fetch(url, limit: 64 << 20) }
        }
        if status == 404 { throw SyncError.notFound("\(url): this server keeps no fleet store (--database none)") }
        if status == 400 { throw SyncError.configuration("\(url): \(SyncClient.message(bytes))") }
        guard status == 200 else { throw SyncError.server(status: status, message: SyncClient.message(bytes)) }
        do {
            return try JSONDecoder().decode(T.self, from: Data(bytes))
        } catch {
            throw SyncError.verification("the server's answer to \(path) is malformed (\(JSON.describe(error)))")
        }
    }

    public static func summary(
        server: String,
        product: String?,
        staleHours: Double,
        caCertificate: String?
    )
        async throws -> FleetSummary
    {
        var query = ["stale-hours=\(staleHours)"]
        if let product { query.append("product=" + escape(product)) }
        return try await get(
            FleetSummary.self,
            server: server,
            path: "/v1/fleet?" + query.joined(separator: "&"),
            caCertificate: caCertificate
        )
    }

    public static func devices(
        server: String,
        filters: [(String, String)],
        caCertificate: String?
    ) async throws
        -> DeviceList
    {
        let query = filters.map { "\($0.0)=\(escape($0.1))" }.joined(separator: "&")
        return try await get(
            DeviceList.self,
            server: server,
            path: "/v1/devices?" + query,
            caCertificate: caCertificate
        )
    }

    private static func escape(_ value: String) -> String {
        value.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~")))
            ?? value
    }
}
