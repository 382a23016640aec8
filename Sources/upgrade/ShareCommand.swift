import ArgumentParser
import Foundation
import Hummingbird
import Logging
import UpgradePeer

/// `upgrade share`.
struct ShareCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "share",
        abstract: "Share the installed release of a root with neighbours on the LAN (opt-in).",
        discussion: """
            Serves the installed release's signed header and manifest, and its files by SHA-256 \
            (only files whose content was verified against the signed manifest; nothing else \
            under the root, nothing outside it), plus the previous release's files that the last \
            upgrade replaced, so a neighbour can go back. Announces product, version, sequence, \
            header digest and port by UDP multicast (TTL 1) every --interval seconds and when \
            asked; --peer sends the same announcements by unicast where multicast does not pass. \
            Clients trust nothing a peer says: every byte is checked against the publisher's \
            signature. Prints "listening on URL" once the port is bound; runs until SIGTERM/SIGINT.
            """
    )

    @Option(help: "The installed tree to share.") var root: String
    @Option(help: "Address for the peer server, HOST:PORT (port 0 picks a free one).") var listen =
        "0.0.0.0:\(PeerWire.defaultPort)"
    @Option(help: "Multicast GROUP:PORT to announce on (\(PeerWire.defaultGroup)), or `off`.") var announce = PeerWire
        .defaultGroup
    @Option(help: "Interface for multicast: an IPv4 address of it or its name (default: the kernel's choice).")
    var interface: String?
    @Option(help: "Also announce by unicast to this neighbour's announce port, HOST:PORT; repeatable.") var peer:
        [String] = []
    @Option(help: "Seconds between announcements.") var interval: Double = 5
    @Flag(help: "Do not serve the previous release's replaced files.") var noPrevious = false
    @Option(help: "State directory name inside the root.") var stateDir = ".upgrade"
    @Option(help: "Log level: trace, debug, info, notice, warning, error.") var logLevel = "info"
    @Option(help: .hidden) var fault: [PeerFault] = []

    func validate() throws {
        _ = try ListenAddress(listen)
        guard interval > 0 else { throw ValidationError("--interval must be positive") }
    }

    func run() async throws {
        var logger = Logger(label: "upgrade.share")
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        var configuration = ShareConfiguration(root: root)
        let address = try ListenAddress(listen)
        configuration.host = address.host
        configuration.port = address.port
        configuration.stateDirectoryName = stateDir
        configuration.servePrevious = !noPrevious
        configuration.faults = Set(fault)

        // Bad announce options fail before anything is served.
        var announcerConfiguration = Announcer.Configuration(
            group: announce == "off" ? nil : try IPv4Endpoint(parsing: announce, what: "--announce"),
            interface: try interface.map(MulticastInterface.init(parsing:))
        )
        announcerConfiguration.unicast = try peer.map { try IPv4Endpoint(parsing: $0, what: "--peer") }
        announcerConfiguration.interval = interval
        announcerConfiguration.flood = fault.contains(.flood)

        let service = ShareService(configuration: configuration, logger: logger)
        try service.refresh()
        guard service.holdsRelease else {
            throw CommandFailure(
                description:
                    "nothing is installed in \(root); install a release (upgrade sync or apply) before sharing it",
                exitStatus: .invalidInput
            )
        }
        // The announcer waits for the bound port; the share's group runs it, the watcher (the
        // installed release changes when the root is upgraded) and the peer server together.
        let (bound, portBound) = AsyncStream.makeStream(of: Void.self)
        let announcer = try Announcer(
            announcerConfiguration,
            logger: logger,
            ready: { for await _ in bound { break } },
            announcement: { service.announcement() }
        )
        let host = configuration.host
        let app = buildShareApplication(
            service,
            logger: logger,
            services: [announcer, ReleaseWatcher(service, every: interval)]
        ) { port in
            FileHandle.standardOutput.write(Data("listening on http://\(host):\(port)\n".utf8))
            portBound.yield()
        }
        // A share only reads: SIGTERM and SIGINT end it at once (no graceful drain, which a
        // stalled client could hold open forever).
        try await app.run()
    }
}

extension PeerFault: ExpressibleByArgument {}
