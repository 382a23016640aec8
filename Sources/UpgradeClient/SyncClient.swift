import Crypto
import Foundation
public import Logging
import NIOHTTP1
import Synchronization
import UpgradeApply
import UpgradeCore
import UpgradePeer
import UpgradeProtocol
import UpgradeTrust
import UpgradeZstd

#if canImport(Glibc)
import Glibc
#endif

/// `upgrade sync`: recover, lock, scan, ask, verify, fetch, install, report.
public enum SyncClient {
    public static func sync(_ options: SyncOptions, logger: Logger) async throws -> SyncReport {
        // Cron: only inside the maintenance window, and not all machines at the same second.
        if let window = options.window, !window.contains(Date()) {
            var report = SyncReport(result: .held, product: options.product)
            report.reason = "outside the maintenance window \(window)"
            return report
        }
        if options.randomDelay > 0 {
            try await Task.sleep(for: .milliseconds(Int64(Double.random(in: 0...options.randomDelay) * 1000)))
        }
        let started = Date()
        return try await withTransports(options) { transport, peers in
            var report =
                options.offline
                ? try await runOffline(options, peers: peers, started: started)
                : try await run(options, transport: transport, peers: peers, logger: logger, started: started)
            // A signed pin: the pinned release, older or newer, as if asked for with --version.
            if let pin = report.pinnedVersion, !options.offline, options.targetVersion == nil {
                var pinned = options
                pinned.targetVersion = pin
                pinned.allowDowngrade = true
                report = try await run(pinned, transport: transport, peers: peers, logger: logger, started: started)
                report.pinnedVersion = pin
            }
            report.bytesReceived = transport.bytesReceived + peers.transport.bytesReceived
            report.peers = peers.board.outcomes
            return report
        }
    }

    /// Runs `body` with the server transport and the peer context, and shuts both clients down
    /// whether it returns or throws (AsyncHTTPClient's `withHTTPClient` shape).
    /// (The transports' byte counters are copyable lock boxes; see `HTTPTransport.received` for
    /// the Swift 6.3.1 optimizer crash a `Mutex` there caused.)
    private static func withTransports<T>(
        _ options: SyncOptions,
        _ body: (HTTPTransport, PeerContext) async throws -> T
    ) async throws -> T {
        let limits = TransferLimits(
            minimumRate: options.minimumRate,
            window: options.rateWindow,
            deadline: options.timeout.map { ContinuousClock.now + .milliseconds(Int64($0 * 1000)) }
        )
        let server = try HTTPTransport(
            caCertificate: options.caCertificate,
            readTimeout: options.readTimeout,
            attempts: options.attempts,
            limits: limits,
            proxy: options.proxy.configuration(for: options.mirror ?? options.server)
        )
        return try await HTTPTransport.using(server) { transport in
            // Peers get one attempt each and a short fuse: a slow peer is dropped, not waited for.
            let peers = try HTTPTransport(
                caCertificate: nil,
                readTimeout: options.peerTimeout,
                attempts: 1,
                connectTimeout: min(options.peerTimeout, 3),
                limits: limits
            )
            return try await HTTPTransport.using(peers) { peers in
                try await body(transport, PeerContext(transport: peers, board: PeerBoard()))
            }
        }
    }

    /// An online run: trust, ask, verify, check, fetch, install, report (see ``SyncRun``).
    private static func run(
        _ options: SyncOptions,
        transport: HTTPTransport,
        peers: PeerContext,
        logger: Logger,
        started: Date
    ) async throws -> SyncReport {
        var run = try await SyncRun(options, peers: peers, started: started, sealed: true)
        try await run.advanceTrust(transport: transport)
        guard let response = try await run.ask(transport: transport, logger: logger),
            let offer = try run.verify(response)
        else { return run.finished() }
        let checked = try await run.check(offer, transport: transport)
        guard let fetched = try await run.fetch(checked, offer: offer, transport: transport) else {
            return run.dryRun(checked)
        }
        return try await run.install(checked, offer: offer, fetched: fetched, transport: transport, logger: logger)
    }

