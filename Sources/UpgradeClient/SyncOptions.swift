import Crypto
public import Foundation
public import UpgradeApply
public import UpgradeCore
public import UpgradePeer
public import UpgradeTrust

/// What `upgrade sync` does.
public struct SyncOptions: Sendable {
    /// Base URL of `upgrade serve` (plans, and payloads unless `mirror` is set).
    public var server: String
    /// Base URL of any static server holding the repository's files (objects, manifests).
    public var mirror: String?
    public var product: String
    public var channel = "stable"
    public var root: String
    public var stateDirectoryName = ".upgrade"
    public var trusted: TrustedKeys
    /// PEM file of the CA that signed the server's certificate (otherwise the system's roots).
    public var caCertificate: String?
    /// The proxy for the server and mirror (`http_proxy`, `https_proxy`, `no_proxy`; the CLI
    /// reads them from the environment). With a mirror, the mirror's URL picks the proxy.
    public var proxy = ProxySettings()
    public var dryRun = false
    /// Paths a sync leaves as they are (the machine's own addition to the release's path policy).
    public var keep: [Glob] = []
    /// Operator tags sent with the request and matched against the channel's rollout rules.
    public var tags: [String] = []
    /// Try a release that failed here before (by default it is skipped until a newer one appears).
    public var retryFailed = false
    /// Local times of day a sync may change anything (`--window 02:00-04:30`); outside it a run
    /// reports `held` and touches nothing.
    public var window: MaintenanceWindow?
    /// Seconds of random delay before a run starts (`--random-delay`), so a fleet's cron runs
    /// spread out.
    public var randomDelay: Double = 0
    /// Seconds within which an installed release must be confirmed (`upgrade confirm`); an
    /// unconfirmed one is rolled back by the next run (`--confirm-within`).
    public var confirmWithin: Double?
    /// Earlier releases the root keeps for `upgrade rollback` (`--rollback-points`).
    public var rollbackPoints: Int?
    public var allowDowngrade = false
    public var lockTimeout: Double = 60
    public var hookTimeout: Double = 300
    public var healthCheckTimeout: Double = 60
    public var parallelDownloads = 4
    /// Attempts per request before giving up.
    public var attempts = 5
    /// Seconds without data before a transfer counts as stalled.
    public var readTimeout: Int64 = 30
    /// Bytes per second below which a transfer is abandoned (measured over `rateWindow`).
    public var minimumRate: UInt64 = 1024
    /// Seconds over which `minimumRate` is measured.
    public var rateWindow: Double = 30
    /// Seconds the whole run may spend asking and downloading; nil: no limit. The install,
    /// once started, always finishes or rolls back.
    public var timeout: Double?
    /// Seconds a delta may take (download and decode) before its file is fetched whole instead.
    public var deltaTimeout: Double = 60
    public var deviceID: String?
    /// Bearer token for the server's plan and report routes (`--token-file`), when it asks for one.
    public var deviceToken: String?
    public var now: Int64 = Timestamps.now()
    /// LAN peers: never (the default), discovered by multicast, or these peer servers.
    public var peers = PeerMode.off
    /// The multicast group and port announcements use (`--peers auto`).
    public var announceGroup: IPv4Endpoint
    /// The interface multicast goes out of and is heard on; nil: the kernel's choice.
    public var peerInterface: MulticastInterface?
    /// Seconds to listen for announcements.
    public var peerWait = 2.0
    /// Seconds without data before a peer counts as stalled (and is dropped).
    public var peerTimeout: Int64 = 5
    /// No server: upgrade from a release a peer holds, planned here from its signed manifest.
    public var offline = false
    /// With `offline`: install this version (one a peer holds) instead of the newest.
    public var targetVersion: String?
    /// Called as payloads arrive.
    public var progress: (@Sendable (SyncProgress) -> Void)?

    public init(server: String, product: String, root: String, trusted: TrustedKeys) {
        self.server = server
        self.product = product
        self.root = root
        self.trusted = trusted
        announceGroup = try! IPv4Endpoint(parsing: PeerWire.defaultGroup, what: "group")
    }
}

/// Where `upgrade sync` looks for LAN peers.
public enum PeerMode: Sendable, Equatable {
    /// Never listens, never asks.
    case off
    /// Listens for multicast announcements (and asks the group) for a bounded time.
    case auto
    /// Asks these peer servers (`HOST:PORT` of `upgrade share --listen`) by unicast HTTP.
    case list([String])
}

/// Download progress.
public struct SyncProgress: Sendable {
    public var objectsDone: Int
    public var objectsTotal: Int
    public var bytesDone: UInt64
    public var bytesTotal: UInt64
}

