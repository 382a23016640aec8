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

/// The transactional apply engine (see docs/design.md, "Apply engine").
public enum Installer {
    // MARK: Install

    public static func install(_ request: InstallRequest) throws -> InstallReport {
        let session = try RootSession(
            root: request.root,
            stateDirectoryName: request.stateDirectoryName,
            lockTimeout: request.lockTimeout,
            observer: request.observer
        )
        return try session.install(request)
    }

    /// What checking a request found: the verified header, the installed one, the signed
    /// target manifest and the tree the plan was verified against.
    struct Checked {
        var header: ReleaseHeader
        var installedHeader: ReleaseHeader?
        var target: Manifest
        var local: Manifest
        /// The release is installed and the tree intact: nothing to do.
        var alreadyInstalled: Bool
        /// The request's plan with the release's path policy and the machine's `keep` applied.
        var plan: Plan
        /// What ``plan`` reverts, deletes and keeps.
        var changes: [LocalChange]
    }

    /// The install itself, under a session's lock, after its recovery. `checked` is what an
    /// earlier check of this very request found (a dry run before the downloads), so the
    /// signature, manifest and plan are verified once per run.
    static func install(
        _ request: InstallRequest,
        root: SafeTree,
        store: StateStore,
        recovered: String?,
        checked: Checked? = nil
    ) throws -> (InstallReport, Checked) {
        let checked = try checked ?? check(request, root: root, store: store)
        let (header, installedHeader, target, local) = (
            checked.header, checked.installedHeader, checked.target, checked.local
        )
        if checked.alreadyInstalled {
            let report = InstallReport(
                result: .nothingToDo,
                product: header.product,
                fromVersion: installedHeader?.version,
                toVersion: header.version,
                summary: Plan(operations: []).summary,
                recovered: recovered,
                localChanges: checked.changes.isEmpty ? nil : checked.changes
            )
            return (report, checked)
        }
        var report = InstallReport(
            result: .installed,
            product: header.product,
            fromVersion: installedHeader?.version,
            toVersion: header.version,
            summary: checked.plan.summary,
            recovered: recovered,
            localChanges: checked.changes.isEmpty ? nil : checked.changes
        )
        if request.dryRun {
            report.result = .dryRun
            report.operations = checked.plan.operations.map(OperationJSON.init)
            return (report, checked)
        }
        if checked.plan.isEmpty && installedHeader?.manifestSHA256 == header.manifestSHA256 {
            report.result = .nothingToDo
            return (report, checked)
        }
        if let points = request.rollbackPoints { try store.write("rollback-points", Array("\(points)\n".utf8)) }
        let placed = try transact(
            root: root,
            store: store,
            plan: checked.plan,
            local: local,
            target: target,
            headerBytes: request.headerBytes,
            header: header,
            fromVersion: installedHeader?.version,
            payloads: request.payloads,
            timeouts: (request.hookTimeout, request.healthCheckTimeout)
        )
        refreshStatCache(store: store, root: root, target: target, placed: placed)
        try store.write("last-result.json", encode(report))
        return (report, checked)
    }

    /// Records the files the install placed in the stat cache (their content is the signed one,
    /// verified while staged), so the next scan does not hash them: after a fresh install of
    /// 100,000 files the first cron run would otherwise read the whole tree again. Best effort.
    static func refreshStatCache(store: StateStore, root: SafeTree, target: Manifest, placed: [String: FileIdentity]) {
        guard !placed.isEmpty else { return }
        let file = store.path + "/statcache"
        let previous = (try? AtomicFile.read(file)).flatMap(StatCache.init(encoded:)) ?? StatCache()
        let cache = StatCache.afterInstall(of: target, placed: placed, previous: previous, rootFD: root.fd)
        try? AtomicFile.write(cache.encoded(), to: file, mode: 0o600)
    }

