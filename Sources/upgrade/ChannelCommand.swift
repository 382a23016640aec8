import ArgumentParser
import Foundation
import UpgradeRepository
import UpgradeTrust

/// `upgrade channel set|pause|resume`: rollout control, as newly signed channel records.
struct ChannelCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "channel",
        abstract: "Sign a new channel record: point it at a release, roll it out in phases, pin, pause, resume.",
        discussion: """
            Every change is a new record with a higher sequence, signed with the channel key: \
            clients that saw the old one refuse it from then on. Pointing a channel at an older \
            release is a signed revert, which clients follow without --allow-downgrade. Devices \
            check their own eligibility against the signed rules: a bucket per (device id, \
            release) under --percent, --canary tags at once, pins first, nothing new while paused.
            """,
        subcommands: [ChannelSet.self, ChannelPause.self, ChannelResume.self]
    )
}

/// Flags every channel change takes.
struct ChannelTarget: ParsableArguments {
    @Option(help: "Repository directory.") var repo: String
    @Option(help: "Product name.") var product: String
    @Option(help: "Channel.") var channel = "stable"
    @Option(help: "Private channel key file (repeat for a channel threshold above 1).") var key: [String] = []
    @Option(help: "Days the new record stays valid.") var expiresDays = 30

    func change(version: String? = nil, _ body: (inout Rollout) -> Void) throws {
        guard !key.isEmpty else { throw CommandFailure(description: "--key is required", exitStatus: .usage) }
        let keys = try key.map(KeyFiles.loadPrivate)
        let record = try Publisher(repository: repo, keys: keys, channelKeys: keys).setChannel(
            product: product,
            channel: channel,
            version: version,
            lifetime: Int64(expiresDays) * 86_400,
            change: body
        )
        var line = "channel \(product)/\(channel) -> \(record.version) (record #\(record.sequence))"
        if let rollout = record.rollout {
            line += ": \(ChannelRecord.format(rollout.percent))% of devices"
            if !rollout.canaryTags.isEmpty { line += ", canary tags \(rollout.canaryTags.joined(separator: ", "))" }
            for pin in rollout.pins { line += ", \(pin.selector) pinned at \(pin.version)" }
            if rollout.paused { line += ", paused" }
        }
        print(line)
    }
}

struct ChannelSet: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "set",
        abstract: "Point the channel at a release and set its rollout rules."
    )

    @OptionGroup var target: ChannelTarget
    @Option(help: "Release the channel names (default: the one it names now; an older one reverts).")
    var version: String?
    @Option(help: "Share of devices that take the release, 0-100 (raising it adds devices, removes none).")
    var percent: Double?
    @Option(help: "Devices with this tag take the release at once (repeatable; replaces the list).") var canary:
        [String] = []
    @Option(help: "Hold devices at a version: device:ID=VERSION or tag:NAME=VERSION (repeatable).") var pin: [String] =
        []
    @Option(help: "Remove the pin of device:ID or tag:NAME (repeatable).") var unpin: [String] = []

    func run() async throws {
        var pins = [Rollout.Pin]()
        for text in pin {
            let parts = text.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, parts[0].hasPrefix("device:") || parts[0].hasPrefix("tag:"), !parts[1].isEmpty
            else {
                throw CommandFailure(
                    description: "--pin \(text.debugDescription): expected device:ID=VERSION or tag:NAME=VERSION",
                    exitStatus: .usage
                )
            }
            pins.append(Rollout.Pin(selector: parts[0], version: parts[1]))
        }
        if let percent, !(0...100).contains(percent) {
            throw CommandFailure(description: "--percent must be in 0...100", exitStatus: .usage)
        }
        try target.change(version: version) { rollout in
            if let percent { rollout.percent = percent }
            if !canary.isEmpty { rollout.canaryTags = canary.sorted() }
            let selectors = Set(pins.map(\.selector) + unpin)
            rollout.pins = rollout.pins.filter { !selectors.contains($0.selector) } + pins
        }
    }
}

struct ChannelPause: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pause",
        abstract: "Stop the rollout: no further device takes the release (devices that have it keep it)."
    )

    @OptionGroup var target: ChannelTarget

    func run() async throws { try target.change { $0.paused = true } }
}

struct ChannelResume: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "resume", abstract: "Resume a paused rollout.")

    @OptionGroup var target: ChannelTarget

    func run() async throws { try target.change { $0.paused = false } }
}