    // MARK: Steps

    /// Removes the downloaded payloads of `needed` (objects, deltas, files from peers), and with
    /// `partial` the unfinished ones too.
    static func removeDownloads(_ needed: [FileContent], from directory: String, partial: Bool = false) {
        let suffixes = partial ? ["", ".delta", ".raw", ".part", ".delta.part"] : ["", ".delta", ".raw"]
        for content in needed {
            for suffix in suffixes { unlink(directory + "/" + content.sha256!.hex + suffix) }
        }
        if partial, let names = try? FileManager.default.contentsOfDirectory(atPath: directory) {
            for name in names where name.hasSuffix(".part") { unlink(directory + "/" + name) }
        }
    }

    /// Refuses (exit 7) before the first payload request unless the root's filesystem has room
    /// for the downloads, the staged files and the journal, with a margin (1 MiB and 2%); the
    /// replaced files move to backups by rename, which takes no space.
    static func requireSpace(session: RootSession, plan: Plan, downloading: UInt64) throws {
        let staged = plan.summary.bytesToWrite + UInt64(plan.operations.count) * 4096
        let needed = downloading + staged
        try session.requireFreeSpace(needed + needed / 50 + (1 << 20))
    }

    /// The install request for a verified release; payloads are filled in once fetched.
    static func installRequest(
        _ options: SyncOptions,
        session: RootSession,
        header: [UInt8],
        manifest: [UInt8],
        plan: Plan
    ) -> InstallRequest {
        var install = InstallRequest(
            root: session.root,
            trusted: options.trusted,
            headerBytes: header,
            manifestBytes: manifest,
            plan: plan,
            payloads: NoPayloads()
        )
        install.stateDirectoryName = options.stateDirectoryName
        // A release whose signing keys the root revoked sets no floor.
        install.allowDowngrade = options.allowDowngrade || !session.installedReleaseIsTrusted(by: options.trusted.root)
        install.rollbackPoints = options.rollbackPoints
        install.hookTimeout = options.hookTimeout
        install.healthCheckTimeout = options.healthCheckTimeout
        install.now = options.now
        return install
    }

    /// Verifies the plan against the tree before a byte is fetched: the dry run's report, and the
    /// plan with the path policy applied (nil when nothing was checked, the release being installed).
    static func checkPlan(_ install: InstallRequest, session: RootSession) throws -> (InstallReport, Plan?) {
        var check = install
        check.dryRun = true
        let dry = try session.install(check)
        return (dry, session.checkedPlan)
    }

    /// The distinct payloads a plan needs.
    static func neededObjects(_ plan: Plan) -> [FileContent] {
        var seen = Set<SHA256Hash>()
        var result = [FileContent]()
        for operation in plan.operations {
            switch operation {
            case .add(_, _, let content), .replace(_, _, let content):
                if let sha = content.sha256, seen.insert(sha).inserted { result.append(content) }
            default: break
            }
        }
        return result
    }

    static func channelKey(_ options: SyncOptions) -> String {
        "channel-\(options.product)-\(options.channel).sequence"
    }

    /// The reason in an error response: the server's `{"error":{"message":…}}`, or the start of
    /// the body (control characters replaced, so a hostile body cannot drive the terminal).
    static func message(_ bytes: [UInt8]) -> String {
        struct ErrorBody: Decodable {
            struct Inner: Decodable { var message: String }
            var error: Inner
        }
        let text =
            (try? JSONDecoder().decode(ErrorBody.self, from: Data(bytes.prefix(4096))))?.error.message
            ?? String(decoding: bytes.prefix(300), as: UTF8.self)
        return String(
            text.prefix(300).map { $0.isASCII && ($0.asciiValue! < 0x20 || $0.asciiValue! == 0x7f) ? " " : $0 }
        )
    }
}
