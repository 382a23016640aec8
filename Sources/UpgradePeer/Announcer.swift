import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Announces what `upgrade share` holds: to the multicast group (TTL 1, out of the pinned
/// interface) and to each unicast neighbour, every `interval` seconds, and to anyone who sends
/// a query (answered by unicast, at most `repliesPerSecond`). Runs on its own thread.
public final class Announcer: Sendable {
    public struct Configuration: Sendable {
        /// The group and port; nil announces by unicast only.
        public var group: IPv4Endpoint?
        public var interface: MulticastInterface?
        /// Neighbours' announce ports, for networks where multicast does not pass.
        public var unicast: [IPv4Endpoint] = []
        public var interval: Double = 5
        public var repliesPerSecond = 50.0
        /// Test fault: announce as fast as possible (thousands per second).
        public var flood = false

        public init(group: IPv4Endpoint?, interface: MulticastInterface?) {
            self.group = group
            self.interface = interface
        }
    }

    private let configuration: Configuration
    private let socket: UDPSocket
    private let announcement: @Sendable () -> PeerAnnouncement?
    private let stopped = Atomic<Bool>(false)
    private let sent = Atomic<Int>(0)

    /// Binds and joins now, so a bad group or interface fails before anything runs.
    public init(_ configuration: Configuration, announcement: @escaping @Sendable () -> PeerAnnouncement?) throws {
        self.configuration = configuration
        self.announcement = announcement
        socket = try UDPSocket(port: configuration.group?.port ?? 0, shared: true)
        try socket.pin(to: configuration.interface)
        if let group = configuration.group { try socket.join(group, on: configuration.interface) }
    }

    /// Datagrams sent so far.
    public var datagramsSent: Int { sent.load(ordering: .relaxed) }

    public func start() {
        let thread = Thread { [self] in run() }
        thread.name = "upgrade-announcer"
        thread.start()
    }

    public func stop() { stopped.store(true, ordering: .relaxed) }

    private func announceAll() {
        guard let bytes = announcement()?.encoded() else { return }
        var targets = configuration.unicast
        if let group = configuration.group { targets.append(group) }
        for target in targets where socket.send(bytes, to: target) == 0 {
            sent.add(1, ordering: .relaxed)
        }
    }

    private func run() {
        var buffer = [UInt8](repeating: 0, count: PeerWire.maxDatagram + 1)
        var nextAnnouncement = Date()
        var tokens = configuration.repliesPerSecond
        var lastRefill = Date()
        while !stopped.load(ordering: .relaxed) {
            if configuration.flood {
                announceAll()
                usleep(40)
                continue
            }
            let now = Date()
            if now >= nextAnnouncement {
                announceAll()
                nextAnnouncement = now.addingTimeInterval(configuration.interval)
            }
            let wait = min(0.5, max(0, nextAnnouncement.timeIntervalSince(now)))
            guard let (count, from) = socket.receive(into: &buffer, timeout: wait) else { continue }
            let elapsed = Date().timeIntervalSince(lastRefill)
            lastRefill = Date()
            tokens = min(configuration.repliesPerSecond, tokens + elapsed * configuration.repliesPerSecond)
            guard count <= PeerWire.maxDatagram, PeerWire.isQuery(buffer[..<count]), tokens >= 1,
                let bytes = announcement()?.encoded()
            else { continue }
            tokens -= 1
            if socket.send(bytes, to: from) == 0 { sent.add(1, ordering: .relaxed) }
        }
    }
}
