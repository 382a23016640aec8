import Crypto
import Foundation
import Synchronization
import UpgradeApply
import UpgradeCore
import UpgradePeer
import UpgradeTrust

#if canImport(Glibc)
import Glibc
#endif

extension SyncClient {
    // MARK: Finding peers

    /// Announcements heard in the listening window (`auto`) or fetched from each listed peer.
    static func discoverPeers(
        _ options: SyncOptions,
        transport: HTTPTransport,
        board: PeerBoard
    ) async throws -> [DiscoveredPeer] {
        switch options.peers {
        case .off:
            return []
        case .auto:
            var discovery = PeerDiscovery.Options(
                group: options.announceGroup,
                interface: options.peerInterface,
                product: options.product
            )
            discovery.wait = options.peerWait
            let found = try await PeerDiscovery.listen(discovery)
            for flood in found.flooding {
                board.drop(
                    flood.url,
                    "flooded announcements (\(flood.datagrams) in \(String(format: "%.1f", options.peerWait)) s)"
                )
            }
            return found.peers
        case .list(let addresses):
            return await withTaskGroup(of: DiscoveredPeer?.self) { group in
                for address in addresses {
                    group.addTask {
                        let url = "http://\(address)"
                        do {
                            let (status, bytes) = try await transport.fetch(
                                url + PeerWire.announcementPath,
                                limit: 4096
                            )
                            guard status == 200, let announcement = PeerAnnouncement(datagram: bytes) else {
                                board.note(url, version: nil, status: .ignored("no release to share (HTTP \(status))"))
                                return nil
                            }
                            guard announcement.product == options.product else {
                                board.note(
                                    url,
                                    version: announcement.version,
                                    status: .ignored("shares \(announcement.product)")
                                )
                                return nil
                            }
                            return DiscoveredPeer(url: url, announcement: announcement, datagrams: 1)
                        } catch {
                            board.note(url, version: nil, status: .ignored("unreachable (\(error))"))
                            return nil
                        }
                    }
                }
                var peers = [DiscoveredPeer]()
                for await peer in group { if let peer { peers.append(peer) } }
                return peers.sorted { $0.url < $1.url }
            }
        }
    }

    /// Fetches and verifies the signed header of every release the peers announce (at most 8
    /// peers at a time). A peer whose header is not the one it announced, or is not signed by a
    /// trusted key, is dropped. Returns the verified releases with the peers that hold them.
    static func checkPeers(
        _ peers: [DiscoveredPeer],
        options: SyncOptions,
        transport: HTTPTransport,
        board: PeerBoard
    ) async -> [String: PeerRelease] {
        var releases = [String: PeerRelease]()
        for batch in stride(from: 0, to: peers.count, by: 8).map({ Array(peers[$0..<min($0 + 8, peers.count)]) }) {
            let checked = await withTaskGroup(of: [(PeerRelease, PeerSource)].self) { group in
                for peer in batch {
                    group.addTask { await checkPeer(peer, options: options, transport: transport, board: board) }
                }
                var all = [(PeerRelease, PeerSource)]()
                for await found in group { all += found }
                return all
            }
            for (release, source) in checked {
                releases[release.digest, default: release.withoutSources].sources.append(source)
            }
        }
        return releases
    }

    private static func checkPeer(
        _ peer: DiscoveredPeer,
        options: SyncOptions,
        transport: HTTPTransport,
        board: PeerBoard
    ) async -> [(PeerRelease, PeerSource)] {
        let announcement = peer.announcement
        board.note(peer.url, version: announcement.version, status: .notNeeded)
        var held = [(announcement.header, announcement.complete)]
        if let previous = announcement.previous { held.append((previous.header, false)) }
        var result = [(PeerRelease, PeerSource)]()
        for (digest, complete) in held {
            let url = peer.url + PeerWire.releasePath(header: digest, file: "header")
            do {
                let (status, bytes) = try await transport.fetch(url, limit: 1 << 16)
                guard status == 200 else {
                    board.drop(
                        peer.url,
                        "announced release \(digest.prefix(12)) but does not serve its header (HTTP \(status))"
                    )
                    return []
                }
                guard SHA256Hash(bytes: Array(SHA256.hash(data: bytes)))!.hex == digest else {
                    board.drop(peer.url, "serves a release header that is not the one it announced")
                    return []
                }
                let header = try ReleaseHeader.verify(
                    SignedEnvelope(encoded: bytes),
                    trusted: options.trusted,
                    now: options.now
                )
                guard header.product == options.product else {
                    board.drop(peer.url, "announced \(options.product) but holds \(header.product)")
                    return []
                }
                result.append(
                    (
                        PeerRelease(headerBytes: bytes, header: header, digest: digest, sources: []),
                        PeerSource(url: peer.url, complete: complete)
                    )
                )
            } catch let error as TrustError {
                // A kept previous release signed by a key the root has since revoked is not
                // offered; the peer's own release still is.
                if digest != announcement.header { continue }
                board.drop(peer.url, "announces release \(announcement.version) that fails verification (\(error))")
                return []
            } catch {
                board.drop(peer.url, "unreachable (\(error))")
                return []
            }
        }
        return result
    }

