/// The fleet view's wire values: `GET /v1/devices`, `GET /v1/fleet`, `upgrade fleet --json`.

/// One device of one product as the server last heard of it.
public struct DeviceState: Codable, Sendable, Equatable {
    public var product: String
    public var id: String
    /// The release the device runs (nil: none installed).
    public var version: String?
    /// SHA-256 of the installed release's signed header, when the device said.
    public var releaseDigest: String?
    /// The release the last run tried, when it differs from `version` (a failure, a hold).
    public var attempted: String?
    /// Result class of the last report (`installed`, `up-to-date`, `failed`, `rolled-back`,
    /// `held`, `skipped`, `dry-run`, `other`), nil when the device has only asked for plans.
    public var result: String?
    public var reason: String?
    /// Last contact (plan request or report), ISO 8601 UTC.
    public var lastSeen: String
    public var bytesFromServer: UInt64
    public var bytesFromPeers: UInt64
    public var platform: String?
    public var osVersion: String?
    public var model: String?
    public var tags: [String]
    /// How the last report's run got its release: `online`, `offline` (a bundle, a peer).
    public var via: String?

    public init(product: String, id: String, lastSeen: String) {
        self.product = product
        self.id = id
        self.lastSeen = lastSeen
        bytesFromServer = 0
        bytesFromPeers = 0
        tags = []
    }
}

/// `GET /v1/devices`: the devices that match, newest contact first, at most `limit`.
public struct DeviceList: Codable, Sendable {
    public var devices: [DeviceState]
    /// How many matched in all (the list stops at the limit).
    public var total: Int
    public init(devices: [DeviceState], total: Int) {
        self.devices = devices
        self.total = total
    }
}

/// `GET /v1/fleet`: what an operator asks first.
public struct FleetSummary: Codable, Sendable, Equatable {
    /// Devices per product and release.
    public struct Release: Codable, Sendable, Equatable {
        public var product: String
        /// nil: devices with nothing installed.
        public var version: String?
        public var devices: Int
        /// Devices whose last run failed or rolled back while on this release.
        public var failing: Int
        /// Reports counted for auto-halt (the first `haltAfter` attempts to install it) and
        /// how many of them failed.
        public var attempts: Int
        public var failures: Int
        /// Not offered to new devices: the failure rate over the first attempts crossed the
        /// threshold.
        public var halted: Bool
        public init(product: String, version: String?, devices: Int) {
            self.product = product
            self.version = version
            self.devices = devices
            failing = 0
            attempts = 0
            failures = 0
            halted = false
        }
    }

    /// A channel and how far its release has gone.
    public struct Channel: Codable, Sendable, Equatable {
        public var product: String
        public var channel: String
        public var version: String
        /// The signed rollout percentage (100 without rules), paused, canary tags.
        public var percent: Double
        public var paused: Bool
        public var canaryTags: [String]
        /// Devices of the product on the channel's release, and all devices of the product.
        public var devicesOnRelease: Int
        public var devices: Int
        public init(product: String, channel: String, version: String) {
            self.product = product
            self.channel = channel
            self.version = version
            percent = 100
            paused = false
            canaryTags = []
            devicesOnRelease = 0
            devices = 0
        }
    }

    public var releases: [Release]
    public var channels: [Channel]
    /// Devices whose last run failed or rolled back, newest first (at most 100).
    public var failures: [DeviceState]
    /// Devices not heard from for `staleHours`, oldest first (at most 100), and how many.
    public var stale: [DeviceState]
    public var staleCount: Int
    public var staleHours: Double
    public var devices: Int
    /// The auto-halt rule in force (nil: off).
    public var haltAbove: Double?
    public var haltAfter: Int?

    public init() {
        releases = []
        channels = []
        failures = []
        stale = []
        staleCount = 0
        staleHours = 24
        devices = 0
    }
}

/// On a plan response's error: the release the channel names is halted on this server.
public enum FleetHeaders {
    /// `Upgrade-Halted: 2.0`: sent with 409 when the channel's release is not offered to
    /// devices that do not have it (auto-halt).
    public static let halted = "Upgrade-Halted"
}
