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
                    // The socket bound at init, then a fresh one should the channel end (a send
                    // error NIO cannot recover from closes it): that costs an interval of
                    // announcing, not the share.
                    let socket = try self.socket.withLock { held in
                        defer { held = nil }
                        return try held ?? Self.makeSocket(self.configuration)
                    }
                    try await announce(on: socket)
                } catch {
                    logger.warning("announcing stopped for an interval: \(error)")
                }
                if !Task.isCancelled { try? await Task.sleep(for: .seconds(configuration.interval)) }
            }
        }
    }

    /// Announces on `socket` until the task is cancelled or the channel ends: on the event loop,
    /// every interval (in bursts without pause under the flood fault), and in answer to queries.
    private func announce(on socket: UDPSocket) async throws {
        let configuration = self.configuration
        let announcement = self.announcement
        let sent = self.sent
        let channel = try await socket.channel {
            Answering(repliesPerSecond: configuration.repliesPerSecond, announcement: announcement, sent: sent)
        }
        var targets = configuration.unicast
        if let group = configuration.group { targets.append(group) }
        let destinations = targets
        let burst = configuration.flood ? 20 : 1
        let every: TimeAmount =
            configuration.flood ? .milliseconds(2) : .nanoseconds(Int64(configuration.interval * 1e9))
        let repeated = channel.eventLoop.scheduleRepeatedTask(initialDelay: .zero, delay: every) { _ in
            // Best effort: what the socket cannot take now is not queued (a flood stays bounded).
            guard channel.isWritable, let bytes = announcement()?.encoded() else { return }
            for _ in 0..<burst {
                for target in destinations {
                    channel.writeAndFlush(AddressedEnvelope(bytes, to: target), promise: nil)
                    sent.add()
                }
            }
        }
        await withTaskCancellationHandler {
            try? await channel.closeFuture.get()
        } onCancel: {
            channel.close(promise: nil)
        }
        repeated.cancel()
        if !Task.isCancelled { throw PeerSetupError("the announce channel closed") }
    }

    private static func makeSocket(_ configuration: Configuration) throws -> UDPSocket {
        let socket = try UDPSocket(port: configuration.group?.port ?? 0, shared: true)
        try socket.pin(to: configuration.interface)
        if let group = configuration.group { try socket.join(group, on: configuration.interface) }
        return socket
    }
}

/// Answers queries by unicast on the event loop, at most `repliesPerSecond` (a token bucket).
private final class Answering: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>

    private let repliesPerSecond: Double
    private let announcement: @Sendable () -> PeerAnnouncement?
    private let sent: Counter
    private var tokens: Double
    private var lastRefill = NIODeadline.now()

    init(repliesPerSecond: Double, announcement: @escaping @Sendable () -> PeerAnnouncement?, sent: Counter) {
        self.repliesPerSecond = repliesPerSecond
        self.announcement = announcement
        self.sent = sent
        tokens = repliesPerSecond
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let datagram = Self.unwrapInboundIn(data)
        let now = NIODeadline.now()
        let elapsed = Double((now - lastRefill).nanoseconds) / 1e9
        lastRefill = now
        tokens = min(repliesPerSecond, tokens + elapsed * repliesPerSecond)
        let bytes = datagram.data.readableBytesView
        guard bytes.count <= PeerWire.maxDatagram, PeerWire.isQuery(bytes), tokens >= 1,
            let from = IPv4Endpoint(datagram.remoteAddress), let reply = announcement()?.encoded()
        else { return }
        tokens -= 1
        context.writeAndFlush(Self.wrapOutboundOut(AddressedEnvelope(reply, to: from)), promise: nil)
        sent.add()
    }

    /// A datagram error is not the end of announcing.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {}
}

/// A count shared by the tasks of a service.
final class Counter: Sendable {
    private let count = Atomic<Int>(0)
    func add() { count.add(1, ordering: .relaxed) }
    var value: Int { count.load(ordering: .relaxed) }
}
