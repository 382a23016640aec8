import ArgumentParser
import Foundation
import UpgradeRepository
import UpgradeTrust

/// `upgrade root init|rotate|revoke|sign|show`: the repository's root of trust.
struct RootCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "root",
        abstract: "Manage the repository's signed root of trust: keys per role, thresholds, rotation, revocation.",
        discussion: """
            The root (REPO/roots/N.json) lists the keys of each role: root (signs roots), \
            release (signs release headers) and channel (signs channel records), with a \
            threshold per role. Clients are given root 1 once (--trust REPO/roots/1.json) and \
            walk forward from it: root N+1 counts only when signed by a threshold of root N's \
            root keys and a threshold of its own. A root that is not yet signed enough waits as \
            REPO/roots/draft.json for `upgrade root sign`.
            """,
        subcommands: [RootInit.self, RootRotate.self, RootRevoke.self, RootSign.self, RootShow.self]
    )
}

/// Role keys and thresholds given on the command line.
struct RoleOptions: ParsableArguments {
    @Option(help: "Public key (file or ed25519:…) of the release role (repeatable).") var releaseKey: [String] = []
    @Option(help: "Signatures a release header needs.") var releaseThreshold: Int?
    @Option(help: "Public key (file or ed25519:…) of the channel role (repeatable).") var channelKey: [String] = []
    @Option(help: "Signatures a channel record needs.") var channelThreshold: Int?
    @Option(help: "Public key (file or ed25519:…) of the root role (repeatable).") var rootKey: [String] = []
    @Option(help: "Signatures a root needs.") var threshold: Int?
    @Option(help: "Days the root stays valid.") var expiresDays = 365

    func publicKeys(_ values: [String]) throws -> [PublicKey] {
        values.isEmpty ? [] : Array(try KeyFiles.loadTrusted(values).keys.values)
    }
}

/// The flags of `root rotate` and `root revoke`.
struct RootChangeOptions: ParsableArguments {
    @Option(help: "Repository directory.") var repo: String
    @Option(help: "Private root key file that signs the new root (repeatable).") var key: [String] = []
    @OptionGroup var roles: RoleOptions

    /// Starts root N+1 with the roles' keys and thresholds given and `revoke` removed.
    func rotate(revoking revoke: [String]) throws {
        var change = RootChange(expires: Timestamps.now() + Int64(roles.expiresDays) * 86_400)
        change.keys = [
            .root: try roles.publicKeys(roles.rootKey), .release: try roles.publicKeys(roles.releaseKey),
            .channel: try roles.publicKeys(roles.channelKey),
        ]
        change.thresholds = [
            .root: roles.threshold, .release: roles.releaseThreshold, .channel: roles.channelThreshold,
        ]
        .compactMapValues { $0 }
        change.revoke = revoke
        let outcome = try RootFiles.rotate(repository: repo, signers: try key.map(KeyFiles.loadPrivate), change: change)
        report(outcome, repo: repo)
    }
}

/// Prints what a root change did.
func report(_ outcome: RootFiles.Outcome, repo: String) {
    switch outcome {
    case .published(let root):
        print(
            "root \(root.version) published: \(repo)/roots/\(root.version).json (expires \(Timestamps.iso(root.expires)))"
        )
        for role in Role.allCases {
            let ids = root.roles[role]?.keyids ?? []
            print("  \(role.rawValue): \(root.threshold(for: role)) of \(ids.joined(separator: ", "))")
        }
    case .draft(let root, let missing):
        print("root \(root.version) kept as the draft \(repo)/roots/draft.json: it needs \(missing)")
        print("sign it with `upgrade root sign --repo \(repo) --key KEY`")
    }
}

struct RootInit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Create root 1: the keys of each role and their thresholds, signed by the root keys."
    )

    @Option(help: "Repository directory.") var repo: String
    @Option(help: "Private root key file that signs (repeatable; its public key joins the root role).") var key:
        [String] = []
    @OptionGroup var roles: RoleOptions

    func validate() throws {
        if key.isEmpty { throw ValidationError("--key (a private root key) is required") }
        if roles.releaseKey.isEmpty { throw ValidationError("--release-key is required") }
    }

    func run() async throws {
        let signers = try key.map(KeyFiles.loadPrivate)
        let rootKeys = signers.map(\.publicKey) + (try roles.publicKeys(roles.rootKey))
        let releaseKeys = try roles.publicKeys(roles.releaseKey)
        let channelKeys = roles.channelKey.isEmpty ? releaseKeys : try roles.publicKeys(roles.channelKey)
        let root = RootDocument(
            version: 1,
            expires: Timestamps.now() + Int64(roles.expiresDays) * 86_400,
            keys: rootKeys + releaseKeys + channelKeys,
            roles: [
                .root: .init(keyids: Array(Set(rootKeys.map(\.keyID))), threshold: roles.threshold ?? 1),
                .release: .init(keyids: Array(Set(releaseKeys.map(\.keyID))), threshold: roles.releaseThreshold ?? 1),
                .channel: .init(keyids: Array(Set(channelKeys.map(\.keyID))), threshold: roles.channelThreshold ?? 1),
            ]
        )
        report(try RootFiles.initialize(repository: repo, root: root, signers: signers), repo: repo)
    }
}

struct RootRotate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rotate",
        abstract:
            "Start root N+1 from the newest: replace the keys of the roles given, revoke keys, change thresholds.",
        discussion: """
            Roles not named keep their keys. --revoke removes a key from every role and from the \
            root. The new root needs a threshold of the current root keys and of its own; --key \
            signs it now, `upgrade root sign` adds the others.
            """
    )

    @OptionGroup var change: RootChangeOptions
    @Option(help: "Key id to remove from every role (repeatable).") var revoke: [String] = []

    func run() async throws {
        try change.rotate(revoking: revoke)
    }
}

struct RootRevoke: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "revoke",
        abstract: "Start root N+1 without the given keys (a leaked key): `rotate --revoke`, with replacements."
    )

    @OptionGroup var change: RootChangeOptions
    @Argument(help: "Key ids to revoke.") var keyIDs: [String]

    func run() async throws {
        try change.rotate(revoking: keyIDs)
    }
}

struct RootSign: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sign",
        abstract: "Add a signature to the draft root; publish it once it is signed as required."
    )

    @Option(help: "Repository directory.") var repo: String
    @Option(help: "Private root key file.") var key: String

    func run() async throws {
        report(try RootFiles.sign(repository: repo, key: try KeyFiles.loadPrivate(key)), repo: repo)
    }
}

struct RootShow: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show",
        abstract: "Print the repository's newest root (the chain is verified first)."
    )

    @Option(help: "Repository directory.") var repo: String
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        guard let root = try RootFiles.newest(repo) else { throw RootFileError.noRoot(repo) }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
            print(String(decoding: try encoder.encode(root), as: UTF8.self))
            return
        }
        report(.published(root), repo: repo)
    }
}
