import ArgumentParser
import Foundation
import UpgradeCore
import UpgradeRepository
import UpgradeTrust

/// `upgrade publish`.
struct PublishCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "publish",
        abstract: "Publish a tree as a signed release into a repository directory.",
        discussion: """
            Stores every file once (content-addressed by SHA-256, zstd-compressed), writes the \
            release manifest and its signed header, then points the channel at it. Crash-safe \
            and idempotent: publishing the same version with the same content again completes \
            an interrupted run and re-signs the channel record; with other content it is refused \
            (exit 5). Versions are semantic versions and must grow; the header's sequence number \
            orders releases. Hooks name scripts of the tree itself.
            """
    )

    @Option(help: "Repository directory (created when missing).") var repo: String
    @Option(help: "Product name (A-Z a-z 0-9 . _ -).") var product: String
    @Option(help: "Version (semantic versioning, e.g. 1.4.2).") var version: String
    @Option(help: "Private key file written by `upgrade keygen` (repeat for a release threshold above 1).")
    var key: [String] = []
    @Option(help: "Private key file for the channel record, when the channel role has its own key (repeatable).")
    var channelKey: [String] = []
    @Option(help: "Channel to point at the release.") var channel = "stable"
    @Option(
        help:
            "Platform recorded in the signed header (`any`: installs on every machine); clients on another platform refuse the release."
    ) var platform = PublishRequest
        .hostPlatform
    @Option(name: .customLong("pre-install"), help: "Script of the tree run before the commit.") var preInstall: String?
    @Option(name: .customLong("post-install"), help: "Script of the tree run after the commit.") var postInstall:
        String?
    @Option(name: .customLong("health-check"), help: "Script of the tree that must succeed after an upgrade.")
    var healthCheck: String?
    @Option(
        help:
            "Config file pattern (repeat): a local edit is kept, and when the release changes the file too its version is written beside it as NAME.upgrade-new."
    )
    var config: [String] = []
    @Option(help: "Unmanaged path pattern (repeat): never published, written, deleted or reported by a sync.")
    var unmanaged: [String] = []
    @Option(help: "Offer the release to this share of devices (0-100; `upgrade channel set --percent` raises it).")
    var percent: Double?
    @Flag(help: "Do not record owners (recorded by default when publishing as root, where they differ from DIR's).")
    var noOwners = false
    @Flag(help: "Do not record extended attributes (security.capability, SELinux labels, user.*).") var noXattrs = false
    @Option(help: "zstd level for objects and deltas (1-19).") var level: Int32 = 19
    @Option(help: "Precompute binary deltas from this many previous releases (others are computed on demand).")
    var deltas = 1
    @Option(help: "Days the release stays installable.") var expiresDays = 365
    @Option(help: "Days the channel record stays valid (re-publish to re-sign).") var channelExpiresDays = 30
    @Flag(help: "Print the result as JSON.") var json = false
    @Argument(help: "The tree to publish.") var dir: String

    func validate() throws {
        guard !key.isEmpty else { throw ValidationError("--key is required") }
        guard (1...19).contains(level) else { throw ValidationError("--level must be 1...19") }
        guard expiresDays > 0, channelExpiresDays > 0 else { throw ValidationError("expiry days must be positive") }
    }

    func run() async throws {
        let keys = try key.map(KeyFiles.loadPrivate)
        let channelKeys = channelKey.isEmpty ? nil : try channelKey.map(KeyFiles.loadPrivate)
        var request = PublishRequest(repository: repo, product: product, version: version, tree: dir)
        request.channel = channel
        request.platform = platform
        request.compressionLevel = level
        request.deltaReleases = max(0, deltas)
        request.releaseLifetime = Int64(expiresDays) * 86_400
        request.channelLifetime = Int64(channelExpiresDays) * 86_400
        do {
            request.policy = try PathPolicy(config: config, unmanaged: unmanaged)
        } catch {
            throw CommandFailure(description: "\(error)", exitStatus: .usage)
        }
        if let percent {
            guard (0...100).contains(percent) else {
                throw CommandFailure(description: "--percent must be in 0...100", exitStatus: .usage)
            }
            request.rolloutPercent = percent
        }
        if noOwners { request.recordOwners = false }
        if noXattrs { request.recordXattrs = false }
        request.hooks = [.preInstall: preInstall, .postInstall: postInstall, .healthCheck: healthCheck].compactMapValues
        { $0 }
        let result = try await Publisher(repository: repo, keys: keys, channelKeys: channelKeys).publish(request)
        let header = result.header
        if json {
            let document: [String: Any] = [
                "product": header.product, "version": header.version, "sequence": header.sequence,
                "manifestSHA256": header.manifestSHA256, "newRelease": result.newRelease,
                "objectsWritten": result.objectsWritten, "objectsReused": result.objectsReused,
                "bytesWritten": result.bytesWritten,
                "channel": result.channel.map { "\($0.channel)#\($0.sequence)" } ?? NSNull(),
            ]
            let data = try JSONSerialization.data(withJSONObject: document, options: [.sortedKeys, .prettyPrinted])
            print(String(decoding: data, as: UTF8.self))
            return
        }
        let verb =
            result.newRelease
            ? "published"
            : result.resigned ? "signed again (same content, authorized key)" : "already published (same content)"
        print(
            "\(verb): \(header.product) \(header.version) (sequence \(header.sequence), \(header.entries) entries, \(Terminal.bytes(header.totalSize)))"
        )
        print(
            "objects: \(result.objectsWritten) written (\(Terminal.bytes(result.bytesWritten)) compressed), \(result.objectsReused) already present"
        )
        if result.deltasComputed > 0 { print("deltas: \(result.deltasComputed) precomputed from earlier releases") }
        if let channel = result.channel {
            print(
                "channel \(channel.channel) -> \(channel.version) (record sequence \(channel.sequence), expires \(Timestamps.iso(channel.expires)))"
            )
        } else {
            print("channel \(request.channel) left pointing at a later release")
        }
    }
}
