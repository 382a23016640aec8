internal import CUpgradeSys
import Foundation
public import UpgradeCore
public import UpgradeScan
import UpgradeSystem
public import UpgradeTrust

#if canImport(Glibc)
import Glibc
#endif

/// What to install: a signed release (header and manifest), the plan that reaches it from the
/// tree as it should be, and where the payloads come from. Bundles and (later) the network fill
/// this in the same way.
public struct InstallRequest: Sendable {
    public var root: String
    public var stateDirectoryName = TreeSource.stateDirectoryName
    public var trusted: TrustedKeys
    public var headerBytes: [UInt8]
    public var manifestBytes: [UInt8]
    public var plan: Plan
    /// Plan from the tree as scanned to the manifest instead of using ``plan``: a full bundle,
    /// whose plan starts from nothing, applied to a tree that holds a release or local changes.
    public var planFromTree = false
    public var payloads: any PayloadSource
    public var dryRun = false
    /// Seconds to wait for another run's lock before giving up (exit 75).
    public var lockTimeout: Double = 60
    public var hookTimeout: Double = 300
    public var healthCheckTimeout: Double = 60
    public var allowDowngrade = false
    public var now: Int64 = Timestamps.now()
    public var observer: any MutationObserver = NoObserver()
    public var scanOptions = ScanOptions()
    /// The tree as this session scanned it, to be used instead of scanning again (`sync` scans
    /// once, under the lock it holds for the whole run). nil scans.
    public var scanned: Manifest?
    /// The machine's own `keep` patterns: paths a sync leaves as they are (see ``PathPolicy``).
    public var keep: [Glob] = []
    /// Earlier releases kept for `upgrade rollback`, one step back each (remembered by the root;
    /// nil keeps what it has, 1 by default).
    public var rollbackPoints: Int?

    public init(
        root: String,
        trusted: TrustedKeys,
        headerBytes: [UInt8],
        manifestBytes: [UInt8],
        plan: Plan,
        payloads: any PayloadSource
    ) {
        self.root = root
        self.trusted = trusted
        self.headerBytes = headerBytes
        self.manifestBytes = manifestBytes
        self.plan = plan
        self.payloads = payloads
    }
}

/// What a command that changes a root came to (the `result` of `--json`; docs/format.md).
public enum RunResult: String, Sendable, Codable, CaseIterable {
    /// The release was installed (or the tree repaired to it).
    case installed
    /// The tree already is the release; nothing was done.
    case upToDate = "up-to-date"
    /// `--dry-run`: the plan was checked and shown; nothing was changed.
    case dryRun = "dry-run"
    /// `apply` of a bundle whose release is installed, with an unchanged tree.
    case nothingToDo = "nothing-to-do"
    /// `rollback`: the previous release is back.
    case rolledBack = "rolled-back"
    /// An interrupted transaction was rolled back by recovery.
    case recovered
    /// `sync`: the channel's signed rollout rules keep this device where it is (not in the
    /// percentage yet, paused, pinned); see `reason`.
    case held
    /// `sync`: the release failed here before and is not tried again; see `reason`.
    case skipped
}

/// What an install, a rollback or a recovery did.
public struct InstallReport: Sendable, Codable {
    public var result: RunResult
    public var product: String?
    public var fromVersion: String?
    public var toVersion: String?
    public var summary: Plan.Summary?
    public var recovered: String?
    /// The plan, for dry runs.
    public var operations: [OperationJSON]?
    /// Local changes the install reverted, deleted or kept, and config conflicts (absent: none).
    public var localChanges: [LocalChange]?
}

/// What `upgrade status` shows: the installed release, a pending journal, the lock holder, and
/// how the last commands went.
public struct RootStatus: Sendable, Codable {
    public struct Release: Sendable, Codable {
        public var product: String
        public var version: String
        public var sequence: UInt64
        public var platform: String
        public var manifestSHA256: String
        public var created: String
        public var expires: String
    }

    /// An interrupted transaction the next command that changes the root recovers.
    public struct Pending: Sendable, Codable {
        public var state: String
        public var fromVersion: String?
        public var toVersion: String
    }

    public struct Lock: Sendable, Codable {
        /// Another process holds the lock right now.
        public var held = false
        /// The holder's pid (from the lock file), when held.
        public var pid: Int32?
    }

    /// nil: nothing is installed.
    public var installed: Release?
    public var rollbackAvailable = false
    public var pendingJournal: Pending?
    public var lock = Lock()
    /// The channel of the last sync.
    public var channel: String?
    /// The report of the last install, rollback or recovery.
    public var lastResult: InstallReport?
    public var lastAttempt: RunRecord?
    public var lastSuccess: RunRecord?
}

/// How one run of `sync`, `apply` or `rollback` ended.
public struct RunRecord: Sendable, Codable {
    static let attemptFile = "last-attempt.json"
    static let successFile = "last-success.json"

    public var command: String
    /// ISO 8601, UTC.
    public var at: String
    public var exitCode: Int32
    /// The result on success.
    public var result: RunResult?
    /// The error message on failure.
    public var error: String?
    public var channel: String?
    /// The release the root holds afterwards.
    public var version: String?

    public init(
        command: String,
        at: String,
        exitCode: Int32,
        result: RunResult? = nil,
        error: String? = nil,
        channel: String? = nil,
        version: String? = nil
    ) {
        self.command = command
        self.at = at
        self.exitCode = exitCode
        self.result = result
        self.error = error
        self.channel = channel
        self.version = version
    }
}
