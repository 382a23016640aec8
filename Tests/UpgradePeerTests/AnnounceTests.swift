import Foundation
import Logging
import ServiceLifecycle
import Testing
import UpgradePeer

#if canImport(Glibc)
import Glibc
#endif

/// The announcer and discovery on loopback, in-process: multicast pinned to 127.0.0.1 with TTL 1,
/// a group port of each test's own so concurrent runs never hear each other.
@Suite("Peer announcements", .serialized)
struct AnnounceTests {
    static let product = "peer-test"
    let group = try! IPv4Endpoint(parsing: "239.255.77.78:\(Int.random(in: 20_000..<60_000))", what: "group")
    let loopback = try! MulticastInterface(parsing: "127.0.0.1")

    func announcement(port: Int) -> PeerAnnouncement {
        PeerAnnouncement(
            product: Self.product,
            version: "2.0",
            sequence: 2,
            header: String(repeating: "ab", count: 32),
            complete: true,
            port: port
        )
    }

    /// Runs `announcers` as services of one group while `body` runs, then shuts the group down
    /// gracefully; returns what `body` returned once every service has ended.
    func withAnnouncers<T: Sendable>(
        _ announcers: [Announcer],
        _ body: @Sendable () async throws -> T
    ) async throws -> T {
        let services = ServiceGroup(services: announcers, logger: Logger(label: "test"))
        return try await withThrowingTaskGroup(of: T?.self) { tasks in
            tasks.addTask {
                try await services.run()
                return nil
            }
            let result = try await body()
            await services.triggerGracefulShutdown()
            for try await _ in tasks {}
            return result
        }
    }

    @Test("discovery hears each announcer once per interval and per query, by its source address and port")
    func discovery() async throws {
        var configuration = Announcer.Configuration(group: group, interface: loopback)
        configuration.interval = 0.4
        let first = try Announcer(configuration, logger: Logger(label: "a")) { announcement(port: 7101) }
        let second = try Announcer(configuration, logger: Logger(label: "b")) { announcement(port: 7102) }
        let found = try await withAnnouncers([first, second]) {
            var options = PeerDiscovery.Options(group: group, interface: loopback, product: Self.product)
            options.wait = 1.2
            return try await PeerDiscovery.listen(options)
        }
        #expect(Set(found.peers.map(\.url)) == ["http://127.0.0.1:7101", "http://127.0.0.1:7102"], "\(found.peers)")
        #expect(found.flooding.isEmpty)
        for peer in found.peers {
            // Every 0.4 s over 1.2 s (3 or 4, more when a busy machine stretches the window) plus
            // up to two answered queries: never near the flood threshold of 50.
            #expect((2..<50).contains(peer.datagrams), "\(peer.url): \(peer.datagrams)")
            #expect(peer.announcement.version == "2.0" && peer.announcement.port == Int(peer.url.suffix(4)))
        }
        #expect(first.datagramsSent >= 3 && second.datagramsSent >= 3)
    }

    @Test("what arrives while every thread of the task pool is busy (a scan beside the window) is still heard")
    func busyPool() async throws {
        var configuration = Announcer.Configuration(group: group, interface: loopback)
        configuration.interval = 0.2
        let announcer = try Announcer(configuration, logger: Logger(label: "busy")) { announcement(port: 7401) }
        let found = try await withAnnouncers([announcer]) {
            var options = PeerDiscovery.Options(group: group, interface: loopback, product: Self.product)
            options.wait = 1
            // The announcer's service starts on the pool: under a loaded test run it may not have
            // run yet, and the pool is about to be blocked. Wait until it is sending.
            for _ in 0..<200 where announcer.datagramsSent == 0 { try await Task.sleep(for: .milliseconds(50)) }
            async let listened = PeerDiscovery.listen(options)
            try await Task.sleep(for: .milliseconds(150))
            // Block every pool thread for longer than the window, as a CPU-bound walk would.
            await withTaskGroup(of: Void.self) { busy in
                for _ in 0..<ProcessInfo.processInfo.activeProcessorCount {
                    busy.addTask { usleep(1_300_000) }
                }
            }
            return try await listened
        }
        let peer = try #require(found.peers.first, "\(found)")
        #expect(peer.url == "http://127.0.0.1:7401")
        // Every 0.2 s through a window that lasted at least the 1.3 s the pool was blocked.
        #expect(peer.datagrams >= 5, "\(peer.datagrams) datagrams heard")
    }

    @Test("a flooding announcer is named as flooding, not offered as a peer; other products are dropped")
    func flood() async throws {
        var configuration = Announcer.Configuration(group: group, interface: loopback)
        configuration.flood = true
        let flooding = try Announcer(configuration, logger: Logger(label: "flood")) { announcement(port: 7201) }
        var quiet = Announcer.Configuration(group: group, interface: loopback)
        quiet.interval = 0.3
        let other = try Announcer(quiet, logger: Logger(label: "other")) {
            PeerAnnouncement(product: "other", version: "1", sequence: 1, header: "", complete: true, port: 7202)
        }
        let found = try await withAnnouncers([flooding, other]) {
            var options = PeerDiscovery.Options(group: group, interface: loopback, product: Self.product)
            options.wait = 1
            return try await PeerDiscovery.listen(options)
        }
        #expect(found.peers.isEmpty, "\(found.peers.map(\.url))")
        #expect(found.flooding.map(\.url) == ["http://127.0.0.1:7201"])
        #expect((found.flooding.first?.datagrams ?? 0) > 50)
        #expect(found.dropped >= 3, "the other product's announcements: \(found.dropped)")
    }

    @Test("a share with no multicast pushes announcements by unicast to a neighbour's port")
    func unicast() async throws {
        var configuration = Announcer.Configuration(group: nil, interface: nil)
        configuration.unicast = [try IPv4Endpoint(parsing: "127.0.0.1:\(group.port)", what: "peer")]
        configuration.interval = 0.3
        let announcer = try Announcer(configuration, logger: Logger(label: "unicast")) { announcement(port: 7301) }
        let found = try await withAnnouncers([announcer]) {
            var options = PeerDiscovery.Options(group: group, interface: loopback, product: Self.product)
            options.wait = 1
            return try await PeerDiscovery.listen(options)
        }
        #expect(found.peers.map(\.url) == ["http://127.0.0.1:7301"])
    }

    @Test("a bad group or interface fails when the announcer is made, before anything runs")
    func badSetup() throws {
        let notGroup = try IPv4Endpoint(parsing: "10.1.2.3:7072", what: "--announce")
        #expect(throws: PeerSetupError.self) {
            _ = try Announcer(.init(group: notGroup, interface: loopback), logger: Logger(label: "x")) { nil }
        }
        #expect(throws: PeerSetupError.self) { _ = try MulticastInterface(parsing: "nosuch9") }
    }
}