/// What a sync did: one JSON document with `--json`.
public struct SyncReport: Codable, Sendable {
    /// `installed`, `up-to-date` or `dry-run`.
    public var result: RunResult
    public var product: String
    public var fromVersion: String?
    public var toVersion: String?
    public var summary: Plan.Summary?
    /// The plan, for dry runs.
    public var operations: [OperationJSON]?
    /// Compressed bytes the payloads need (dry run: what would be downloaded).
    public var bytesToDownload: UInt64 = 0
    /// Bytes received for payloads (Range resumes count only what was sent again).
    public var bytesDownloaded: UInt64 = 0
    public var objectsDownloaded = 0
    public var resumedDownloads = 0
    /// Size of the plan request body sent.
    public var requestBytes = 0
    /// Size of the plan response body, decoded (the wire bytes are in `bytesReceived`).
    public var planBytes = 0
    /// How the signed manifest came: `patch` (from the installed one), `compressed` or
    /// `plain`; absent when none was needed.
    public var manifestForm: String?
    /// Bytes received for the manifest.
    public var manifestBytes = 0
    /// Every response body byte received: plan, manifest and payloads.
    public var bytesReceived: UInt64 = 0
    public var durationSeconds = 0.0
    public var recovered: String?
    /// How each written file travels (whole object or delta) and its bytes.
    public var files: [FileTransfer] = []
    /// Files that came as deltas.
    public var deltasUsed = 0
    /// Deltas that could not be used, and why (the files were fetched whole).
    public var fallbacks: [String] = []
    /// Payload bytes received from LAN peers (included in `bytesDownloaded`).
    public var bytesFromPeers: UInt64 = 0
    /// Files fetched from LAN peers.
    public var objectsFromPeers = 0
    /// Every peer heard of, what it offered and what became of it.
    public var peers: [PeerOutcome] = []
    /// Local changes the sync reverted, deleted or kept, and config conflicts (absent: none).
    public var localChanges: [LocalChange]?
    /// Why the run did not install (`held`, `skipped`).
    public var reason: String?
    /// The version a signed pin of the channel holds this device at (installed by the same run).
    public var pinnedVersion: String?
}

/// One peer in a sync report.
public struct PeerOutcome: Codable, Sendable {
    public var url: String
    /// The release it announced.
    public var version: String?
    public var status: PeerStatus
    public var bytes: UInt64 = 0
    public var objects = 0

    public var dropped: Bool { if case .dropped = status { true } else { false } }
}

/// What became of a peer in one run. In JSON it is one string: `used`, `not needed`,
/// `ignored: REASON` or `dropped: REASON`.
public enum PeerStatus: Sendable, Hashable, Codable, CustomStringConvertible {
    /// It delivered files.
    case used
    /// It holds the release, but nothing was needed from it.
    case notNeeded
    /// Not asked: it holds something else, or was unreachable when checked.
    case ignored(String)
    /// It misbehaved; not asked again this run.
    case dropped(String)

