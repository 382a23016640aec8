public import Foundation
public import UpgradeProtocol

/// What the fleet store keeps: each device's last known state, its recent history, and the
/// first attempts at each release (for auto-halt). SQLite by default, PostgreSQL to share one
/// fleet between several plan servers; the logic is one (``FleetLedger``), the databases two.
public protocol FleetStore: Sendable {
    /// A plan request: the device is alive and runs `contact.version`.
    func contact(_ contact: FleetContact) async throws
    /// A sync report (online, or queued on the device from an offline run).
    func record(_ report: FleetReport) async throws
    func devices(_ query: DeviceQuery) async throws -> DeviceList
    /// Devices per product and release, with the auto-halt counts (`halted` is the caller's).
    func releases(product: String?) async throws -> [FleetSummary.Release]
    /// The counted first attempts at a release and how many failed.
    func attempts(product: String, version: String) async throws -> (attempts: Int, failures: Int)
    /// Forgets history older than `before` and devices not seen since (retention).
    func prune(before: Date) async throws
    func close() async
}

/// A device asking for a plan.
public struct FleetContact: Sendable {
    public var product: String
    public var deviceID: String
    public var version: String?
    public var platform: String?
    public var osVersion: String?
    public var model: String?
    public var tags: [String]
    public var at: Date

    public init(product: String, device: PlanRequest.Device, version: String?, at: Date) {
        self.product = product
        deviceID = device.id
        self.version = version
        platform = device.platform
        osVersion = device.osVersion
        model = device.model
        tags = device.tags ?? []
        self.at = at
    }
}

/// A sync outcome as the store keeps it.
public struct FleetReport: Sendable {
    public var product: String
    public var deviceID: String
    public var fromVersion: String?
    public var toVersion: String?
    /// One of ``FleetReport/resultClasses``.
    public var result: String
    public var reason: String?
    public var releaseDigest: String?
    public var bytesFromServer: UInt64
    public var bytesFromPeers: UInt64
    public var platform: String?
    public var osVersion: String?
    public var model: String?
    public var tags: [String]
    /// `online` or `offline`.
    public var via: String
    /// When the run ended (the device's clock for queued reports), and when it arrived.
    public var at: Date
    public var received: Date

    /// The classes a reported result falls into; anything else is `other`.
    public static let resultClasses = [
        "installed", "up-to-date", "dry-run", "rolled-back", "failed", "held", "skipped", "recovered",
        "nothing-to-do",
    ]

    public init(_ outcome: SyncOutcome, received: Date) {
        product = outcome.product
        deviceID = outcome.device.id
        fromVersion = outcome.fromVersion
        toVersion = outcome.toVersion
        (result, reason) = Self.classify(outcome.result)
        releaseDigest = outcome.releaseDigest
        bytesFromServer = outcome.bytesDownloaded
        bytesFromPeers = outcome.peerBytes ?? 0
        platform = outcome.device.platform
        osVersion = outcome.device.osVersion
        model = outcome.device.model
        tags = outcome.device.tags ?? []
        via = outcome.via == "offline" ? "offline" : "online"
        let stamped = outcome.at.flatMap { try? Date($0, strategy: .iso8601) }
        // A device clock far in the future cannot pin its state: at most the arrival time.
        at = min(stamped ?? received, received)
        self.received = received
    }

    /// The class and the reason of a reported result: `failed: hook post-install exited 1`
    /// is (`failed`, `hook post-install exited 1`); clients before the hyphenated tokens sent
    /// `up to date`, `rolled back`.
    public static func classify(_ reported: String) -> (result: String, reason: String?) {
        var normalized = reported
        // Only the leading class is rewritten: a reason may say "rolled back" too.
        for (old, new) in [("up to date", "up-to-date"), ("rolled back", "rolled-back"), ("dry run", "dry-run")]
        where normalized.hasPrefix(old) {
            normalized = new + normalized.dropFirst(old.count)
        }
        for token in resultClasses where normalized == token || normalized.hasPrefix(token + ":") {
            let rest = normalized.dropFirst(token.count).drop { $0 == ":" || $0 == " " }
            return (token, rest.isEmpty ? nil : String(rest.prefix(512)))
        }
        return ("other", String(reported.prefix(512)))
    }

    /// The release the device runs after the run.
    public var version: String? {
        switch result {
        case "installed": toVersion
        case "up-to-date", "nothing-to-do": fromVersion ?? toVersion
        default: fromVersion
        }
    }

    /// The release the run tried and did not end on, if any.
    public var attempted: String? {
        toVersion != version ? toVersion : nil
    }

    /// An attempt at `toVersion` that counts for auto-halt: it was installed or it failed.
    public var isAttempt: Bool {
        guard let toVersion, toVersion != fromVersion else { return false }
        return ["installed", "failed", "rolled-back"].contains(result)
    }

    public var isFailure: Bool { result == "failed" || result == "rolled-back" }
}

/// `GET /v1/devices?version=&result=&tag=&unseen-hours=&limit=`.
public struct DeviceQuery: Sendable {
    public var product: String?
    public var version: String?
    /// Result classes; `failing` stands for `failed` and `rolled-back`.
    public var results: [String] = []
    public var tag: String?
    /// Only devices not seen since.
    public var unseenSince: Date?
    public var limit = 100
    /// Oldest contact first (stale lists) instead of newest.
    public var oldestFirst = false

    public init(product: String? = nil) { self.product = product }
}

/// Auto-halt: a release whose failures among its first `after` attempts exceed
/// `above` × `after` is not offered to devices that do not have it. It can trip before all
/// `after` attempts are in, as soon as the rate over them can no longer stay at or below `above`.
public struct HaltRule: Sendable, Equatable {
    public var above: Double
    public var after: Int

    public init(above: Double, after: Int) {
        self.above = above
        self.after = after
    }

    public func halted(failures: Int) -> Bool {
        Double(failures) > above * Double(after)
    }
}

public enum FleetStoreError: Error, CustomStringConvertible {
    case badDatabase(String)
    case database(String)

    public var description: String {
        switch self {
        case .badDatabase(let why): "--database: \(why)"
        case .database(let why): "fleet store: \(why)"
        }
    }
}

extension Date {
    /// ISO 8601 UTC to the second, as the fleet wire values carry times.
    var fleetStamp: String { formatted(.iso8601) }
}
