import ArgumentParser
import Foundation
import UpgradeClient
import UpgradeProtocol
import UpgradeServer
import UpgradeSystem

/// `upgrade fleet`: what the server's fleet store says (summary, devices), and device tokens.
struct FleetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fleet",
        abstract: "The fleet view of an `upgrade serve`: devices per release, failures, stale devices, tokens.",
        discussion: """
            `upgrade fleet --server URL` prints devices per release (with auto-halt state), \
            rollouts, failures with their reasons and devices not seen for --stale-hours. \
            `upgrade fleet devices` lists devices by version, result or tag. `upgrade fleet token` \
            makes a device token for a server run with --device-tokens.
            """,
        subcommands: [FleetSummaryCommand.self, FleetDevicesCommand.self, FleetTokenCommand.self],
        defaultSubcommand: FleetSummaryCommand.self
    )
}

struct FleetServer: ParsableArguments {
    @Option(help: "The `upgrade serve` URL.") var server: String
    @Option(help: "PEM CA certificate for an HTTPS server.") var caCert: String?
    @Option(help: "Only this product.") var product: String?
    @Flag(help: "Print one JSON document.") var json = false

    func validate() throws {
        guard let url = URL(string: server), ["http", "https"].contains(url.scheme ?? ""), url.host != nil else {
            throw ValidationError("--server must be an http:// or https:// URL, not \(server.debugDescription)")
        }
    }
}

struct FleetSummaryCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "summary",
        abstract: "Devices per release, rollouts, failures with reasons, devices not seen lately."
    )
    @OptionGroup var target: FleetServer
    @Option(help: "Devices not seen for this many hours are listed as stale.") var staleHours = 24.0

    func validate() throws {
        if !(staleHours >= 0) { throw ValidationError("--stale-hours must be a non-negative number") }
    }

    func run() async throws {
        if target.json { JSONOutput.request(command: "fleet") }
        let summary = try await FleetClient.summary(
            server: target.server,
            product: target.product,
            staleHours: staleHours,
            caCertificate: target.caCert
        )
        if target.json {
            JSONOutput.print(command: "fleet", summary)
            return
        }
        let halt = summary.haltAbove.map {
            "auto-halt above \($0 * 100)% of the first \(summary.haltAfter ?? 0) attempts"
        }
        print("\(summary.devices) device\(summary.devices == 1 ? "" : "s"); \(halt ?? "auto-halt off")")
        print("")
        print(pad(["PRODUCT", "RELEASE", "DEVICES", "FAILING", "ATTEMPTS", "FAILURES", "STATE"]))
        for release in summary.releases {
            print(
                pad([
                    release.product, release.version ?? "(none)", "\(release.devices)", "\(release.failing)",
                    "\(release.attempts)", "\(release.failures)", release.halted ? "HALTED" : "offered",
                ])
            )
        }
        if !summary.channels.isEmpty {
            print("")
            for channel in summary.channels {
                let rollout = channel.paused ? "paused" : "\(channel.percent)%"
                print(
                    "channel \(channel.product)/\(channel.channel) -> \(channel.version) (\(rollout)): \(channel.devicesOnRelease) of \(channel.devices) devices"
                )
            }
        }
        if !summary.failures.isEmpty {
            print("")
            print("failures:")
            for device in summary.failures {
                print(
                    "  \(device.id) on \(device.version ?? "nothing"), tried \(device.attempted ?? "?"): \(device.result ?? "") \(device.reason ?? "") (\(device.lastSeen))"
                )
            }
        }
        print("")
        print("\(summary.staleCount) devices not seen for \(summary.staleHours) hours")
        for device in summary.stale {
            print("  \(device.id) on \(device.version ?? "nothing"), last seen \(device.lastSeen)")
        }
    }
}

struct FleetDevicesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "devices", abstract: "List devices that match.")
    @OptionGroup var target: FleetServer
    @Option(help: "Devices on this release.") var version: String?
    @Option(help: "Devices whose last result is this (installed, failed, rolled-back, failing, held, ...).")
    var result: String?
    @Option(help: "Devices with this tag.") var tag: String?
    @Option(help: "Devices not seen for this many hours.") var unseenHours: Double?
    @Option(help: "At most this many devices (0-10000).") var limit = 100

    func run() async throws {
        if target.json { JSONOutput.request(command: "fleet devices") }
        var filters = [("limit", "\(limit)")]
        for (name, value) in [
            ("product", target.product), ("version", version), ("result", result), ("tag", tag),
            ("unseen-hours", unseenHours.map { "\($0)" }),
        ] {
            if let value { filters.append((name, value)) }
        }
        let list = try await FleetClient.devices(server: target.server, filters: filters, caCertificate: target.caCert)
        if target.json {
            JSONOutput.print(command: "fleet devices", list)
            return
        }
        let widths = [24, 12, 10, 14, 22, 8]
        print(pad(["DEVICE", "PRODUCT", "RELEASE", "RESULT", "LAST SEEN", "TAGS"], widths: widths))
        for device in list.devices {
            print(
                pad(
                    [
                        device.id, device.product, device.version ?? "-", device.result ?? "-", device.lastSeen,
                        device.tags.joined(separator: ","),
                    ],
                    widths: widths
                )
            )
        }
        if list.total > list.devices.count { print("(\(list.devices.count) of \(list.total))") }
    }
}

struct FleetTokenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token",
        abstract: "Make a device token: prints it, and appends its digest to the server's --device-tokens file."
    )
    @Argument(help: "The device id (what `sync --device-id` or /etc/machine-id gives).") var device: String
    @Option(help: "The server's tokens file (created 0644 when missing; it holds digests, not tokens).") var tokens:
        String

    func validate() throws {
        guard DeviceTokens.isValidDevice(device) else {
            throw ValidationError("the device id must be 1-128 bytes without spaces")
        }
    }

    func run() throws {
        let (token, line) = DeviceTokens.issue(for: device)
        let descriptor = open(tokens, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw SystemCallError(call: "open --tokens \(tokens)", code: errno) }
        defer { close(descriptor) }
        try Posix.writeAll(descriptor, Array(line.utf8), what: tokens)
        print(token)
    }
}

/// Columns of a plain table.
private func pad(_ fields: [String], widths: [Int] = [24, 12, 10, 10, 10, 10, 8]) -> String {
    zip(fields, widths + Array(repeating: 8, count: max(0, fields.count - widths.count))).map { field, width in
        field.count >= width ? field + " " : field + String(repeating: " ", count: width - field.count)
    }.joined().trimmingCharacters(in: .whitespaces)
}
