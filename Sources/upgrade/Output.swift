import Foundation
import Synchronization
import UpgradeApply
import UpgradeCore
import UpgradeTrust

/// The `--json` contract (docs/format.md, "Command output"): every command prints one JSON
/// object on standard output, success or failure, with the same four fields first:
///
/// ```json
/// {"format": "upgrade-output/1", "command": "sync", "ok": true, "exitCode": 0, ...}
/// ```
///
/// On failure the rest is `"error": {"code": "network", "message": "..."}`, `code` being the
/// name of the exit status (``ExitStatus/name``). Values are typed (numbers, booleans, objects),
/// results are tokens (``RunResult``), and a new field never changes the meaning of an old one;
/// a change that would bumps the format's version.
enum JSONOutput {
    static let format = "upgrade-output/1"

    private static let state = Mutex<(requested: Bool, command: String)>((false, "upgrade"))

    /// Whether the running command was asked for JSON (flag or config file), so that a failure
    /// prints the error document too.
    static var requested: Bool { state.withLock { $0.requested } }

    /// Called by a command once it knows it prints JSON.
    static func request(command: String) {
        state.withLock { $0 = (true, command) }
    }

    /// From the raw arguments, before parsing (a usage error still owes a `--json` caller its
    /// document).
    static func noteArguments(_ arguments: [String]) {
        let command = arguments.dropFirst().first { !$0.hasPrefix("-") } ?? "upgrade"
        let requested = arguments.dropFirst().contains("--json")
        state.withLock { $0 = (requested, command) }
    }

    /// Prints a success document: the envelope, then `body`'s fields.
    static func print(command: String, _ body: some Encodable) {
        emit(Envelope(command: command, ok: true, exitCode: 0, error: nil, body: body))
    }

    /// Prints the error document for `status`; `details` adds fields (``DetailedError``).
    static func printError(_ status: ExitStatus, message: String, details: (any Encodable & Sendable)? = nil) {
        let command = state.withLock { $0.command }
        emit(
            Envelope(
                command: command,
                ok: false,
                exitCode: status.rawValue,
                error: ErrorBody(code: status.name, message: message),
                body: details.map(AnyBody.init)
            )
        )
    }

    private struct AnyBody: Encodable {
        let value: any Encodable & Sendable
        func encode(to encoder: any Encoder) throws { try value.encode(to: encoder) }
    }

    private static func emit(_ value: some Encodable) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        guard let data = try? encoder.encode(value) else { return }
        Swift.print(String(decoding: data, as: UTF8.self))
    }

    struct ErrorBody: Encodable {
        var code: String
        var message: String
    }

    private struct Envelope<Body: Encodable>: Encodable {
        var command: String
        var ok: Bool
        var exitCode: Int32
        var error: ErrorBody?
        var body: Body?

        enum Keys: String, CodingKey { case format, command, ok, exitCode, error }

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: Keys.self)
            try container.encode(JSONOutput.format, forKey: .format)
            try container.encode(command, forKey: .command)
            try container.encode(ok, forKey: .ok)
            try container.encode(exitCode, forKey: .exitCode)
            try container.encodeIfPresent(error, forKey: .error)
            try body?.encode(to: encoder)
        }
    }
}

/// An error whose `--json` document carries more than the message (fields beside `error`).
protocol DetailedError: Error {
    /// Nil when this error has nothing beyond its message.
    var details: (any Encodable & Sendable)? { get }
}

/// Records how `sync`, `apply` and `rollback` end, for `upgrade status`.
enum RunLog {
    /// Runs `body`, then records its end in the root's state directory (when there is one)
    /// and passes its result or error on.
    static func around<T>(
        command: String,
        root: String,
        stateDirectory: String,
        channel: String? = nil,
        _ body: () async throws -> T,
        result: (T) -> (RunResult, String?)
    ) async throws -> T {
        do {
            let value = try await body()
            let (outcome, version) = result(value)
            if outcome != .dryRun {
                Installer.record(
                    RunRecord(
                        command: command,
                        at: Timestamps.iso(Timestamps.now()),
                        exitCode: 0,
                        result: outcome,
                        channel: channel,
                        version: version
                    ),
                    root: root,
                    stateDirectoryName: stateDirectory
                )
            }
            return value
        } catch {
            let status = (error as? any ClassifiedError)?.exitStatus ?? (error as? ExitStatus) ?? .failure
            let version = (try? Installer.status(root: root, stateDirectoryName: stateDirectory))?.installed?.version
            Installer.record(
                RunRecord(
                    command: command,
                    at: Timestamps.iso(Timestamps.now()),
                    exitCode: status.rawValue,
                    error: String("\(error)".prefix(1000)),
                    channel: channel,
                    version: version
                ),
                root: root,
                stateDirectoryName: stateDirectory
            )
            throw error
        }
    }
}

/// Human output shared by the commands that change a root.
enum Output {
    /// `--keep` patterns (or the config file's `keep`), checked: a bad one is a usage error.
    static func keepPatterns(_ patterns: [String]) throws -> [Glob] {
        try patterns.map { pattern in
            do {
                return try Glob(pattern)
            } catch {
                throw CommandFailure(description: "--keep: \(error)", exitStatus: .usage)
            }
        }
    }

    /// One line per local change a run reverted, deleted, kept or found in conflict.
    static func localChangeLines(_ changes: [LocalChange]?) -> [String] {
        (changes ?? []).map { change in
            switch change.action {
            case .reverted: "reverted \(change.path) (\(change.reason))"
            case .deleted: "deleted \(change.path) (\(change.reason))"
            case .kept: "kept \(change.path) (\(change.reason))"
            case .conflict: "conflict \(change.path): \(change.reason)"
            }
        }
    }
}
