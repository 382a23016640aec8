import ArgumentParser
import UpgradeRepository
import UpgradeTrust

/// `upgrade verify-repo`.
struct VerifyRepoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify-repo",
        abstract: "Check every signature, manifest digest, object and channel record of a repository.",
        discussion:
            "Prints each problem as PATH: PROBLEM and exits 4 when there is any; leftovers of an interrupted publish are warnings."
    )

    @Option(help: "Repository directory.") var repo: String
    @Option(help: "Trusted public key (ed25519:…) or a file of keys; repeat or separate with commas for rotation.")
    var trust: [String]
    @Flag(help: "Do not print warnings.") var quiet = false

    func validate() throws {
        if trust.isEmpty { throw ValidationError("--trust is required") }
    }

    func run() async throws {
        let anchor = try KeyFiles.loadTrusted(trust)
        // Releases are checked against the newest root reached from the anchor.
        let root = try RootFiles.newest(repo, from: anchor.root)
        let report = RepositoryVerifier(repository: repo, trusted: TrustedKeys(root: root)).verify()
        if !quiet { for warning in report.warnings { Terminal.warning("\(warning)") } }
        for problem in report.problems { print("\(problem)") }
        let summary =
            "\(Terminal.count(report.releases, "release")), \(Terminal.count(report.objects, "object")), \(Terminal.count(report.channels, "channel")) checked: \(Terminal.count(report.problems.count, "problem"))"
        if report.problems.isEmpty {
            print(summary)
        } else {
            Terminal.error(summary)
            throw ExitStatus.verificationFailed
        }
    }
}
