internal import CUpgradeSys
import Foundation
import UpgradeCore
import UpgradeScan
import UpgradeSystem
import UpgradeTrust

#if canImport(Glibc)
import Glibc
#endif

/// The transactional apply engine (see docs/design.md, "Apply engine").
public enum Installer {
    // MARK: Install

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
                throw ApplyError.downgrade(Downgrade(offered: header, installed: installedHeader))
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
        let plan = request.planFromTree ? Plan(from: local, to: target) : request.plan
        let outcome = plan.respecting(
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

    /// Blocks until the scan is done: for engine code that is not async. An async caller uses
    /// ``RootSession/scan(options:)`` and keeps the thread it would block for the walk.
    static func scan(root: String, store: StateStore, options: ScanOptions) throws -> Manifest {
        let frozen = scanOptions(options, store: store)
        let cache = store.path + "/statcache"
        let result = try runBlocking { try await TreeSource.scan(root, options: frozen, cache: .file(cache)) }
        return result.manifest
    }

    /// `options` with the state directory excluded.
    static func scanOptions(_ options: ScanOptions, store: StateStore) -> ScanOptions {
        var scanOptions = options
        scanOptions.excluded = [String(store.path.split(separator: "/").last ?? ".upgrade")]
        return scanOptions
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
