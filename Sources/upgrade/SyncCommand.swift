import ArgumentParser
import Foundation
import Logging
import Synchronization
import UpgradeApply
import UpgradeClient
import UpgradeCore
import UpgradePeer
import UpgradeRepository

/// `upgrade sync`.
struct SyncCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sync",
        abstract: "Bring a root to the latest release of its channel from an upgrade server.",
        discussion: """
            Recovers, locks, scans (stat cache), asks the server for a plan (sending only local \
            changes when a release is installed), verifies the signed channel record and header \
            and the plan against the signed manifest, fetches payloads in parallel (resuming \
            broken downloads, every byte verified), installs them as one transaction and reports \
            the outcome. With --peers, payloads come first from LAN peers running `upgrade share` that \
            hold the target release (each byte checked against the signature; a misbehaving peer \
            is dropped and named); --offline needs no server at all. Prints nothing when nothing \
            changed, unless --json. Every flag can come \
            from --config FILE (TOML: key = value, keys are the long flag names); flags win.
            """
    )

    @Option(help: "Base URL of `upgrade serve`.") var server: String?
    @Option(help: "Product to install.") var product: String?
    @Option(help: "The installed tree (created when missing).") var root: String?
    @Option(help: "Trusted public key (ed25519:…) or a file of keys; repeat for rotation.") var trust: [String] = []
    @Option(help: "Release channel (default stable).") var channel: String?
    @Option(help: "Base URL of a static mirror or CDN holding the repository's files.") var mirror: String?
    @Option(help: "PEM CA certificate that signed the server's certificate.") var caCert: String?
    @Option(help: "TOML config file with any of these flags.") var config: String?
    @Option(help: "State directory name inside the root (default .upgrade).") var stateDir: String?
    @Option(help: "Seconds to wait for another run's lock (default 60).") var lockTimeout: Double?
    @Option(help: "Parallel downloads (default 4).") var parallel: Int?
    @Option(help: "Seconds the run may spend asking and downloading before it gives up (exit 10); default: no limit.")
    var timeout: Double?
    @Option(help: "Bytes per second below which a download is abandoned (default 1024).") var minRate: Int?
    @Option(help: "Seconds over which --min-rate is measured (default 30).") var rateWindow: Double?
    @Option(help: "Seconds a binary delta may take before its file is fetched whole (default 60).")
    var deltaTimeout: Double?
    @Option(help: "Device id reported to the server (default: derived from /etc/machine-id).") var deviceId: String?
    @Option(help: "File holding this device's token, for a server run with --device-tokens.") var tokenFile: String?
    @Flag(help: "Verify and show the plan and the bytes it would download; change nothing.") var dryRun = false
    @Flag(help: "Print one JSON document.") var json = false
    @Flag(help: "Install even if the release is older than the installed one.") var allowDowngrade = false
    @Option(
        help:
            "Path pattern a sync leaves as it is (never written or deleted; `*`, `?`, `**`, a directory covers what is beneath); repeat."
    )
    var keep: [String] = []
    @Option(
        help: "Operator tag of this device, sent to the server and matched by the channel's rollout rules (repeatable)."
    )
    var tag: [String] = []
    @Flag(help: "Try a release that failed its hooks or health check here before (skipped otherwise).")
    var retryFailed = false
    @Option(help: "Change nothing outside this daily window of local time, HH:MM-HH:MM (result held).") var window:
        String?
    @Option(help: "Wait a random 0 to this many seconds first (spreads a fleet's cron runs).") var randomDelay: Double?
    @Option(
        help:
            "Put what this run installs on probation: unless `upgrade confirm` runs within DURATION (90s, 30m, 2h), the next run rolls it back."
    )
    var confirmWithin: String?
    @Option(help: "Earlier releases to keep for `upgrade rollback`, one step back each (1-20; the root remembers it).")
    var rollbackPoints: Int?
    @Option(
        help:
            "LAN peers: off (default; never listens), auto (multicast announcements), or HOST:PORT,... of `upgrade share` servers."
    )
    var peers: String?
    @Option(help: "Multicast GROUP:PORT peers announce on (default \(PeerWire.defaultGroup)).") var announce: String?
    @Option(help: "Interface for multicast: an IPv4 address of it or its name (default: the kernel's choice).")
    var interface: String?
    @Option(help: "Seconds to listen for peer announcements (default 2).") var peerWait: Double?
    @Option(help: "Seconds without data before a peer is dropped as stalled (default 5).") var peerTimeout: Int?
    @Flag(help: "No server: upgrade from a release a peer holds (needs --peers; the plan is computed here).")
    var offline = false
    @Option(
        help:
            "Install this version of the product (any signed release; offline: one a peer holds) instead of the channel's."
    )
    var version: String?

    static let configKeys: Set<String> = [
        "server", "product", "root", "trust", "channel", "mirror", "ca-cert", "state-dir", "lock-timeout", "parallel",
        "timeout", "min-rate", "rate-window", "delta-timeout", "device-id", "token-file",
        "dry-run", "json", "allow-downgrade", "peers", "announce", "interface", "peer-wait", "peer-timeout", "offline",
        "version", "keep", "tag", "retry-failed", "window", "random-delay", "confirm-within", "rollback-points",
    ]

    func run() async throws {
        Main.stopOnSignals()
        Main.keepFreedMemory()
        let file = try config.map { path throws -> ConfigFile in
            let file = try ConfigFile(path: path)
            let unknown = file.unknownKeys(Self.configKeys)
            if !unknown.isEmpty { throw file.unknownKeysError(unknown) }
            return file
        }
        let json = try json || (file?.bool("json") ?? false)
        if json { JSONOutput.request(command: "sync") }
        func pick(_ flag: String?, _ key: String) throws -> String? { try flag ?? file?.string(key) }
        let offline = try offline || (file?.bool("offline") ?? false)
        let server = try pick(server, "server")
        guard server != nil || offline, let product = try pick(product, "product"), let root = try pick(root, "root")
        else {
            throw CommandFailure(
                description:
                    "--server (or --offline), --product and --root are required (on the command line or in --config)",
                exitStatus: .usage
            )
        }
        if let server { try Self.checkURL(server, flag: "--server") }
        let trustValues = trust.isEmpty ? (try file?.strings("trust") ?? []) : trust
        var options = SyncOptions(
            server: server ?? "",
            product: product,
            root: root,
            trusted: try KeyFiles.loadTrusted(trustValues)
        )
        options.channel = try pick(channel, "channel") ?? "stable"
        options.mirror = try pick(mirror, "mirror")
        if let mirror = options.mirror { try Self.checkURL(mirror, flag: "--mirror") }
        options.proxy = try ProxySettings(environment: ProcessInfo.processInfo.environment)
        options.caCertificate = try pick(caCert, "ca-cert")
        options.stateDirectoryName = try pick(stateDir, "state-dir") ?? ".upgrade"
        options.lockTimeout = try lockTimeout ?? file?.number("lock-timeout") ?? 60
        options.parallelDownloads = try parallel ?? (file?.number("parallel")).map { Int($0) } ?? 4
        options.timeout = try timeout ?? file?.number("timeout")
        options.minimumRate = UInt64(max(0, try minRate.map(Double.init) ?? file?.number("min-rate") ?? 1024))
        options.rateWindow = try rateWindow ?? file?.number("rate-window") ?? 30
        options.deltaTimeout = try deltaTimeout ?? file?.number("delta-timeout") ?? 60
        for (name, value) in [("--timeout", options.timeout ?? 1), ("--rate-window", options.rateWindow)]
        where !(value > 0) {
            throw CommandFailure(description: "\(name) must be a positive number of seconds", exitStatus: .usage)
        }
        if !(options.deltaTimeout > 0) {
            throw CommandFailure(
                description: "--delta-timeout must be a positive number of seconds",
                exitStatus: .usage
            )
        }
        options.deviceID = try pick(deviceId, "device-id")
        if let path = try pick(tokenFile, "token-file") {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8),
                case let token = text.trimmingCharacters(in: .whitespacesAndNewlines), !token.isEmpty,
                !token.contains(where: \.isNewline)
            else {
                throw CommandFailure(
                    description: "--token-file \(path): cannot read a token (one line) from it",
                    exitStatus: .usage
                )
            }
            options.deviceToken = token
        }
        options.dryRun = try dryRun || (file?.bool("dry-run") ?? false)
        options.allowDowngrade = try allowDowngrade || (file?.bool("allow-downgrade") ?? false)
        options.keep = try Output.keepPatterns(keep.isEmpty ? (try file?.strings("keep") ?? []) : keep)
        options.tags = tag.isEmpty ? (try file?.strings("tag") ?? []) : tag
        options.retryFailed = try retryFailed || (file?.bool("retry-failed") ?? false)
        options.window = try pick(window, "window").map(MaintenanceWindow.init(parsing:))
        options.randomDelay = try randomDelay ?? file?.number("random-delay") ?? 0
        options.rollbackPoints = try rollbackPoints ?? (file?.number("rollback-points")).map { Int($0) }
        if let points = options.rollbackPoints, !(1...20).contains(points) {
            throw CommandFailure(description: "--rollback-points must be 1 to 20", exitStatus: .usage)
        }
        if let text = try pick(confirmWithin, "confirm-within") {
            guard let seconds = Self.duration(text), seconds > 0 else {
                throw CommandFailure(
                    description:
                        "--confirm-within \(text.debugDescription): expected a duration such as 90s, 30m or 2h",
                    exitStatus: .usage
                )
            }
            options.confirmWithin = seconds
        }
        guard options.randomDelay >= 0, options.randomDelay <= 86_400 else {
            throw CommandFailure(description: "--random-delay must be 0 to 86400 seconds", exitStatus: .usage)
        }
        try configurePeers(&options, file: file, offline: offline)
        if !json && isatty(STDERR_FILENO) == 1 { options.progress = ProgressBar.draw }

        var logger = Logger(label: "upgrade.sync")
        logger.logLevel = .warning
        let frozen = options
        let report = try await RunLog.around(
            command: "sync",
            root: options.root,
            stateDirectory: options.stateDirectoryName,
            channel: options.channel
        ) {
            defer { if frozen.progress != nil { ProgressBar.clear() } }
            return try await SyncClient.sync(frozen, logger: logger)
        } result: {
            ($0.result, $0.toVersion)
        }
        if json {
            JSONOutput.print(command: "sync", report)
            return
        }
        let from = report.fromVersion ?? "nothing"
        let to = report.toVersion ?? "?"
        switch report.result {
        case .upToDate, .nothingToDo, .held: return
        case .skipped: print("skipped: \(report.reason ?? "")")
        case .dryRun:
            let transfers = Dictionary(report.files.map { ($0.path, $0) }, uniquingKeysWith: { first, _ in first })
            for operation in report.operations ?? [] {
                let line = "\(operation.op) \(operation.path)"
                if let transfer = transfers[operation.path] {
                    print("\(line)  [\(transfer.transfer), \(Terminal.bytes(transfer.bytes))]")
                } else {
                    print(line)
                }
            }
            for fallback in report.fallbacks { print("note: \(fallback)") }
            for line in Output.localChangeLines(report.localChanges) { print(line) }
            print(
                "dry run: \(report.product) \(from) -> \(to): \(report.summary.map(DiffCommand.summaryLine) ?? ""); would download \(Terminal.bytes(report.bytesToDownload)); nothing was changed"
            )
        default:
            if let recovered = report.recovered { print("recovery: \(recovered)") }
            print(
                "\(report.result.words): \(report.product) \(from) -> \(to); \(report.summary.map(DiffCommand.summaryLine) ?? ""); downloaded \(Terminal.bytes(report.bytesDownloaded)) (\(report.objectsDownloaded) whole, \(report.deltasUsed) as deltas), \(String(format: "%.1f", report.durationSeconds)) s"
            )
            for fallback in report.fallbacks { print("note: \(fallback)") }
            for line in Output.localChangeLines(report.localChanges) { print(line) }
            if report.bytesFromPeers > 0 {
                print("from peers: \(Terminal.bytes(report.bytesFromPeers)) in \(report.objectsFromPeers) files")
            }
            for peer in report.peers where peer.dropped { print("note: peer \(peer.url) \(peer.status)") }
        }
    }

    /// `90`, `90s`, `30m`, `2h`, `1d` in seconds; nil when it is none of those.
    static func duration(_ text: String) -> Double? {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86_400]
        if let unit = text.last, let factor = units[unit] { return Double(text.dropLast()).map { $0 * factor } }
        return Double(text)
    }

    /// A server or mirror URL the client can use: http:// or https:// with a host. Anything
    /// else is a usage error at once, not a minute of retries.
    static func checkURL(_ text: String, flag: String) throws {
        guard let components = URLComponents(string: text), let scheme = components.scheme?.lowercased(),
            ["http", "https"].contains(scheme), let host = components.host, !host.isEmpty
        else {
            let hint =
                text.contains("://")
                ? "only http:// and https:// are supported" : "add the scheme: http://\(text) or https://\(text)"
            throw CommandFailure(
                description: "\(flag) \(text.debugDescription) is not a usable URL; \(hint)",
                exitStatus: .usage
            )
        }
    }

    /// The peer flags (or config keys); bad values are usage errors before anything runs.
    private func configurePeers(_ options: inout SyncOptions, file: ConfigFile?, offline: Bool) throws {
        let mode = try peers ?? file?.string("peers") ?? "off"
        switch mode {
        case "off": options.peers = .off
        case "auto": options.peers = .auto
        default:
            let addresses = mode.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            for address in addresses {
                let port = address.split(separator: ":").last.flatMap { Int($0) }
                guard address.split(separator: ":").count >= 2, let port, (1...65535).contains(port) else {
                    throw CommandFailure(
                        description: "--peers \(mode.debugDescription): expected off, auto or HOST:PORT,...",
                        exitStatus: .usage
                    )
                }
            }
            options.peers = .list(addresses)
        }
        if let group = try announce ?? file?.string("announce") {
            options.announceGroup = try IPv4Endpoint(parsing: group, what: "--announce")
            guard options.announceGroup.isMulticast else {
                throw CommandFailure(
                    description:
                        "--announce \(group): \(options.announceGroup.host) is not a multicast group (224.0.0.0/4)",
                    exitStatus: .usage
                )
            }
        }
        options.peerInterface = try (interface ?? file?.string("interface")).map(MulticastInterface.init(parsing:))
        options.peerWait = try peerWait ?? file?.number("peer-wait") ?? 2
        options.peerTimeout = Int64(try peerTimeout ?? (file?.number("peer-timeout")).map { Int($0) } ?? 5)
        guard options.peerWait > 0, options.peerWait <= 60, options.peerTimeout > 0 else {
            throw CommandFailure(
                description: "--peer-wait must be in (0, 60] and --peer-timeout positive",
                exitStatus: .usage
            )
        }
        options.offline = offline
        options.targetVersion = try version ?? file?.string("version")
        if offline && options.peers == .off {
            throw CommandFailure(
                description: "--offline needs peers: --peers auto or --peers HOST:PORT,...",
                exitStatus: .usage
            )
        }
    }
}

