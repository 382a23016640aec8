import Testing
import UpgradeCore
import UpgradeTrust

/// The signed rollout rules a device checks itself against.
@Suite("Rollout rules")
struct RolloutTests {
    static func record(_ rollout: Rollout?, version: String = "1.1") -> ChannelRecord {
        ChannelRecord(
            product: "app",
            channel: "stable",
            version: version,
            releaseSequence: 2,
            headerSHA256: SHA256Hash(bytes: [UInt8](repeating: 7, count: 32))!,
            sequence: 3,
            created: 0,
            expires: 1,
            rollout: rollout
        )
    }

    static let devices = (0..<200).map { "device-\($0)" }

    static func taking(_ record: ChannelRecord, installed: String? = "1.0", tags: [String] = []) -> Set<String> {
        Set(devices.filter { record.decision(device: $0, tags: tags, installed: installed) == .take })
    }

    @Test("200 devices at 10%: 20 +- 8 take the release, the same ones every time; 50% adds and never removes")
    func percentages() {
        let ten = Self.taking(Self.record(Rollout(percent: 10)))
        #expect((12...28).contains(ten.count), "\(ten.count) of 200 at 10%")
        #expect(Self.taking(Self.record(Rollout(percent: 10))) == ten)
        let fifty = Self.taking(Self.record(Rollout(percent: 50)))
        #expect(ten.isSubset(of: fifty) && fifty.count > ten.count)
        #expect((80...120).contains(fifty.count), "\(fifty.count) of 200 at 50%")
        #expect(Self.taking(Self.record(Rollout(percent: 100))).count == 200)
        #expect(Self.taking(Self.record(nil)).count == 200)
        #expect(Self.taking(Self.record(Rollout(percent: 0))).isEmpty)
        // Another release draws other buckets: the same devices are not always first.
        let other = Self.taking(Self.record(Rollout(percent: 10), version: "1.2"))
        #expect(other != ten)
    }

    @Test("pause holds new devices only; canary tags take at once; pins come first")
    func pauseCanaryPins() {
        let paused = Self.record(Rollout(percent: 100, paused: true))
        #expect(Self.taking(paused).isEmpty)
        #expect(Self.taking(paused, installed: "1.1").count == 200, "devices that have it keep it")
        let canary = Self.record(Rollout(percent: 0, canaryTags: ["canary"]))
        #expect(Self.taking(canary, tags: ["lab", "canary"]).count == 200)
        #expect(Self.taking(canary, tags: ["lab"]).isEmpty)
        let pinned = Self.record(
            Rollout(
                percent: 100,
                pins: [
                    .init(selector: "device:device-7", version: "1.0"), .init(selector: "tag:frozen", version: "0.9"),
                ]
            )
        )
        #expect(pinned.decision(device: "device-7", tags: [], installed: "1.0") == .pinned("1.0"))
        #expect(pinned.decision(device: "device-8", tags: ["frozen"], installed: "1.0") == .pinned("0.9"))
        #expect(pinned.decision(device: "device-8", tags: [], installed: "1.0") == .take)
        let held = Self.devices.first { !Self.taking(Self.record(Rollout(percent: 10))).contains($0) }!
        let decision = Self.record(Rollout(percent: 10)).decision(device: held, tags: [], installed: nil)
        guard case .hold(let why) = decision else {
            Issue.record("\(held) outside the 10% takes the release: \(decision)")
            return
        }
        #expect(why.contains("10%"), "\(why)")
    }
}
