import UpgradeApply
import UpgradeBundle
import UpgradeClient
import UpgradeCore
import UpgradePeer
import UpgradeRepository
import UpgradeScan
import UpgradeServer
import UpgradeSystem
import UpgradeTrust

#if canImport(Glibc)
import Glibc
#endif

/// The exit codes `upgrade` documents (README, `upgrade --help`). They are stable: scripts and
/// cron jobs branch on them.
enum ExitStatus: Int32, Error {
    /// Done, or nothing to do.
    case success = 0
    /// An I/O or system error (a message names the path and the call).
    case failure = 1
    /// Bad flags or arguments.
    case usage = 2
    /// A tree or manifest breaks the rules: hostile path, device or FIFO in the tree, malformed
    /// manifest file. Nothing was changed.
    case invalidInput = 3
    /// A signature, digest or content check failed: the input cannot be trusted.
    case verificationFailed = 4
    /// Refused because it conflicts with what exists: a key file, a published version.
    case refused = 5
    /// The plan or the tree is unsafe: a hostile path, a symlink where a directory should be.
    case unsafePlan = 6
    /// Not enough free space for staging.
    case noSpace = 7
    /// A hook or the health check failed and the tree was rolled back.
    case rolledBack = 8
    /// Recovery could not restore a consistent tree; a person must look.
    case manualIntervention = 9
    /// The server or mirror could not be reached, kept failing, or refused the request.
    case network = 10
    /// The server has no such product, channel or release; not retried.
    case notFound = 11
    /// Another run holds the root's lock (EX_TEMPFAIL).
    case busy = 75
    /// Stopped by SIGINT (128 + 2) or SIGTERM (128 + 15); the line printed says which release
    /// the tree holds (a transaction in progress was rolled back, or had committed and finished).
    case interruptedByInt = 130
    case interruptedByTerm = 143

    /// The token naming the status in `--json` error documents.
    var name: String {
        switch self {
        case .success: "ok"
        case .failure: "io"
        case .usage: "usage"
        case .invalidInput: "invalid-input"
        case .verificationFailed: "verification-failed"
        case .refused: "refused"
        case .unsafePlan: "unsafe-plan"
        case .noSpace: "no-space"
        case .rolledBack: "rolled-back"
        case .manualIntervention: "manual-intervention"
        case .network: "network"
        case .notFound: "not-found"
        case .busy: "busy"
        case .interruptedByInt, .interruptedByTerm: "interrupted"
        }
    }

    /// Every documented code with its meaning, as `--help` and the README print them (one
    /// source; lines fit 80 columns).
    static let meanings: [(code: String, lines: [String])] = [
        ("0", ["done, or nothing to do"]),
        ("1", ["I/O or system error (the message names the path and the failing call)"]),
        ("2", ["usage: a bad or missing flag or argument, an unusable flag value or", "config file"]),
        (
            "3",
            [
                "invalid input: a path breaks the path rules, a device/FIFO/socket is in",
                "the tree, a manifest file is malformed, the root is not a directory or",
                "(verify) has nothing installed; nothing was changed",
            ]
        ),
        (
            "4",
            [
                "verification failed: a signature, digest or content check did not pass,",
                "or (verify) the tree differs from the installed release",
            ]
        ),
        (
            "5",
            [
                "refused: conflicts with what exists (a key file, a version published",
                "with other content, a version not newer than the latest, a key the",
                "root does not authorize, an older release without --allow-downgrade,",
                "a release published for another platform)",
            ]
        ),
        ("6", ["unsafe plan: a hostile path, or a symlink where the plan needs a", "directory; nothing was changed"]),
        ("7", ["not enough free space to download or stage; nothing was changed"]),
        ("8", ["a hook or the health check failed; the tree was rolled back"]),
        ("9", ["needs manual intervention: recovery could not restore a consistent tree"]),
        (
            "10",
            [
                "network: the server or mirror could not be reached, kept failing, was",
                "slower than --min-rate, --timeout passed, or (not retried) the URL or", "TLS setup cannot work",
            ]
        ),
        ("11", ["not found: the server has no such product, channel or release"]),
        ("75", ["busy: another upgrade holds the root's lock (try again later)"]),
        (
            "130",
            [
                "interrupted by SIGINT, 143 by SIGTERM: before a transaction nothing",
                "was changed (finished downloads are kept); during one, a running hook's",
                "process group is killed and the tree rolled back, or, past the commit,",
                "the upgrade finishes; the last line says which release the tree holds",
            ]
        ),
    ]