    public var description: String {
        switch self {
        case .used: "used"
        case .notNeeded: "not needed"
        case .ignored(let why): "ignored: \(why)"
        case .dropped(let why): "dropped: \(why)"
        }
    }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        switch text {
        case "used": self = .used
        case "not needed": self = .notNeeded
        case _ where text.hasPrefix("ignored: "): self = .ignored(String(text.dropFirst("ignored: ".count)))
        case _ where text.hasPrefix("dropped: "): self = .dropped(String(text.dropFirst("dropped: ".count)))
        default:
            throw DecodingError.dataCorrupted(
                .init(codingPath: decoder.codingPath, debugDescription: "peer status \(text)")
            )
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// Why a sync stopped.
public enum SyncError: Error, CustomStringConvertible {
    /// The server or mirror could not be reached or kept failing.
    case network(String)
    /// The server refused the request.
    case server(status: Int, message: String)
    /// Something signed or hashed did not check out; nothing was changed.
    case verification(String)
    /// A payload did not decode to its signed content (the facts in ``PayloadMismatch``);
    /// retried, then the run fails with it (exit 4), the tree unchanged.
    case corruptPayload(PayloadMismatch)
    /// The disk filled up while downloading; the downloads were removed.
    case noSpace(String)
    /// A source sent less than the minimum rate over the window (`--min-rate`, `--rate-window`).
    case tooSlow(url: String, bytesPerSecond: Double, window: Double)
    /// The run's `--timeout` passed.
    case timedOut(String)
    /// The server has no such product, channel or release (HTTP 404 to the plan request): not
    /// retried.
    case notFound(String)
    /// The request cannot succeed however often it is tried (a URL the client cannot use, a
    /// certificate it does not trust, TLS spoken to a plain-HTTP server): not retried; the
    /// message carries a hint.
    case permanent(String)
    /// A flag's value cannot be used (a `--ca-cert` file that is missing or not PEM, a proxy
    /// variable that is not a URL).
    case configuration(String)
    /// The server refused this device (it wants a device token); nothing was changed.
    case refused(String)
    /// The release is published for another platform; nothing was fetched or changed.
    case wrongPlatform(PlatformMismatch)

    public var description: String {
        switch self {
        case .network(let why): "network: \(why)"
        case .server(let status, let message): "server answered \(status): \(message)"
        case .verification(let why): "verification failed: \(why); nothing was changed"
        case .corruptPayload(let mismatch): "verification failed: \(mismatch); nothing was changed"
        case .noSpace(let why):
            "not enough space while downloading (\(why)); the downloads were removed and nothing was changed"
        case .tooSlow(let url, let rate, let window):
            "network: \(url) sent \(String(format: "%.0f", rate)) bytes/s over \(String(format: "%.0f", window)) s, below --min-rate; abandoned"
        case .timedOut(let what): "network: --timeout passed while \(what); nothing was changed"
        case .notFound(let why): "not found: \(why)"
        case .permanent(let why): "network: \(why)"
        case .configuration(let why): why
        case .refused(let why): "refused: \(why); nothing was changed"
        case .wrongPlatform(let mismatch): "refused: \(mismatch); nothing was changed"
        }
    }
}

/// An object that did not decode to the content the signed release names: what was expected,
/// what arrived and from where (`--json` error documents carry it as `payload`).
public struct PayloadMismatch: Sendable, Encodable, CustomStringConvertible {
    /// The signed SHA-256 and size.
    public let sha256: String
    public let size: UInt64
    /// Where it came from.
    public let source: String
    /// Bytes received (compressed).
    public let receivedBytes: UInt64
    /// What those bytes decode to; nil when they are not zstd or run past the signed size.
    public let decodedSize: UInt64?
    public let decodedSHA256: String?
    /// Downloads tried, all alike.
    public var attempts = 1

    public init(expected: FileContent, source: String, received: [UInt8], decoded: [UInt8]?) {
        sha256 = expected.sha256?.hex ?? ""
        size = expected.size
        self.source = source
        receivedBytes = UInt64(received.count)
        decodedSize = decoded.map { UInt64($0.count) }
        decodedSHA256 = decoded.map { SHA256Hash(bytes: Array(SHA256.hash(data: $0)))!.hex }
    }

    public var description: String {
        let got =
            if let decodedSize, let decodedSHA256 {
                "\(decodedSize) bytes with SHA-256 \(decodedSHA256)"
            } else {
                "\(receivedBytes) bytes that are not a zstd frame within the signed size"
            }
        return "object \(sha256) from \(source) decodes to \(got), not the signed \(size) bytes"
            + (attempts > 1 ? " (after \(attempts) attempts)" : "")
    }
}

/// A daily window of local time, `HH:MM-HH:MM`; one that ends before it starts spans midnight.
public struct MaintenanceWindow: Sendable, CustomStringConvertible {
    /// Minutes after local midnight.
    public let start: Int
    public let end: Int

    public init(parsing text: String) throws(SyncError) {
        let parts = text.split(separator: "-").map { $0.split(separator: ":").map { Int($0) } }
        guard parts.count == 2, parts.allSatisfy({ $0.count == 2 }),
            let sh = parts[0][0], let sm = parts[0][1], let eh = parts[1][0], let em = parts[1][1],
            (0...23).contains(sh), (0...23).contains(eh), (0...59).contains(sm), (0...59).contains(em),
            sh * 60 + sm != eh * 60 + em
        else {
            throw .configuration(
                "--window \(text.debugDescription): expected HH:MM-HH:MM in local time, e.g. 02:00-04:30"
            )
        }
        start = sh * 60 + sm
        end = eh * 60 + em
    }

    /// True when `date`'s local time of day is in the window (end excluded).
    public func contains(_ date: Date) -> Bool {
        var seconds = time_t(date.timeIntervalSince1970)
        var local = tm()
        localtime_r(&seconds, &local)
        let minute = Int(local.tm_hour) * 60 + Int(local.tm_min)
        return start < end ? (start..<end).contains(minute) : (minute >= start || minute < end)
    }

    public var description: String {
        String(format: "%02d:%02d-%02d:%02d", start / 60, start % 60, end / 60, end % 60)
    }
}
