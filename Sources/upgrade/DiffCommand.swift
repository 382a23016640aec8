import ArgumentParser
import Foundation
import UpgradeCore
import UpgradeScan

/// `upgrade diff OLD NEW`: the plan that turns one tree into another.
struct DiffCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "diff",
        abstract: "Print the ordered plan that turns OLD into NEW.",
        discussion: """
            OLD and NEW are directories (scanned) or manifest files (canonical or JSON). The plan \
            lists one operation per line; with --json it is one JSON document. A summary line \
            follows on a terminal (force it with --summary).
            """
    )

    @Argument(help: "The tree as it is (directory or manifest file).")
    var old: String

    @Argument(help: "The tree as it should be (directory or manifest file).")
    var new: String

    @Flag(help: "Print the plan as JSON.")
    var json = false

    @Flag(inversion: .prefixedNo, help: "Print the summary line (default: only on a terminal).")
    var summary: Bool?

    @OptionGroup var scan: ScanFlags

    func run() async throws {
        let from = try await TreeSource.load(old, options: scan.options, cache: scan.cacheLocation)
        let to = try await TreeSource.load(new, options: scan.options, cache: scan.cacheLocation)
        for warning in (from.scan?.warnings ?? []) + (to.scan?.warnings ?? []) { Terminal.warning("\(warning)") }

        let plan = UpgradeCore.plan(from: from.manifest, to: to.manifest)
        if json {
            try Terminal.write([UInt8](plan.jsonEncoded()) + [0x0a])
            return
        }
        for operation in plan.operations { print(Self.line(operation)) }
        if summary ?? Terminal.stdoutIsTerminal { print(Self.summaryLine(plan.summary)) }
    }

    static func line(_ operation: PlanOperation) -> String {
        let name = operation.name.padding(toLength: 8, withPad: " ", startingAt: 0)
        switch operation {
        case .mkdir(let path, let mode), .chmod(let path, let mode):
            return "\(name) \(FileMode.string(mode)) \(path)"
        case .add(let path, let mode, let content), .replace(let path, let mode, let content):
            return "\(name) \(FileMode.string(mode)) \(path) (\(Terminal.bytes(content.size)))"
        case .symlink(let path, let target):
            return "\(name) \(path) -> \(target)"
        case .delete(let path, let kind):
            return "\(name) \(path)\(kind == .directory ? "/" : "")"
        }
    }

    static func summaryLine(_ s: Plan.Summary) -> String {
        if s == Plan.Summary() { return "no changes" }
        return "files: \(s.filesAdded) added, \(s.filesReplaced) replaced, \(s.filesDeleted) deleted; "
            + "directories: \(s.directoriesCreated) created, \(s.directoriesDeleted) deleted; "
            + "\(s.symlinksSet) symlinks set, \(s.modesChanged) modes changed; \(Terminal.bytes(s.bytesToWrite)) to write"
    }
}