    /// The codes each command can end with.
    static let byCommand: [(command: String, codes: [ExitStatus])] = [
        ("manifest", [.success, .failure, .usage, .invalidInput]),
        ("diff", [.success, .failure, .usage, .invalidInput]),
        ("keygen", [.success, .failure, .usage, .refused]),
        ("publish", [.success, .failure, .usage, .invalidInput, .verificationFailed, .refused]),
        ("releases", [.success, .failure, .usage]),
        ("verify-repo", [.success, .failure, .usage, .verificationFailed]),
        ("bundle", [.success, .failure, .usage, .invalidInput, .verificationFailed]),
        (
            "apply",
            [
                .success, .failure, .usage, .invalidInput, .verificationFailed, .refused, .unsafePlan, .noSpace,
                .rolledBack, .manualIntervention, .busy, .interruptedByInt,
            ]
        ),
        ("status", [.success, .failure, .usage, .invalidInput]),
        ("verify", [.success, .failure, .usage, .invalidInput, .verificationFailed, .busy]),
        (
            "rollback",
            [
                .success, .failure, .usage, .invalidInput, .refused, .noSpace, .manualIntervention, .busy,
                .interruptedByInt,
            ]
        ),
        ("recover", [.success, .failure, .usage, .invalidInput, .manualIntervention, .busy, .interruptedByInt]),
        ("serve", [.success, .failure, .usage, .invalidInput]),
        (
            "sync",
            [
                .success, .failure, .usage, .invalidInput, .verificationFailed, .refused, .unsafePlan, .noSpace,
                .rolledBack, .manualIntervention, .network, .notFound, .busy, .interruptedByInt,
            ]
        ),
        ("share", [.success, .failure, .usage, .invalidInput]),
        ("root", [.success, .failure, .usage, .invalidInput, .verificationFailed, .refused]),
        ("channel", [.success, .failure, .usage, .invalidInput, .refused, .notFound]),
        ("confirm", [.success, .failure, .usage, .invalidInput, .busy]),
        ("fleet", [.success, .failure, .usage, .verificationFailed, .network, .notFound]),
    ]

    /// The EXIT CODES section of `upgrade --help`, also in the README (a test compares them).
    static var helpText: String {
        var lines = ["EXIT CODES"]
        for (code, text) in meanings {
            lines.append("  " + code.padding(toLength: 4, withPad: " ", startingAt: 0) + text[0])
            for more in text.dropFirst() { lines.append("      " + more) }
        }
        lines.append("")
        lines.append("EXIT CODES BY COMMAND (x: the command can end with it; 130 stands for 130/143)")
        let columns: [ExitStatus] = [
            .success, .failure, .usage, .invalidInput, .verificationFailed, .refused, .unsafePlan, .noSpace,
            .rolledBack, .manualIntervention, .network, .notFound, .busy, .interruptedByInt,
        ]
        func row(_ name: String, _ cells: [String]) -> String {
            var line = "  " + name.padding(toLength: 12, withPad: " ", startingAt: 0)
            for cell in cells { line += cell.padding(toLength: 4, withPad: " ", startingAt: 0) }
            return String(line.reversed().drop(while: { $0 == " " }).reversed())
        }
        lines.append(row("", columns.map { String($0.rawValue) }))
        for (command, codes) in byCommand {
            lines.append(row(command, columns.map { codes.contains($0) ? "x" : "." }))
        }
        return lines.joined(separator: "\n")
    }
}

/// An error that knows which exit code it deserves.
protocol ClassifiedError: Error, CustomStringConvertible {
    var exitStatus: ExitStatus { get }
}