/// A one-line progress bar on standard error that moves with the bytes: done/total, rate and
/// time left, redrawn at most ten times a second.
enum ProgressBar {
    private struct State {
        var started: ContinuousClock.Instant?
        var lastDraw: ContinuousClock.Instant?
    }

    private static let state = Mutex(State())

    @Sendable static func draw(_ progress: SyncProgress) {
        let now = ContinuousClock.now
        let elapsed: Double? = state.withLock { state in
            let started = state.started ?? now
            state.started = started
            let finished = progress.bytesDone >= progress.bytesTotal && progress.objectsDone >= progress.objectsTotal
            if let last = state.lastDraw, now - last < .milliseconds(100), !finished { return nil }
            state.lastDraw = now
            return seconds(now - started)
        }
        guard let elapsed else { return }
        FileHandle.standardError.write(Data(("\r" + line(progress, elapsed: elapsed)).utf8))
    }

    /// The bar for `progress` after `elapsed` seconds (80 columns at most).
    static func line(_ progress: SyncProgress, elapsed: Double) -> String {
        let fraction = progress.bytesTotal == 0 ? 1 : min(1, Double(progress.bytesDone) / Double(progress.bytesTotal))
        let filled = Int(fraction * 20)
        let bar = String(repeating: "#", count: filled) + String(repeating: " ", count: 20 - filled)
        let rate = elapsed > 0.2 ? Double(progress.bytesDone) / elapsed : 0
        var text =
            "[\(bar)] \(Terminal.bytes(progress.bytesDone))/\(Terminal.bytes(progress.bytesTotal)) \(progress.objectsDone)/\(progress.objectsTotal) files"
        if rate > 0 {
            text += " \(Terminal.bytes(UInt64(rate)))/s"
            let left = Double(progress.bytesTotal.saturatingSubtract(progress.bytesDone)) / rate
            text += " ETA \(duration(left))"
        }
        return text.padding(toLength: max(text.count, 79), withPad: " ", startingAt: 0)
    }

    static func duration(_ seconds: Double) -> String {
        let total = Int(seconds.rounded(.up))
        return total >= 3600
            ? String(format: "%d:%02d:%02d", total / 3600, total / 60 % 60, total % 60)
            : String(format: "%d:%02d", total / 60, total % 60)
    }

    private static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }

    static func clear() {
        FileHandle.standardError.write(Data(("\r" + String(repeating: " ", count: 79) + "\r").utf8))
    }
}

extension UInt64 {
    fileprivate func saturatingSubtract(_ other: UInt64) -> UInt64 { self > other ? self - other : 0 }
}
