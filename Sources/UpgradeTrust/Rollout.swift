import Crypto

/// The signed rules of a channel record that say which devices take its release (see
/// docs/format.md, "Rollout rules"). A client checks its own eligibility against them, so a
/// server or mirror can hold a device back but never push a release the rules exclude.
public struct Rollout: Hashable, Sendable, Codable {
    /// Share of devices that take the release, 0...100; each device has a fixed bucket per
    /// (product, version, device id), so raising the share adds devices and removes none.
    public var percent: Double
    /// Devices with any of these tags take the release whatever the share.
    public var canaryTags: [String]
    /// No device takes the release (devices that have it keep it).
    public var paused: Bool
    /// Devices (by id) or tags held at a version, checked before everything else.
    public var pins: [Pin]

    /// A device or a tag held at a version.
    public struct Pin: Hashable, Sendable, Codable {
        /// `device:ID` or `tag:NAME`.
        public var selector: String
        public var version: String

        public init(selector: String, version: String) {
            self.selector = selector
            self.version = version
        }
    }

    public init(percent: Double = 100, canaryTags: [String] = [], paused: Bool = false, pins: [Pin] = []) {
        self.percent = percent
        self.canaryTags = canaryTags.sorted()
        self.paused = paused
        self.pins = pins
    }

    /// The bucket of a device for a release, 0..<10,000: the first eight bytes of
    /// SHA-256("product\nversion\ndevice") modulo 10,000.
    public static func bucket(product: String, version: String, device: String) -> Int {
        let digest = Array(SHA256.hash(data: Array("\(product)\n\(version)\n\(device)".utf8)))
        let value = digest.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        return Int(value % 10_000)
    }
}

/// What a device does about a channel record.
public enum RolloutDecision: Hashable, Sendable {
    /// Install (or stay on) the record's release.
    case take
    /// A pin holds the device at this version.
    case pinned(String)
    /// Not now; why.
    case hold(String)
}

extension ChannelRecord {
    /// This device's decision under the record's rules; `installed` is the version it has.
    public func decision(device: String, tags: [String], installed: String?) -> RolloutDecision {
        guard let rollout else { return .take }
        let tagSet = Set(tags)
        if let pin = rollout.pins.first(where: { $0.selector == "device:\(device)" })
            ?? rollout.pins.first(where: {
                $0.selector.hasPrefix("tag:") && tagSet.contains(String($0.selector.dropFirst(4)))
            })
        {
            return pin.version == version ? .take : .pinned(pin.version)
        }
        if installed == version { return .take }
        if rollout.paused { return .hold("the rollout of \(product) \(version) is paused") }
        if !tagSet.isDisjoint(with: rollout.canaryTags) { return .take }
        let bucket = Rollout.bucket(product: product, version: version, device: device)
        if Double(bucket) < rollout.percent * 100 { return .take }
        return .hold(
            "\(product) \(version) is rolled out to \(Self.format(rollout.percent))% of devices; this one (bucket \(bucket) of 10000) is not among them yet"
        )
    }

    public static func format(_ percent: Double) -> String {
        percent == percent.rounded() ? String(Int(percent)) : String(percent)
    }
}
