import ArgumentParser
import Foundation
import UpgradeApply

/// `upgrade status`.
struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show the installed release, any pending journal and the last result."
    )

    @OptionGroup var root: RootOptions
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        let status = try Installer.status(root: root.root, stateDirectoryName: root.stateDir)
        if json {
            let data = try JSONSerialization.data(withJSONObject: status, options: [.sortedKeys, .prettyPrinted])
            print(String(decoding: data, as: UTF8.self))
            return
        }
        for key in status.keys.sorted() where key != "lastResult" { print("\(key): \(status[key]!)") }
        if let last = status["lastResult"] { print("lastResult: \(last.replacingOccurrences(of: "\n", with: " "))") }
    }
}

/// `upgrade verify`.
struct VerifyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "List local changes against the installed release; exit 4 when there are any."
    )

    @OptionGroup var root: RootOptions

    func run() async throws {
        let paths = try Installer.verify(
            root: root.root,
            stateDirectoryName: root.stateDir,
            lockTimeout: root.lockTimeout
        )
        for path in paths { print("changed: \(path)") }
        if !paths.isEmpty {
            throw CommandFailure(
                description: "\(paths.count) paths differ from the installed release",
                exitStatus: .verificationFailed
            )
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
        let report = try Installer.rollback(
            root: root.root,
            stateDirectoryName: root.stateDir,
            lockTimeout: root.lockTimeout
        )
        Reporting.print(report, json: json)
    }
}
