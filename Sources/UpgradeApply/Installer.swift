internal import CUpgradeSys
import Foundation
public import UpgradeCore
public import UpgradeScan
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

    // MARK: Rollback

    /// Returns the root to the release installed before the current one, from the backups the
    /// last transaction kept.
    public static func rollback(
        root rootPath: String,
        stateDirectoryName: String = TreeSource.stateDirectoryName,
        lockTimeout: Double = 60,
        observer: any MutationObserver = NoObserver()
    ) throws -> InstallReport {
        let rootPath = absolute(rootPath)
        let root = try SafeTree(path: rootPath, observer: observer)
        let store = try openState(root: root, rootPath, name: stateDirectoryName)
        let lock = try store.lock(timeout: lockTimeout)
        defer { close(lock) }
        let recovered = try recover(store: store, root: root)
        return try rollback(root: root, store: store, recovered: recovered)
    }

    /// The rollback itself, under a lock the caller holds.
    static func rollback(root: SafeTree, store: StateStore, recovered: String?) throws -> InstallReport {
        let rootPath = root.display
        guard let current = store.current else {
            throw ApplyError.nothingToRollBack("no release is installed in \(rootPath)")
        }
        guard current.previous.flatMap(store.state) != nil, store.tree.exists("state/\(current.id)/undo") else {
            throw ApplyError.nothingToRollBack(
                "no earlier release is kept for \(rootPath) (rollback points: \(rollbackPoints(store)); sync or apply --rollback-points N keeps more)"
            )
        }
        guard let (previous, backups) = store.backups(of: current) else {
            throw ApplyError.nothingToRollBack("the backups of the last upgrade are gone")
        }
        var files = backups.mapValues(\.1)
        let local = try scan(root: rootPath, store: store, options: ScanOptions())
        let targetHeader = try ReleaseHeader(unverified: SignedEnvelope(encoded: previous.headerBytes))
        let currentHeader = try ReleaseHeader(unverified: SignedEnvelope(encoded: current.headerBytes))
        var tree = try store.treeBefore(current, previous: previous.manifest, backups: &files)
        var plan = Plan(from: local, to: tree)
        // A local edit changed again since the upgrade has no copy left: the release's file.
        let lost = Set(
            plan.operations.compactMap { operation -> String? in
                switch operation {
                case .add(let path, _, let content), .replace(let path, _, let content):
                    content.sha256 == nil ? path : nil
                default: nil
                }
            }
        )
        if !lost.isEmpty {
            let signed = previous.manifest.index()
            tree = try Manifest(
                entries: tree.entries.compactMap { lost.contains($0.path) ? signed[$0.path] : $0 },
                hooks: tree.hooks,
                policy: tree.policy
            )
            plan = Plan(from: local, to: tree)
        }
        // Unmanaged paths (of either release) stay as they are now: logs written since the upgrade.
        let unmanaged = PathPolicy(unmanaged: previous.manifest.policy.unmanaged + current.manifest.policy.unmanaged)
        if !unmanaged.isEmpty {
            let outcome = plan.respecting(
                keep: [],
                local: local,
                base: nil,
                target: try Manifest(entries: tree.entries, hooks: tree.hooks, policy: unmanaged)
            )
            (plan, tree) = (outcome.plan, outcome.target)
        }
        // Files present in the previous release and unchanged since stay; the rest come from backups.
        _ = try transact(
            root: root,
            store: store,
            plan: plan,
            local: local,
            target: tree,
            headerBytes: previous.headerBytes,
            header: targetHeader,
            fromVersion: currentHeader.version,
            payloads: FilePayloads(tree: store.tree, files: files),
            timeouts: (300, 60),
            runHooks: false,
            recording: previous.manifest,
            becoming: previous.id
        )
        runRestoredPostInstall(store: store, root: root, failed: currentHeader.version, timeout: 300)
        let report = InstallReport(
            result: .rolledBack,
            product: targetHeader.product,
            fromVersion: currentHeader.version,
            toVersion: targetHeader.version,
            summary: plan.summary,
            recovered: recovered
        )
        try store.write("last-result.json", encode(report))
        return report
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
        defer { close(lock) }
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
        defer { if let lock { close(lock) } }
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

    // MARK: The transaction

    static func transact(
        root: SafeTree,
        store: StateStore,
        plan: Plan,
        local: Manifest,
        target: Manifest,
        headerBytes: [UInt8],
        header: ReleaseHeader,
        fromVersion: String?,
        payloads: any PayloadSource,
        timeouts: (hook: Double, health: Double),
        runHooks: Bool = true,
        recording: Manifest? = nil,
        becoming: String? = nil
    ) throws -> [String: FileIdentity] {
        // Preflight: free space for the staged files.
        let needed = plan.summary.bytesToWrite + UInt64(plan.operations.count) * 4096
        var vfs = statvfs()
        if fstatvfs(store.tree.fd, &vfs) == 0 {
            let available = UInt64(vfs.f_bavail) * UInt64(vfs.f_frsize)
            if needed > available { throw ApplyError.noSpace(needed: needed, available: available, path: store.path) }
        }

        try Interruption.enter()
        var outcome = "the tree is unchanged"
        defer { Interruption.leave(note: outcome) }
        let id = store.newStateID()
        var journal = Journal(
            plan: plan,
            tree: local,
            product: header.product,
            fromVersion: fromVersion,
            toVersion: header.version
        )
        journal.transaction = id
        // A repair (the installed release again) must not use up the only rollback point.
        if recording == nil, let current = store.current, current.headerBytes == headerBytes { journal.repair = true }
        journal.rollbackTo = becoming
        try store.tree.removeTree("staging")
        let staging = try store.tree.subdirectory("staging", create: true)
        let stateDirectory = try store.tree.subdirectory("state/\(id)", create: true)
        let backup = try stateDirectory.subdirectory("undo", create: true)
        let driver = TransactionDriver(root: root, staging: staging, backup: backup)

        // Stage and verify every payload; nothing in the tree has changed yet.
        do {
            for (position, operation) in plan.operations.enumerated() {
                switch operation {
                case .add(_, let mode, let content), .replace(_, let mode, let content):
                    try Stager.stage(content, mode: mode, as: "s\(position)", in: staging, from: payloads)
                case .symlink(_, let target):
                    try staging.observer.willMutate("stage symlink s\(position)")
                    guard symlinkat(target, staging.fd, "s\(position)") == 0 else {
                        throw SystemCallError(call: "symlink \(staging.display)/s\(position)", code: errno)
                    }
                default: break
                }
            }
            // Owners, attributes, hard links and holes: no payload, steps of the same journal.
            let signed = recording ?? target
            journal.steps += try MetadataPass.prepare(
                MetadataPass.desired(signed, installed: store.current?.manifest, root: root),
                installed: store.current?.manifest,
                target: signed,
                plan: plan,
                root: root,
                staging: staging
            )
            guard upgrade_syncfs(staging.fd) == 0 else {
                throw SystemCallError(call: "syncfs \(staging.display)", code: errno)
            }
            try store.write("state/\(id)/header", headerBytes)
            try store.write("state/\(id)/manifest", (recording ?? target).canonicalEncoding())
            try store.write("state/\(id)/previous", Array((store.currentID ?? "").utf8))
            // The tree as it was, when it was not exactly the installed release (local edits,
            // files the operator added): what a rollback restores.
            if let installed = store.current?.manifest, !local.sameTree(as: installed) {
                try store.write("state/\(id)/before", local.canonicalEncoding())
            }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            try store.write("state/\(id)/journal", [UInt8](try encoder.encode(journal)))
            if let signal = Interruption.signal {
                throw ApplyError.interrupted(signal: signal, "stopped before any change; the tree is unchanged")
            }
            try store.writeJournal(journal)
        } catch let error as TransactionAbandoned {
            throw error
        } catch {
            // Nothing reached the tree: drop what was staged (journal first, see discard).
            try? store.tree.unlink("journal")
            try? store.tree.removeTree("staging")
            try? store.tree.removeTree("state/\(id)")
            if let error = error as? SystemCallError, error.code == ENOSPC {
                throw ApplyError.noSpace(needed: needed, available: 0, path: store.path)
            }
            throw error
        }

        var placed = [String: FileIdentity]()
        let placedPaths = plan.operations.compactMap { operation -> String? in
            switch operation {
            case .add(let path, _, _), .replace(let path, _, _): path
            default: nil
            }
        }
        let hooks = HookContext(
            root: root,
            store: store,
            staging: staging,
            plan: plan,
            target: target,
            header: header,
            fromVersion: fromVersion,
            id: id
        )
        do {
            if runHooks { try hooks.run(.preInstall, timeout: timeouts.hook) }
            try driver.commit(journal)
            // The placed files as they are before any hook: one clock tick later, so that a
            // write after this has later timestamps (file times come from the coarse clock).
            if !placedPaths.isEmpty {
                usleep(30_000)
                placed = StatCache.identities(of: placedPaths, rootFD: root.fd, racyNanoseconds: 20_000_000)
            }
            if runHooks {
                try hooks.run(.postInstall, timeout: timeouts.hook)
                try hooks.run(.healthCheck, timeout: timeouts.health)
            }
        } catch let error as TransactionAbandoned {
            throw error
        } catch {
            do {
                try driver.rollback(journal)
                try discard(store: store, id: id)
            } catch let abandoned as TransactionAbandoned {
                throw abandoned
            } catch let failure {
                throw ApplyError.manualIntervention("rollback after \(error) failed: \(failure)")
            }
            let restored = fromVersion.map { "rolled back to \($0)" } ?? "rolled back to the empty tree"
            outcome = restored
            // The restored release's post-install runs again (a service the new one restarted
            // goes back to the old code), told why by UPGRADE_PHASE=rollback.
            if runHooks, Interruption.signal == nil {
                runRestoredPostInstall(store: store, root: root, failed: header.version, timeout: timeouts.hook)
            }
            if let signal = Interruption.signal {
                throw ApplyError.interrupted(signal: signal, "\(restored); the hook's processes were killed")
            }
            throw error
        }

        // The commit record: from here on, recovery rolls forward.
        journal.state = .committed
        try store.writeJournal(journal)
        try finish(store: store, journal: journal)
        outcome = "the upgrade to \(header.version) had passed its health check and was finished"
        return placed
    }

    /// Runs the post-install of the release the root holds now (after a rollback) with
    /// `UPGRADE_PHASE=rollback`; its failure is logged, not raised: the tree is already restored.
    static func runRestoredPostInstall(store: StateStore, root: SafeTree, failed: String, timeout: Double) {
        guard let current = store.current, let script = current.manifest.hooks.scripts[.postInstall],
            let header = try? ReleaseHeader(unverified: SignedEnvelope(encoded: current.headerBytes))
        else { return }
        let environment = [
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "UPGRADE_ROOT": root.display, "UPGRADE_PHASE": "rollback", "UPGRADE_PRODUCT": header.product,
            "UPGRADE_FROM_VERSION": failed, "UPGRADE_TO_VERSION": header.version,
        ]
        _ = HookRunner(timeout: timeout).run(
            root.display + "/" + script,
            environment: environment,
            directory: root.display,
            logPath: store.path + "/state/\(current.id)/rollback-post-install.log"
        )
    }

    /// Makes the committed state current and cleans up; every step is idempotent.
    static func finish(store: StateStore, journal: Journal) throws {
        try finish(store: store, id: journal.transaction, repair: journal.repair == true, becoming: journal.rollbackTo)
    }

    /// The rollback points a root keeps (`--rollback-points`, remembered in the state directory).
    static func rollbackPoints(_ store: StateStore) -> Int {
        store.read("rollback-points").flatMap {
            Int(String(decoding: $0, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
        }
        .map { max(1, min($0, 20)) } ?? 1
    }

    static func finish(store: StateStore, id: String, repair: Bool = false, becoming: String? = nil) throws {
        if repair {
            // The tree is the installed release again; its state (and rollback point) stays.
            try store.tree.removeTree("state/\(id)")
        } else if let earlier = becoming {
            // A rollback: the earlier state is current again, with its own rollback point.
            let from = store.read("state/\(id)/previous").map { String(decoding: $0, as: UTF8.self) }
            try store.write("current", Array("\(earlier)\n".utf8))
            try store.tree.removeTree("state/\(id)")
            if let from, !from.isEmpty, from != earlier { try store.tree.removeTree("state/\(from)") }
        } else {
            try store.write("current", Array("\(id)\n".utf8))
            // Keep the chain current -> previous -> ... for the rollback points; each kept
            // state's backups lead to the one before it, the last kept one's lead nowhere.
            let points = rollbackPoints(store)
            var chain = [id]
            while chain.count <= points,
                let bytes = store.read("state/\(chain.last!)/previous"),
                case let previous = String(decoding: bytes, as: UTF8.self), !previous.isEmpty,
                store.tree.exists("state/\(previous)"), !chain.contains(previous)
            {
                chain.append(previous)
            }
            for name in (try? store.tree.subdirectory("state").list()) ?? [] where !chain.contains(name) {
                try store.tree.removeTree("state/\(name)")
            }
            if chain.count > points { try store.tree.removeTree("state/\(chain.last!)/undo") }
        }
        try store.tree.removeTree("staging")
        if store.tree.exists("journal") { try store.tree.unlink("journal") }
        try store.tree.sync()
    }

    /// Forgets a rolled-back transaction. The journal goes first: undo judges each step by what
    /// is still in staging, so staging must outlive the journal, or a crash here would make the
    /// next recovery "undo" steps that were already undone. What remains after the journal is
    /// gone is garbage that the next transaction and ``finish(store:id:)`` clear.
    static func discard(store: StateStore, id: String) throws {
        if store.tree.exists("journal") { try store.tree.unlink("journal") }
        try store.tree.sync()
        try store.tree.removeTree("staging")
        try store.tree.removeTree("state/\(id)")
    }

    /// `upgrade recover`: takes the lock and finishes or rolls back an interrupted transaction,
    /// nothing else. Returns what recovery did, nil when there was nothing to recover.
    public static func recover(
        root rootPath: String,
        stateDirectoryName: String = TreeSource.stateDirectoryName,
        lockTimeout: Double = 60
    ) throws -> String? {
        let root = try SafeTree(path: rootPath, observer: NoObserver())
        guard let store = try? StateStore(root: root, name: stateDirectoryName, rootPath: rootPath, create: false)
        else { return nil }
        let lock = try store.lock(timeout: lockTimeout)
        defer { close(lock) }
        return try recover(store: store, root: root)
    }

    /// Recovery of an interrupted transaction, under the lock.
    static func recover(store: StateStore, root: SafeTree) throws -> String? {
        guard let journal = try store.journal() else { return nil }
        switch journal.state {
        case .committed:
            try finish(store: store, journal: journal)
            return "completed the interrupted upgrade to \(journal.toVersion)"
        case .prepared:
            let staging = try store.tree.subdirectory("staging", create: true)
            let backup = try store.tree.subdirectory("state/\(journal.transaction)/undo", create: true)
            do {
                try TransactionDriver(root: root, staging: staging, backup: backup).rollback(journal)
            } catch let error as TransactionAbandoned {
                throw error
            } catch let error as ApplyError {
                throw error
            } catch {
                throw ApplyError.manualIntervention(
                    "rolling back the interrupted upgrade to \(journal.toVersion) failed: \(error)"
                )
            }
            try discard(store: store, id: journal.transaction)
            // The restored release's post-install, as after any rollback.
            runRestoredPostInstall(store: store, root: root, failed: journal.toVersion, timeout: 300)
            let outcome = "rolled back the interrupted upgrade to \(journal.toVersion)"
            try store.write(
                "last-result.json",
                encode(
                    InstallReport(
                        result: .recovered,
                        product: journal.product,
                        fromVersion: journal.toVersion,
                        toVersion: journal.fromVersion,
                        recovered: outcome
                    )
                )
            )
            return outcome
        }
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

/// Runs the release's hooks with the context they need.
struct HookContext {
    let root: SafeTree
    let store: StateStore
    let staging: SafeTree
    let plan: Plan
    let target: Manifest
    let header: ReleaseHeader
    let fromVersion: String?
    let id: String

    func run(_ kind: Hooks.Kind, timeout: Double) throws {
        guard let script = target.hooks.scripts[kind] else { return }
        // Before the commit the new script may only exist in staging.
        var executable = root.display + "/" + script
        if kind == .preInstall,
            let position = plan.operations.firstIndex(where: {
                $0.path == script && ($0.name == "add" || $0.name == "replace")
            })
        {
            executable = staging.display + "/s\(position)"
        }
        let environment = [
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "UPGRADE_ROOT": root.display, "UPGRADE_PHASE": kind.description, "UPGRADE_PRODUCT": header.product,
            "UPGRADE_FROM_VERSION": fromVersion ?? "", "UPGRADE_TO_VERSION": header.version,
        ]
        let log = store.path + "/state/\(id)/\(kind).log"
        let (outcome, output) = HookRunner(timeout: timeout).run(
            executable,
            environment: environment,
            directory: root.display,
            logPath: log
        )
        if case .failed(let reason) = outcome {
            throw ApplyError.rolledBack(hook: kind, reason: reason, output: output)
        }
    }
}
