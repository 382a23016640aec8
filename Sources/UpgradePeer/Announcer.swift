import Foundation
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization

/// Announces what `upgrade share` holds: to the multicast group (TTL 1, out of the pinned
/// interface) and to each unicast neighbour, every `interval` seconds, and to anyone who sends
/// a query (answered by unicast, at most `repliesPerSecond`). A service of the share's
/// ``ServiceGroup``: it runs on a NIO datagram channel until the group shuts down.
public final class Announcer: Service {
    public struct Configuration: Sendable {
        /// The group and port; nil announces by unicast only.
        public var group: IPv4Endpoint?
        public var interface: MulticastInterface?
        /// Neighbours' announce ports, for networks where multicast does not pass.
        public var unicast: [IPv4Endpoint] = []
        public var interval: Double = 5
        public var repliesPerSecond = 50.0
        /// Test fault: announce as fast as the socket takes them (thousands per second).
        public var flood = false

        public init(group: IPv4Endpoint?, interface: MulticastInterface?) {
            self.group = group
            self.interface = interface
        }
    }

    private let configuration: Configuration
    private let socket: Mutex<UDPSocket?>
    private let announcement: @Sendable () -> PeerAnnouncement?
    private let ready: @Sendable () async -> Void
    private let logger: Logger
    private let sent = Counter()

    /// Binds and joins now, so a bad group or interface fails before anything runs. The first
    /// announcement waits for `ready` (the peer server's port is bound).
    public init(
        _ configuration: Configuration,
        logger: Logger,
        ready: @escaping @Sendable () async -> Void = {},
        announcement: @escaping @Sendable () -> PeerAnnouncement?
    ) throws {
        self.configuration = configuration
        self.announcement = announcement
        self.ready = ready
        self.logger = logger
        socket = Mutex(try Self.makeSocket(configuration))
    }

    /// Datagrams sent so far.
    public var datagramsSent: Int { sent.value }

    public func run() async throws {
        await cancelWhenGracefulShutdown { [self] in
            await ready()
            while !Task.isCancelled {
                do {
                    // The socket bound at init, then a fresh one should the channel fail (a
                    // send error NIO cannot recover from ends the channel, not the share).
                    let socket = try self.socket.withLock { held in
                        defer { held = nil }
                        return try held ?? Self.makeSocket(self.configuration)
                    }
                    try await socket.channel().executeThenClose { [self] inbound, outbound in
                        try await withThrowingDiscardingTaskGroup { [self] group in
                            group.addTask { try await self.announce(outbound) }
                            try await answer(inbound, outbound)
                            group.cancelAll()
                        }
                    }
                } catch  where !Task.isCancelled {
                    logger.warning("announcing stopped for an interval: \(error)")
                    try? await Task.sleep(for: .seconds(configuration.interval))
                } catch {}
            }
        }
    }

    private static func makeSocket(_ configuration: Configuration) throws -> UDPSocket {
        let socket = try UDPSocket(port: configuration.group?.port ?? 0, shared: true)
        try socket.pin(to: configuration.interface)
        if let group = configuration.group { try socket.join(group, on: configuration.interface) }
        return socket
    }

    /// Every interval (without pause under the flood fault), to the group and every neighbour.
    private func announce(_ outbound: NIOAsyncChannelOutboundWriter<AddressedEnvelope<ByteBuffer>>) async throws {
        var targets = configuration.unicast
        if let group = configuration.group { targets.append(group) }
        while !Task.isCancelled {
            if let bytes = announcement()?.encoded() {
                for target in targets {
                    try await outbound.write(AddressedEnvelope(bytes, to: target))
                    sent.add()
                }
            }
            if configuration.flood {
                await Task.yield()
            } else {
                try await Task.sleep(for: .seconds(configuration.interval))
            }
        }
    }

    /// Answers queries by unicast, at most `repliesPerSecond` (a token bucket), until the
    /// channel ends.
    private func answer(
        _ inbound: NIOAsyncChannelInboundStream<AddressedEnvelope<ByteBuffer>>,
        _ outbound: NIOAsyncChannelOutboundWriter<AddressedEnvelope<ByteBuffer>>
    ) async throws {
        var tokens = configuration.repliesPerSecond
        var lastRefill = ContinuousClock.now
        for try await datagram in inbound {
            let now = ContinuousClock.now
            let elapsed = (now - lastRefill) / .seconds(1)
            lastRefill = now
            tokens = min(configuration.repliesPerSecond, tokens + elapsed * configuration.repliesPerSecond)
            let bytes = datagram.data.readableBytesView
            guard bytes.count <= PeerWire.maxDatagram, PeerWire.isQuery(bytes), tokens >= 1,
                let from = IPv4Endpoint(datagram.remoteAddress), let reply = announcement()?.encoded()
            else { continue }
            tokens -= 1
            try await outbound.write(AddressedEnvelope(reply, to: from))
            sent.add()
        }
    }
}

/// A count shared by the tasks of a service.
final class Counter: Sendable {
    private let count = Atomic<Int>(0)
    func add() { count.add(1, ordering: .relaxed) }
    var value: Int { count.load(ordering: .relaxed) }
}