    // MARK: Fetching

    /// Fetches what it can of `needed` from the peers, uncompressed, into `DIR/<sha>.raw`, each
    /// file checked against its signed size and SHA-256 before it counts. A peer that sends a
    /// wrong byte, stalls, fails, or lacks a file of a release it announced complete is dropped
    /// for the rest of the run and its share goes to the next peer. Returns the contents fetched.
    static func fetchFromPeers(
        _ needed: [FileContent],
        sources: [PeerSource],
        into directory: String,
        options: SyncOptions,
        transport: HTTPTransport,
        board: PeerBoard
    ) async -> Set<SHA256Hash> {
        guard !sources.isEmpty, !needed.isEmpty else { return [] }
        let queue = PeerQueue(count: needed.count, owners: sources.map(\.url))
        let workers = max(1, min(options.parallelDownloads, 4))
        await withTaskGroup(of: Void.self) { group in
            for source in sources {
                for _ in 0..<workers {
                    group.addTask {
                        while !board.isDropped(source.url) {
                            let index: Int
                            switch queue.next(for: source.url, isDropped: board.isDropped) {
                            case .finished: return
                            case .wait:
                                try? await Task.sleep(for: .milliseconds(20))
                                continue
                            case .fetch(let next): index = next
                            }
                            let content = needed[index]
                            let outcome = await fetchOne(
                                content,
                                from: source,
                                into: directory,
                                transport: transport,
                                board: board
                            )
                            queue.finish(index, source: source.url, done: outcome)
                        }
                    }
                }
            }
        }
        return Set(queue.doneIndices.map { needed[$0].sha256! })
    }

    private static func fetchOne(
        _ content: FileContent,
        from source: PeerSource,
        into directory: String,
        transport: HTTPTransport,
        board: PeerBoard
    ) async -> Bool {
        let sha = content.sha256!
        let final = directory + "/" + sha.hex + ".raw"
        let part = final + ".\(UInt32.random(in: 0...UInt32.max)).part"
        defer { unlink(part) }
        let url = source.url + PeerWire.objectPath(sha.hex)
        var received: UInt64 = 0
        do {
            let (status, _) = try await transport.downloadWhole(url, to: part, limit: content.size) {
                received += UInt64($0)
            }
            if status == 404 {
                if source.complete {
                    board.drop(source.url, "announced a complete release but has no file \(sha.hex.prefix(12))")
                }
                return false
            }
            guard status == 200 else {
                board.drop(source.url, "answered HTTP \(status) for file \(sha.hex.prefix(12))")
                return false
            }
        } catch let error as SyncError {
            if case .verification = error {
                board.drop(source.url, "sent more bytes than the signed size of file \(sha.hex.prefix(12))")
            } else {
                board.drop(source.url, "stalled or failed (\(error))")
            }
            return false
        } catch {
            board.drop(source.url, "stalled or failed (\(error))")
            return false
        }
        guard received == content.size, fileSHA256(part) == sha else {
            board.drop(source.url, "sent bytes that do not match the signed SHA-256 of file \(sha.hex.prefix(12))")
            return false
        }
        guard rename(part, final) == 0 else { return false }
        board.delivered(source.url, bytes: received)
        return true
    }

    static func fileSHA256(_ path: String) -> SHA256Hash? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        return try? sha256(of: fd, what: path).0
    }
}

extension PeerRelease {
    var withoutSources: PeerRelease {
        var copy = self
        copy.sources = []
        return copy
    }
}

extension HTTPTransport {
    /// Downloads `url` into a fresh file, refusing to let it grow past `limit`; returns the
    /// status (the body of anything but a 200 is discarded).
    func downloadWhole(
        _ url: String,
        to path: String,
        limit: UInt64,
        received onBytes: (Int) -> Void
    ) async throws -> (Int, UInt64) {
        unlink(path)
        do {
            let (received, _) = try await download(url, to: path, limit: limit, received: onBytes)
            return (200, received)
        } catch SyncError.server(let status, _) {
            return (status, 0)
        }
    }
}

/// The peer side of one run: its own transport (one attempt, short timeouts) and the board.
struct PeerContext: Sendable {
    let transport: HTTPTransport
    let board: PeerBoard

    /// Payload bytes the peers delivered (verified).
    var bytes: UInt64 { board.outcomes.reduce(0) { $0 + $1.bytes } }

    /// Starts listening for (or asking) peers; nil with `--peers off`, which never listens.
    func startDiscovery(_ options: SyncOptions) -> Task<[DiscoveredPeer], any Error>? {
        guard options.peers != .off else { return nil }
        return Task { try await SyncClient.discoverPeers(options, transport: transport, board: board) }
    }
}