    /// Verifies everything about `request` before the first change: the signature, the
    /// product and sequence against the installed release, the manifest against the header,
    /// and the plan against the tree (scanned now unless the request carries the scan).
    static func check(_ request: InstallRequest, root: SafeTree, store: StateStore) throws -> Checked {
        let header: ReleaseHeader
        do {
            header = try ReleaseHeader.verify(
                SignedEnvelope(encoded: request.headerBytes),
                trusted: request.trusted,
                now: request.now
            )
        } catch {
            throw ApplyError.verification("\(error)")
        }
        if let mismatch = header.platformMismatch() { throw ApplyError.wrongPlatform(mismatch) }
        let installed = store.current
        let installedHeader = installed.flatMap {
            try? ReleaseHeader(unverified: SignedEnvelope(encoded: $0.headerBytes))
        }
        if let installedHeader {
            guard installedHeader.product == header.product else {
                throw ApplyError.verification(
                    "the release is for product \(header.product), this root has \(installedHeader.product) installed"
                )
            }
            guard header.sequence >= installedHeader.sequence || request.allowDowngrade else {
                throw ApplyError.downgrade(
                    "release \(header.version) (sequence \(header.sequence)) is older than the installed \(installedHeader.version) (sequence \(installedHeader.sequence)); pass --allow-downgrade to install it anyway"
                )
            }
        }
        let target: Manifest
        do {
            target = try Manifest(canonical: request.manifestBytes)
            try header.check(target)
        } catch {
            throw ApplyError.verification("release manifest: \(error)")
        }
        let local = try request.scanned ?? scan(root: root.display, store: store, options: request.scanOptions)
        let outcome = request.plan.respecting(
            keep: request.keep,
            local: local,
            base: installed?.manifest,
            target: target
        )
        // The release is installed already and the tree intact, or different only where the
        // policy keeps it (a bundle applied twice, a plan for another starting point): nothing to
        // do, whatever the plan says.
        if installedHeader?.manifestSHA256 == header.manifestSHA256,
            outcome.plan.isEmpty || local.adoptingDigests(from: target).differingPaths(from: target).isEmpty
        {
            return Checked(
                header: header,
                installedHeader: installedHeader,
                target: target,
                local: local,
                alreadyInstalled: true,
                plan: Plan(operations: []),
                changes: outcome.changes.filter { $0.action == .kept }
            )
        }
        do {
            try outcome.plan.verify(against: local, yields: outcome.target, reserved: [request.stateDirectoryName])
        } catch .unsafe(let why) {
            throw ApplyError.unsafePlan("unsafe plan: \(why)")
        } catch {
            throw ApplyError.verification("\(error)")
        }
        return Checked(
            header: header,
            installedHeader: installedHeader,
            target: target,
            local: local,
            alreadyInstalled: false,
            plan: outcome.plan,
            changes: outcome.changes
        )
    }

    // MARK: Recovery, status, verify

    /// Finishes or undoes an interrupted transaction; nil when there was none.
    public static func recover(
        root rootPath: String,
        stateDirectoryName: String = TreeSource.stateDirectoryName,
        lockTimeout: Double = 60,
        observer: any MutationObserver = NoObserver()
    ) throws -> String? {
        guard FileManager.default.fileExists(atPath: rootPath + "/" + stateDirectoryName) else { return nil }
        let root = try SafeTree(path: rootPath, observer: observer)
        let store = try openState(root: root, rootPath, name: stateDirectoryName)
        let lock = try store.lock(timeout: lockTimeout)
        defer { withExtendedLifetime(lock) {} }
        return try recover(store: store, root: root)
    }

    /// The installed release, any pending journal, and the last result.
    public static func status(
        root rootPath: String,
        stateDirectoryName: String = TreeSource.stateDirectoryName
    ) throws -> RootStatus {
        var status = RootStatus()
        let root = try SafeTree(path: rootPath, observer: NoObserver())
        guard let store = try? StateStore(root: root, name: stateDirectoryName, rootPath: rootPath, create: false)
        else { return status }
        if let current = store.current,
            let header = try? ReleaseHeader(unverified: SignedEnvelope(encoded: current.headerBytes))
        {
            status.installed = RootStatus.Release(
                product: header.product,
                version: header.version,
                sequence: header.sequence,
                platform: header.platform,
                manifestSHA256: header.manifestSHA256,
                created: Timestamps.iso(header.created),
                expires: Timestamps.iso(header.expires)
            )
            status.rollbackAvailable = current.previous.flatMap(store.state) != nil
        }
        if let journal = try? store.journal() {
            status.pendingJournal = RootStatus.Pending(
                state: journal.state.rawValue,
                fromVersion: journal.fromVersion,
                toVersion: journal.toVersion
            )
        }
        let holder = store.lockHolder()
        status.lock = RootStatus.Lock(held: holder.held, pid: holder.pid)
        let decoder = JSONDecoder()
        status.lastResult = store.read("last-result.json").flatMap {
            try? decoder.decode(InstallReport.self, from: Data($0))
        }
        status.lastAttempt = store.read(RunRecord.attemptFile).flatMap {
            try? decoder.decode(RunRecord.self, from: Data($0))
        }
        status.lastSuccess = store.read(RunRecord.successFile).flatMap {
            try? decoder.decode(RunRecord.self, from: Data($0))
        }
        status.channel = status.lastSuccess?.channel ?? status.lastAttempt?.channel
        return status
    }

    /// Records how a command that works on the root ended (`status` shows the last attempt and
    /// the last success). Written only into an existing state directory; a record that cannot
    /// be written costs the history, not the run.
    public static func record(
        _ record: RunRecord,
        root rootPath: String,
        stateDirectoryName: String = TreeSource.stateDirectoryName
    ) {
        guard let root = try? SafeTree(path: rootPath, observer: NoObserver()),
            let store = try? StateStore(root: root, name: stateDirectoryName, rootPath: rootPath, create: false)
        else { return }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        guard let bytes = try? encoder.encode(record) else { return }
        try? store.write(RunRecord.attemptFile, [UInt8](bytes))
        if record.exitCode == 0 { try? store.write(RunRecord.successFile, [UInt8](bytes)) }
    }

