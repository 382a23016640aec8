import UpgradeApply
import UpgradeBundle
import UpgradeClient
import UpgradeCore
import UpgradePeer
import UpgradeRepository
import UpgradeScan
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
    /// Another run holds the root's lock (EX_TEMPFAIL).
    case busy = 75
    /// Stopped by SIGINT (128 + 2) or SIGTERM (128 + 15); the line printed says which release
    /// the tree holds (a transaction in progress was rolled back, or had committed and finished).
    case interruptedByInt = 130
    case interruptedByTerm = 143

    static let helpText = """
        EXIT CODES
          0   done, or nothing to do
          1   I/O or system error (the message names the path and the failing call)
          2   usage error (bad flags or arguments)
          3   invalid input: a path breaks the path rules, a device/FIFO/socket is in the tree,
              or a manifest file is malformed; nothing was changed
          4   verification failed: a signature, digest or content check did not pass
          5   refused: conflicts with what exists (a key file, a version published with
              other content, a version not newer than the latest, a key the repository's
              root does not authorize)
          6   unsafe plan: a hostile path, or a symlink where the plan needs a directory;
              nothing was changed
          7   not enough free space to download or stage the upgrade; nothing was changed
          8   a hook or the health check failed; the tree was rolled back to the old release
          9   needs manual intervention: recovery could not restore a consistent tree
          10  network: the server or mirror could not be reached, kept failing, refused, was
              slower than --min-rate, or --timeout passed
          75  busy: another upgrade holds the root's lock (try again later)
          130 interrupted by SIGINT, 143 by SIGTERM: before a transaction nothing was changed
              (finished downloads are kept); during one, a running hook's process group is
              killed and the tree rolled back, or, past the commit, the upgrade finishes; the
              last line says which release the tree holds
        """
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
        case .network, .server, .tooSlow, .timedOut: .network
        case .verification, .corruptPayload: .verificationFailed
        case .noSpace: .noSpace
        }
    }
}

extension PeerSetupError: ClassifiedError {
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