extension ScanError: ClassifiedError {
    var exitStatus: ExitStatus {
        switch self {
        case .specialFile, .invalidPath: .invalidInput
        case .rootUnusable, .unreadable, .changedDuringScan: .failure
        }
    }
}

extension TreeSourceError: ClassifiedError {
    var exitStatus: ExitStatus {
        switch self {
        case .missing: .failure
        case .badManifest: .invalidInput
        }
    }
}

extension SystemCallError: ClassifiedError {
    var exitStatus: ExitStatus { .failure }
}

extension PublishError: ClassifiedError {
    var exitStatus: ExitStatus {
        switch self {
        case .invalidName, .invalidVersion: .usage
        case .invalidHook: .invalidInput
        case .missing: .notFound
        case .versionNotNewer, .versionConflict: .refused
        case .changedDuringPublish: .failure
        }
    }
}

extension KeyFileError: ClassifiedError {
    var exitStatus: ExitStatus {
        switch self {
        case .exists: .refused
        case .tooOpen, .unreadable, .noTrustedKey: .invalidInput
        }
    }
}

extension KeyError: ClassifiedError {
    var exitStatus: ExitStatus { .invalidInput }
}

extension TrustError: ClassifiedError {
    var exitStatus: ExitStatus { .verificationFailed }
}

extension ApplyError: ClassifiedError {
    var exitStatus: ExitStatus {
        switch self {
        case .busy: .busy
        case .verification: .verificationFailed
        case .unsafePlan, .unsafePath: .unsafePlan
        case .noSpace: .noSpace
        case .crossDevice: .invalidInput
        case .rolledBack: .rolledBack
        case .manualIntervention: .manualIntervention
        case .nothingToRollBack: .refused
        case .interrupted(let signal, _): signal == SIGINT ? .interruptedByInt : .interruptedByTerm
        case .downgrade, .wrongPlatform: .refused
        case .notARoot: .invalidInput
        }
    }
}

extension RootFileError: ClassifiedError {
    var exitStatus: ExitStatus {
        switch self {
        case .exists, .noRoot, .noDraft, .unauthorized, .belowThreshold, .rejected: .refused
        case .notARepository: .invalidInput
        case .invalid: .verificationFailed
        }
    }
}

extension BundleError: ClassifiedError {
    var exitStatus: ExitStatus { .verificationFailed }
}

extension BundleBuildError: ClassifiedError {
    var exitStatus: ExitStatus { .invalidInput }
}

extension SyncError: ClassifiedError {
    var exitStatus: ExitStatus {
        switch self {
        case .network, .server, .tooSlow, .timedOut, .permanent: .network
        case .notFound: .notFound
        case .configuration: .usage
        case .refused, .wrongPlatform: .refused
        case .verification, .corruptPayload: .verificationFailed
        case .noSpace: .noSpace
        }
    }
}

extension PeerSetupError: ClassifiedError {
    var exitStatus: ExitStatus { .usage }
}

extension ServerSetupError: ClassifiedError {
    var exitStatus: ExitStatus { .usage }
}

extension ProxyError: ClassifiedError {
    var exitStatus: ExitStatus { .usage }
}

extension ConfigError: ClassifiedError {
    var exitStatus: ExitStatus { .usage }
}

/// An error with a ready message.
struct CommandFailure: ClassifiedError {
    let description: String
    let exitStatus: ExitStatus
}

/// A payload that failed its check names what was expected and what arrived (`payload`).
extension SyncError: DetailedError {
    var details: (any Encodable & Sendable)? {
        switch self {
        case .corruptPayload(let mismatch): ["payload": mismatch]
        case .wrongPlatform(let mismatch): ["platform": mismatch]
        default: nil
        }
    }
}

/// A refused downgrade names both releases (`downgrade`); a release for another platform names
/// both platforms (`platform`).
extension ApplyError: DetailedError {
    var details: (any Encodable & Sendable)? {
        switch self {
        case .downgrade(let downgrade): ["downgrade": downgrade]
        case .wrongPlatform(let mismatch): ["platform": mismatch]
        default: nil
        }
    }
}
