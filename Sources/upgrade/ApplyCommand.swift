import ArgumentParser
import Foundation
import UpgradeApply
import UpgradeBundle
import UpgradeCore
import UpgradeRepository
import UpgradeTrust

/// `upgrade apply`.
struct ApplyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "apply",
        abstract: "Upgrade a root from an offline bundle, as one transaction.",
        discussion: """
            Verifies the bundle (signature, sequence not lower than installed, the plan applied to \
            the scanned root yields the signed manifest) before changing anything, stages and \
            verifies every payload, then commits with backups; a failing hook or health check \
            rolls the tree back. An interrupted earlier run is recovered first.
            """
    )

    @OptionGroup var root: RootOptions
    @Option(help: "Trusted public key (ed25519:…) or a file of keys; repeat for rotation.") var trust: [String]
    @Flag(help: "Verify and print the plan; change nothing.") var dryRun = false
    @Flag(help: "Print one JSON document.") var json = false
    @Flag(help: "Install even if the release is older than the installed one.") var allowDowngrade = false
    @Option(help: "Seconds a hook may run.") var hookTimeout: Double = 300
    @Option(help: "Seconds the health check may run.") var healthCheckTimeout: Double = 60
    @Option(help: "Path pattern the install leaves as it is (never written or deleted); repeat.") var keep: [String] =
        []
    @Option(help: "Earlier releases to keep for `upgrade rollback` (1-20; the root remembers it).") var rollbackPoints:
        Int?
    @Argument(help: "The bundle file.") var bundle: String

    func validate() throws {
        if trust.isEmpty { throw ValidationError("--trust is required") }
    }

    func run() async throws {
        Main.keepFreedMemory()
        Main.stopOnSignals()
        if json { JSONOutput.request(command: "apply") }
        let report = try await RunLog.around(command: "apply", root: root.root, stateDirectory: root.stateDir) {
            try await install()
        } result: {
            ($0.result, $0.toVersion)
        }
        Reporting.print(report, json: json, command: "apply")
    }

    private func install() async throws -> InstallReport {
        let keys = try KeyFiles.loadTrusted(trust)
        let reader = try BundleReader(path: bundle)
        guard let header = try reader.section(.header, limit: 1 << 20), let manifest = try reader.section(.manifest),
            let planBytes = try reader.section(.plan)
        else {
            throw CommandFailure(
                description: "\(bundle): incomplete bundle (header, manifest and plan are required)",
                exitStatus: .verificationFailed
            )
        }
        let plan: Plan
        do {
            plan = try Plan(json: Data(planBytes))
        } catch {
            throw CommandFailure(description: "\(bundle): \(error)", exitStatus: .unsafePlan)
        }
        // The bundle's roots of trust (a key rotation reaches machines without network).
        return try await withRootSession(
            root: root.root,
            stateDirectoryName: root.stateDir,
            lockTimeout: root.lockTimeout
        ) { session in
            let trusted = try await session.advanceTrust(
                anchor: keys,
                now: Timestamps.now(),
                files: try reader.section(.roots, limit: 1 << 22).map(BundleRoots.decode) ?? []
            )
            var request = InstallRequest(
                root: root.root,
                trusted: trusted,
                headerBytes: header,
                manifestBytes: manifest,
                plan: plan,
                payloads: BundlePayloads(bundle: reader, root: root.root)
            )
            request.stateDirectoryName = root.stateDir
            request.dryRun = dryRun
            request.lockTimeout = root.lockTimeout
            request.allowDowngrade = allowDowngrade || !session.installedReleaseIsTrusted(by: trusted.root)
            request.hookTimeout = hookTimeout
            request.healthCheckTimeout = healthCheckTimeout
            request.keep = try Output.keepPatterns(keep)
            if let points = rollbackPoints {
                guard (1...20).contains(points) else {
                    throw CommandFailure(description: "--rollback-points must be 1 to 20", exitStatus: .usage)
                }
                request.rollbackPoints = points
            }
            // A full bundle's plan starts from nothing; the tree may hold a release already.
            request.planFromTree = !reader.entries.contains { $0.kind == .baseManifest }
            request.scanned = try await session.scan(options: request.scanOptions)
            return try session.install(request)
        }
    }
}

/// Flags of every command that works on an installed root.
struct RootOptions: ParsableArguments {
    @Option(help: "The installed tree.") var root: String
    @Option(help: "State directory name inside the root.") var stateDir = ".upgrade"
    @Option(help: "Seconds to wait for another run's lock before exiting 75.") var lockTimeout: Double = 60
}

extension RunResult {
    /// The result for people: "up to date", "rolled back".
    var words: String { rawValue.replacingOccurrences(of: "-", with: " ") }
}

/// Renders install reports.
enum Reporting {
    static func print(_ report: InstallReport, json: Bool, command: String) {
        if json {
            JSONOutput.print(command: command, report)
            return
        }
        if let recovered = report.recovered { Swift.print("recovery: \(recovered)") }
        let from = report.fromVersion ?? "nothing"
        switch report.result {
        case .nothingToDo, .upToDate: return
        case .dryRun:
            for operation in report.operations ?? [] { Swift.print("\(operation.op) \(operation.path)") }
            for line in Output.localChangeLines(report.localChanges) { Swift.print(line) }
            Swift.print(
                "dry run: \(report.product ?? "") \(from) -> \(report.toVersion ?? ""): \(report.summary.map(DiffCommand.summaryLine) ?? ""); nothing was changed"
            )
        default:
            Swift.print(
                "\(report.result.words): \(report.product ?? "") \(from) -> \(report.toVersion ?? "")\(report.summary.map { "; " + DiffCommand.summaryLine($0) } ?? "")"
            )
            for line in Output.localChangeLines(report.localChanges) { Swift.print(line) }
        }
    }
}
