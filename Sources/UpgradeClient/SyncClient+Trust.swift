import Foundation
import UpgradeApply
import UpgradePeer
import UpgradeTrust

extension SyncClient {
    /// Root `version` from the mirror, then the server (`roots/N.json`, the repository's own
    /// path, so a static mirror serves it); nil when neither has it.
    static func fetchRoot(_ version: UInt64, options: SyncOptions, transport: HTTPTransport) async throws -> [UInt8]? {
        var sources = [options.server]
        if let mirror = options.mirror { sources.insert(mirror, at: 0) }
        var lastError: (any Error)?
        for base in sources {
            let url = base.trimmingSuffix("/") + "/roots/\(version).json"
            do {
                let (status, bytes) = try await transport.retrying("GET \(url)") {
                    let (status, bytes) = try await transport.fetch(url, limit: RootSession.maxRootBytes)
                    if status >= 500 { throw SyncError.server(status: status, message: "GET \(url)") }
                    return (status, bytes)
                }
                if status == 200 { return bytes }
                if status == 404 { continue }
                lastError = SyncError.server(status: status, message: "GET \(url)")
            } catch {
                lastError = error
            }
        }
        if let lastError { throw lastError }
        return nil
    }

    /// Root `version` from the first of `peers` that serves it.
    static func fetchRoot(_ version: UInt64, peers: [DiscoveredPeer], transport: HTTPTransport) async -> [UInt8]? {
        for peer in peers {
            let url = peer.url + PeerWire.rootPath(version)
            if let (status, bytes) = try? await transport.fetch(url, limit: RootSession.maxRootBytes), status == 200 {
                return bytes
            }
        }
        return nil
    }

    /// The channel-role keys that signed `channel` validly under `trusted`.
    static func channelSigners(_ channel: [UInt8], trusted: TrustedKeys) -> Set<String> {
        guard let envelope = try? SignedEnvelope(encoded: channel) else { return [] }
        return envelope.validSigners(among: trusted.root.keys(for: .channel))
    }
}
