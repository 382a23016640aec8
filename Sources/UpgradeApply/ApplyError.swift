public import UpgradeCore
public import UpgradeTrust

/// Why an apply, a rollback or a recovery stopped. The CLI maps each case to an exit code.
public enum ApplyError: Error, CustomStringConvertible {
    /// Another process holds the root's lock.
    case busy(pid: Int32?, waited: Double)
    /// A signature, digest, sequence, product or payload check failed; nothing was changed.
    case verification(String)
    /// The plan or the tree is unsafe (hostile path, symlink where a directory should be).
    case unsafePlan(String)
    /// A path cannot be written without going through a symlink.
    case unsafePath(path: String, String)
    /// Not enough free space for staging.
    case noSpace(needed: UInt64, available: UInt64, path: String)
    /// The state directory is not on the root's filesystem.
    case crossDevice(state: String, root: String)
    /// A hook or the health check failed; the tree was rolled back to the old release.
    case rolledBack(hook: Hooks.Kind, reason: String, output: String)
    /// Recovery could not restore a consistent tree; a person must look.
    case manualIntervention(String)
    /// Nothing to roll back to.
    case nothingToRollBack(String)
    /// SIGTERM or SIGINT arrived; what the transaction did about it.
    case interrupted(signal: Int32, String)
    /// The release is older than the installed one and `--allow-downgrade` was not given.
    case downgrade(Downgrade)
    /// The release is published for another platform than this machine's.
    case wrongPlatform(PlatformMismatch)
    /// The root cannot be used as one: not a directory, or (for `verify`) nothing installed.
    case notARoot(path: String, String)

    public var description: String {
        switch self {
        case .busy(let pid, let waited):
            "another upgrade holds the lock\(pid.map { " (pid \($0))" } ?? "") after waiting \(Int(waited)) s; try again later"
        case .verification(let why): "verification failed: \(why); nothing was changed"
        case .unsafePlan(let why): "\(why); nothing was changed"
        case .unsafePath(let path, let why): "unsafe path \(path.debugDescription): \(why)"
        case .noSpace(let needed, let available, let path):
            "not enough space on the filesystem of \(path.debugDescription): need \(needed) bytes, \(available) available; nothing was changed"
        case .crossDevice(let state, let root):
            "state directory \(state.debugDescription) is not on the filesystem of \(root.debugDescription); renames would not be atomic"
        case .rolledBack(let hook, let reason, let output):
            "\(hook) hook failed (\(reason)); the tree was rolled back to the previous release"
                + (output.isEmpty ? "" : "\n--- \(hook) output (last lines) ---\n\(output)")
        case .manualIntervention(let why): "needs manual intervention: \(why)"
        case .nothingToRollBack(let why): "nothing to roll back: \(why)"
        case .interrupted(let signal, let what): "interrupted by \(Interruption.name(signal)): \(what)"
        case .downgrade(let downgrade): "refused: \(downgrade); nothing was changed"
        case .wrongPlatform(let mismatch): "refused: \(mismatch); nothing was changed"
        case .notARoot(let path, let why): "\(path): \(why)"
        }
    }
}

/// A release older (by signed sequence) than the installed one, offered without
/// `--allow-downgrade` (`--json` error documents carry it as `downgrade`).
public struct Downgrade: Hashable, Sendable, Encodable, CustomStringConvertible {
    /// A release by version and signed sequence.
    public struct Release: Hashable, Sendable, Encodable {
        public let version: String
        public let sequence: UInt64
    }

    public let offered: Release
    public let installed: Release

    public init(offered: ReleaseHeader, installed: ReleaseHeader) {
        self.offered = Release(version: offered.version, sequence: offered.sequence)
        self.installed = Release(version: installed.version, sequence: installed.sequence)
    }

    public var description: String {
        "release \(offered.version) (sequence \(offered.sequence)) is older than the installed \(installed.version) (sequence \(installed.sequence)); pass --allow-downgrade to install it anyway"
    }
}