    /// How the tree differs from the installed release (locally modified, added or removed).
    ///
    /// Read-only: creates no file in the root (no lock file, no stat cache update, no
    /// recovery). It shares the lock while it scans when a lock file exists, so an upgrade in
    /// progress is waited for (up to `lockTimeout`) rather than half seen.
    public static func verify(
        root rootPath: String,
        stateDirectoryName: String = TreeSource.stateDirectoryName,
        lockTimeout: Double = 60
    ) throws -> [Manifest.Difference] {
        let root = try SafeTree(path: rootPath, observer: NoObserver())
        let store: StateStore
        do {
            store = try StateStore(root: root, name: stateDirectoryName, rootPath: rootPath, create: false)
        } catch {
            throw ApplyError.notARoot(path: rootPath, "nothing is installed here (no \(stateDirectoryName) directory)")
        }
        let lock = try store.sharedLock(timeout: lockTimeout)
        defer { withExtendedLifetime(lock) {} }
        if let journal = try? store.journal() {
            throw ApplyError.verification(
                "an upgrade to \(journal.toVersion) was interrupted (\(journal.state.rawValue)); `upgrade recover` (or the next sync, apply or rollback) recovers it"
            )
        }
        guard let current = store.current else {
            throw ApplyError.notARoot(path: rootPath, "nothing is installed here")
        }
        var options = ScanOptions()
        options.excluded = [String(store.path.split(separator: "/").last ?? ".upgrade")]
        let frozen = options
        let cache = store.path + "/statcache"
        let local = try runBlocking { try await TreeSource.scan(rootPath, options: frozen, cache: .readOnly(cache)) }
            .manifest
        let release = current.manifest
        let policy = release.policy
        // Unmanaged paths and the `.upgrade-new` files beside config files are not the release's.
        var found = local.adoptingDigests(from: release).differences(from: release).filter { difference in
            if policy.isUnmanaged(difference.path) { return false }
            if difference.kind == .extra, difference.path.hasSuffix(PathPolicy.newSuffix) {
                return !policy.isConfig(String(difference.path.dropLast(PathPolicy.newSuffix.count)))
            }
            return true
        }
        let reported = Set(found.map(\.path))
        for path in release.metadata.keys.sorted(by: PathRules.byteOrder) where !reported.contains(path) {
            let meta = release.metadata[path]!
            let observe = { (path: String, xattrs: Bool) in
                try? root.withParent(path) { MetadataIO.observe($0, $1, xattrs: xattrs) }
            }
            guard let observed = observe(path, !meta.xattrs.isEmpty) ?? nil else { continue }
            if let leader = meta.hardLink {
                if let first = observe(leader, false) ?? nil,
                    first.inode != observed.inode || first.device != observed.device
                {
                    found.append(Manifest.Difference(path: path, kind: .link))
                }
                continue
            }
            if !MetadataIO.satisfies(observed, EntryMetadata(owner: meta.owner)) {
                found.append(Manifest.Difference(path: path, kind: .owner))
            } else if !MetadataIO.satisfies(observed, EntryMetadata(xattrs: meta.xattrs)) {
                found.append(Manifest.Difference(path: path, kind: .xattr))
            }
        }
        return found.sorted { PathRules.byteOrder($0.path, $1.path) }
    }

    // MARK: Helpers

    /// The root as an absolute path (hooks run with it as working directory and in their environment).
    static func absolute(_ path: String) -> String {
        guard let resolved = realpath(path, nil) else { return path }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    static func makeRoot(_ path: String, observer: any MutationObserver) throws {
        var info = stat()
        if lstat(path, &info) == 0 {
            guard info.st_mode & S_IFMT == S_IFDIR else {
                throw ApplyError.notARoot(path: path, "the root is not a directory")
            }
            return
        }
        try observer.willMutate("mkdir root")
        guard mkdir(path, 0o755) == 0 || errno == EEXIST else {
            throw SystemCallError(call: "mkdir \(path)", code: errno)
        }
    }

    static func openState(root: SafeTree, _ rootPath: String, name: String) throws -> StateStore {
        let store = try StateStore(root: root, name: name, rootPath: rootPath)
        var rootInfo = stat()
        var stateInfo = stat()
        fstat(root.fd, &rootInfo)
        fstat(store.tree.fd, &stateInfo)
        guard rootInfo.st_dev == stateInfo.st_dev else {
            throw ApplyError.crossDevice(state: store.path, root: rootPath)
        }
        return store
    }

    static func scan(root: String, store: StateStore, options: ScanOptions) throws -> Manifest {
        var scanOptions = options
        scanOptions.excluded = [String(store.path.split(separator: "/").last ?? ".upgrade")]
        let frozen = scanOptions
        let cache = store.path + "/statcache"
        let result = try runBlocking { try await TreeSource.scan(root, options: frozen, cache: .file(cache)) }
        return result.manifest
    }

    static func encode(_ report: InstallReport) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        return [UInt8]((try? encoder.encode(report)) ?? Data())
    }
}

/// Runs an async scan from synchronous engine code (the engine is synchronous by design: it is a
/// sequence of syscalls that must not interleave).
func runBlocking<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
    nonisolated(unsafe) var result: Result<T, any Error>?
    let done = DispatchSemaphore(value: 0)
    Task.detached {
        do { result = .success(try await body()) } catch { result = .failure(error) }
        done.signal()
    }
    done.wait()
    return try result!.get()
}
