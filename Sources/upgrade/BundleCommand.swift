import ArgumentParser
import UpgradeCore
import UpgradeRepository
import UpgradeScan
import UpgradeSystem

/// `upgrade bundle`.
struct BundleCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bundle",
        abstract: "Write an offline update bundle: signed header, manifest, plan and payloads in one file.",
        discussion: """
            --from V1 makes a bundle that upgrades V1 to --to; --for MANIFEST (exported on the \
            target machine with `upgrade manifest ROOT --output FILE`) fits that machine's exact \
            state; neither makes a full install.
            """
    )

    @Option(help: "Repository directory.") var repo: String
    @Option(help: "Product name.") var product: String
    @Option(help: "Base release version.") var from: String?
    @Option(name: .customLong("for"), help: "Base manifest file exported from the target machine.") var forManifest:
        String?
    @Option(help: "Target release version.") var to: String
    @Option(name: .shortAndLong, help: "Bundle file to write.") var output: String
    @Flag(help: "Carry whole objects only, no binary deltas.") var noDeltas = false

    func validate() throws {
        if from != nil && forManifest != nil { throw ValidationError("--from and --for exclude each other") }
    }

    func run() async throws {
        var base: Manifest?
        if let from {
            let bytes = try AtomicFile.read(repo + "/releases/\(product)/\(from)/manifest")
            base = try Manifest(canonical: bytes)
        } else if let forManifest {
            base = try await TreeSource.load(forManifest).manifest
        }
        let summary = try BundleBuilder(repository: repo).build(
            product: product,
            version: to,
            base: base,
            output: output,
            useDeltas: !noDeltas
        )
        let s = summary.plan.summary
        print(
            "wrote \(output): \(product) \(from ?? (forManifest != nil ? "(machine manifest)" : "(nothing)")) -> \(to)"
        )
        print(
            "\(s.filesAdded) added, \(s.filesReplaced) replaced, \(s.filesDeleted) deleted; \(summary.objects) whole payloads, \(summary.deltas) deltas, \(Terminal.bytes(summary.payloadBytes))"
        )
    }
}
