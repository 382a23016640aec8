import ArgumentParser
import Foundation
import UpgradeApply
import UpgradeCore

/// `upgrade status`.
struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show the installed release, any pending journal and the last result."
    )

    @OptionGroup var root: RootOptions
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        if json { JSONOutput.request(command: "status") }
        let status = try Installer.status(root: root.root, stateDirectoryName: root.stateDir)
        if json {
            JSONOutput.print(command: "status", status)
            return
        }
        if let release = status.installed {
            print(
                "installed: \(release.product) \(release.version) (sequence \(release.sequence), \(release.platform))"
            )
            print("manifest: \(release.manifestSHA256)")
            print("expires: \(release.expires)")
            print("rollback: \(status.rollbackAvailable ? "available" : "none")")
        } else {
            print("installed: nothing")
        }
        if let channel = status.channel { print("channel: \(channel)") }
        if let pending = status.pendingJournal {
            print(
                "pending: \(pending.state) \(pending.fromVersion ?? "nothing") -> \(pending.toVersion) (`upgrade recover` or the next sync, apply or rollback recovers it)"
            )
        }
        if status.lock.held { print("locked by: pid \(status.lock.pid.map(String.init) ?? "unknown")") }
        if let attempt = status.lastAttempt { print("last attempt: \(Self.line(attempt))") }
        if let success = status.lastSuccess { print("last success: \(Self.line(success))") }
    }

    static func line(_ record: RunRecord) -> String {
        let outcome =
            record.exitCode == 0
            ? (record.result?.rawValue ?? "ok")
            : "exit \(record.exitCode): \(record.error?.split(separator: "\n").first ?? "")"
        return "\(record.at) \(record.command)\(record.version.map { " -> " + $0 } ?? ""): \(outcome)"
    }
}

/// `upgrade verify`.
struct VerifyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "List local changes against the installed release; exit 4 when there are any."
    )

    @OptionGroup var root: RootOptions
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        Main.keepFreedMemory()
        if json { JSONOutput.request(command: "verify") }
        let differences = try await Installer.verify(
            root: root.root,
            stateDirectoryName: root.stateDir,
            lockTimeout: root.lockTimeout
        )
        if json {
            // The differences are the answer, so they are printed as a success document with
            // `"ok": false` left to the exit code: scripts read `differences` either way.
            struct Body: Encodable { var differences: [Manifest.Difference] }
            if differences.isEmpty { JSONOutput.print(command: "verify", Body(differences: [])) }
        } else {
            for difference in differences { print("\(difference.kind.rawValue): \(difference.path)") }
        }
        if !differences.isEmpty {
            throw VerifyDifferences(differences: differences)
        }
    }
}

/// `upgrade rollback`.
struct RollbackCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rollback",
        abstract: "Return the root to the release installed before the current one."
    )

    @OptionGroup var root: RootOptions
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        Main.stopOnSignals()
        if json { JSONOutput.request(command: "rollback") }
        let report = try await RunLog.around(command: "rollback", root: root.root, stateDirectory: root.stateDir) {
            do {
                return try withRootSession(
                    root: root.root,
                    stateDirectoryName: root.stateDir,
                    lockTimeout: root.lockTimeout,
                    create: false
                ) { try $0.rollback() }
            } catch ApplyError.notARoot(let path, _) {
                throw ApplyError.nothingToRollBack("no release is installed in \(path)")
            }
        } result: {
            ($0.result, $0.toVersion)
        }
        Reporting.print(report, json: json, command: "rollback")
    }
}

/// `verify` found differences: exit 4, and with `--json` the error document carries them.
struct VerifyDifferences: ClassifiedError, DetailedError {
    let differences: [Manifest.Difference]
    var exitStatus: ExitStatus { .verificationFailed }
    var description: String { "\(Terminal.count(differences.count, "path")) differ from the installed release" }
    var details: (any Encodable & Sendable)? { ["differences": differences] }
}

/// `upgrade recover`.
struct RecoverCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "recover",
        abstract: "Finish or roll back an interrupted upgrade of a root, and do nothing else.",
        discussion: """
            Every command that changes a root recovers first; this one only recovers (from a \
            boot script, or before `verify`, which changes nothing and so does not). Prints what \
            it did, or nothing when there was nothing to recover.
            """
    )

    @OptionGroup var root: RootOptions
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        Main.stopOnSignals()
        if json { JSONOutput.request(command: "recover") }
        let outcome: String?
        do {
            outcome = try withRootSession(
                root: root.root,
                stateDirectoryName: root.stateDir,
                lockTimeout: root.lockTimeout,
                create: false
            ) { $0.recovered }
        } catch ApplyError.notARoot {
            outcome = nil  // nothing was ever installed here: nothing to recover
        }
        if json {
            struct Body: Encodable { var recovered: String? }
            JSONOutput.print(command: "recover", Body(recovered: outcome))
        } else if let outcome {
            print("recovery: \(outcome)")
        }
    }
}

/// `upgrade confirm`.
struct ConfirmCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "confirm",
        abstract: "Confirm the release a `sync --confirm-within` installed, so it is not rolled back.",
        discussion: """
            Run it once the new release is known good (a person, or a check of the service). \
            Prints what was confirmed, or that nothing is on probation (still exit 0).
            """
    )

    @OptionGroup var root: RootOptions
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        if json { JSONOutput.request(command: "confirm") }
        // Nothing installed: exit 3, and no state directory is made.
        let probation = try withRootSession(
            root: root.root,
            stateDirectoryName: root.stateDir,
            lockTimeout: root.lockTimeout,
            create: false
        ) { session in
            let probation = session.probation
            try session.endProbation()
            return probation
        }
        struct Body: Encodable {
            var confirmed: String?
        }
        if json {
            JSONOutput.print(command: "confirm", Body(confirmed: probation?.version))
        } else {
            print(probation.map { "confirmed \($0.version)" } ?? "nothing is on probation")
        }
    }
}
