import Foundation

#if canImport(Glibc)
import Glibc
#endif

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

    /// Sets the sockets up now (so bad options fail at once), then listens on a thread of its own.
    public static func listen(_ options: Options) async throws -> Discovery {
        let listener = try UDPSocket(port: options.group.port, shared: true)
        try listener.pin(to: options.interface)
        try listener.join(options.group, on: options.interface)
        let asker = try UDPSocket(port: 0, shared: false)
        try asker.pin(to: options.interface)
        return await withCheckedContinuation { continuation in
            let thread = Thread {
                continuation.resume(returning: run(options, listener: listener, asker: asker))
            }
            thread.name = "upgrade-discovery"
            thread.start()
        }
    }

    private static func run(_ options: Options, listener: UDPSocket, asker: UDPSocket) -> Discovery {
        struct Seen {
            var announcement: PeerAnnouncement
            var count: Int
            var order: Int
        }
        let query = PeerWire.query(product: options.product)
        let started = Date()
        let deadline = started.addingTimeInterval(options.wait)
        var askedAgain = false
        asker.send(query, to: options.group)
        var seen = [String: Seen]()
        var result = Discovery()
        var buffer = [UInt8](repeating: 0, count: PeerWire.maxDatagram + 1)
        // More than this from one source in the window is a flood, not a peer (an honest one
        // sends one per interval and one per query).
        let floodThreshold = max(50, Int(options.wait * 20))
        while Date() < deadline {
            if !askedAgain && Date().timeIntervalSince(started) > options.wait / 2 {
                asker.send(query, to: options.group)
                askedAgain = true
            }
            var fds = [
                pollfd(fd: listener.fd, events: Int16(POLLIN), revents: 0),
                pollfd(fd: asker.fd, events: Int16(POLLIN), revents: 0),
            ]
            let remaining = max(1, Int32(deadline.timeIntervalSinceNow * 1000))
            guard poll(&fds, 2, min(remaining, 250)) > 0 else { continue }
            for (index, socket) in [listener, asker].enumerated() where fds[index].revents & Int16(POLLIN) != 0 {
                // Drain a bounded batch per wake-up so one socket cannot starve the other.
                for _ in 0..<256 {
                    guard let (count, from) = socket.receive(into: &buffer, timeout: 0) else { break }
                    result.datagrams += 1
                    guard count <= PeerWire.maxDatagram,
                        let announcement = PeerAnnouncement(datagram: buffer[..<count]),
                        announcement.product == options.product
                    else {
                        result.dropped += 1
                        continue
                    }
                    let url = "http://\(from.host):\(announcement.port)"
                    if var known = seen[url] {
                        known.count += 1
                        known.announcement = announcement
                        seen[url] = known
                    } else if seen.count < options.maxPeers {
                        seen[url] = Seen(announcement: announcement, count: 1, order: seen.count)
                    } else {
                        result.dropped += 1
                    }
                }
            }
        }
        for (url, entry) in seen.sorted(by: { $0.value.order < $1.value.order }) {
            if entry.count > floodThreshold {
                result.flooding.append((url, entry.count))
            } else {
                result.peers.append(DiscoveredPeer(url: url, announcement: entry.announcement, datagrams: entry.count))
            }
        }
        return result
    }
}
