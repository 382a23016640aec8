import Foundation
import NIOCore
import Synchronization

/// A machine that announced a release of the product.
public struct DiscoveredPeer: Sendable {
    /// Base URL of its peer server: the datagram's source address and the announced port.
    public let url: String
    public let announcement: PeerAnnouncement
    /// Announcements received from it in the window.
    public let datagrams: Int

    public init(url: String, announcement: PeerAnnouncement, datagrams: Int) {
        self.url = url
        self.announcement = announcement
        self.datagrams = datagrams
    }
}

/// What a listening window found.
public struct Discovery: Sendable {
    public var peers: [DiscoveredPeer] = []
    /// Sources that sent more announcements than any honest peer would, ignored: URL and count.
    public var flooding: [(url: String, datagrams: Int)] = []
    /// Every datagram read, and those dropped (malformed, other products, past the peer limit).
    public var datagrams = 0
    public var dropped = 0
}

/// Listens for announcements for a bounded time: on the group's port, and for unicast answers
/// to a query sent to the group when the window opens (and again half-way). Memory is bounded:
/// one fixed receive buffer and at most `maxPeers` sources remembered.
public enum PeerDiscovery {
    public struct Options: Sendable {
        public var group: IPv4Endpoint
        public var interface: MulticastInterface?
        /// Seconds to listen.
        public var wait: Double = 2
        public var product: String
        public var maxPeers = 32

        public init(group: IPv4Endpoint, interface: MulticastInterface?, product: String) {
            self.group = group
            self.interface = interface
            self.product = product
        }
    }

    /// Sets the sockets up now (so bad options fail at once), then listens on NIO datagram
    /// channels until the window closes: the query goes out when it opens and again half-way.
    /// Datagrams are counted on the event loop as they arrive, so a busy task pool (the scan
    /// runs beside the window) makes the window longer, never deafer.
    public static func listen(_ options: Options) async throws -> Discovery {
        let listener = try UDPSocket(port: options.group.port, shared: true)
        try listener.pin(to: options.interface)
        try listener.join(options.group, on: options.interface)
        let asker = try UDPSocket(port: 0, shared: false)
        try asker.pin(to: options.interface)
        let tally = Tally.Shared(Tally(options))
        let listening = try await listener.channel { Counting(tally) }
        let asking: any Channel
        do {
            asking = try await asker.channel { Counting(tally) }
        } catch {
            try? await listening.close()
            throw error
        }
        let query = AddressedEnvelope(PeerWire.query(product: options.product), to: options.group)
        let opened = ContinuousClock.now
        try? await asking.writeAndFlush(query)
        try? await Task.sleep(for: .seconds(options.wait / 2))
        try? await asking.writeAndFlush(query)
        try? await Task.sleep(for: .seconds(options.wait / 2))
        try? await listening.close()
        try? await asking.close()
        let lasted = ContinuousClock.now - opened
        let seconds = Double(lasted.components.seconds) + Double(lasted.components.attoseconds) / 1e18
        return tally.state.withLock { $0.result(windowSeconds: max(options.wait, seconds)) }
    }

    /// Counts each datagram into the window's tally, on the event loop.
    private final class Counting: ChannelInboundHandler, Sendable {
        typealias InboundIn = AddressedEnvelope<ByteBuffer>
        let tally: Tally.Shared

        init(_ tally: Tally.Shared) { self.tally = tally }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let datagram = Self.unwrapInboundIn(data)
            tally.state.withLock { $0.count(datagram) }
        }

        /// A datagram error (an ICMP answer to a query, say) is not the end of the window.
        func errorCaught(context: ChannelHandlerContext, error: any Error) {}
    }

    /// What the window heard so far; memory is bounded by `maxPeers`.
    private struct Tally {
        /// The tally the window's readers share.
        final class Shared: Sendable {
            let state: Mutex<Tally>
            init(_ tally: Tally) { state = Mutex(tally) }
        }

        struct Seen {
            var announcement: PeerAnnouncement
            var count: Int
            var order: Int
        }
        let options: Options
        var seen = [String: Seen]()
        var discovery = Discovery()

        init(_ options: Options) { self.options = options }

        mutating func count(_ datagram: AddressedEnvelope<ByteBuffer>) {
            discovery.datagrams += 1
            let bytes = datagram.data.readableBytesView
            guard bytes.count <= PeerWire.maxDatagram, let from = IPv4Endpoint(datagram.remoteAddress),
                let announcement = PeerAnnouncement(datagram: bytes), announcement.product == options.product
            else {
                discovery.dropped += 1
                return
            }
            let url = "http://\(from.host):\(announcement.port)"
            if var known = seen[url] {
                known.count += 1
                known.announcement = announcement
                seen[url] = known
            } else if seen.count < options.maxPeers {
                seen[url] = Seen(announcement: announcement, count: 1, order: seen.count)
            } else {
                discovery.dropped += 1
            }
        }

        /// The peers in the order first heard; more than an honest peer sends in the window (one
        /// per interval and one per query) is a flood, not a peer. The window is the time it
        /// really lasted (`windowSeconds`): a busy task pool stretches it, and an honest peer
        /// heard through a stretched window is still a peer.
        func result(windowSeconds: Double) -> Discovery {
            var result = discovery
            let floodThreshold = max(50, Int(windowSeconds * 20))
            for (url, entry) in seen.sorted(by: { $0.value.order < $1.value.order }) {
                if entry.count > floodThreshold {
                    result.flooding.append((url, entry.count))
                } else {
                    result.peers.append(
                        DiscoveredPeer(url: url, announcement: entry.announcement, datagrams: entry.count)
                    )
                }
            }
            return result
        }
    }
}
