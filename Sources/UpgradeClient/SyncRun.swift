import Foundation
import UpgradeApply
import UpgradeCore
import UpgradePeer
import UpgradeProtocol
import UpgradeTrust

/// One sync of one root, as a value: the options (with the trust this run advanced to), the
/// peers, the locked session, the tree as scanned once, and the report so far.
///
/// An online run (``SyncClient`` `run`) asks the server and an offline one (`runOffline`) asks
/// the peers which release to install; from the signed release on they share one path:
/// ``check(header:manifest:plan:revert:)`` (the plan against the tree, before a byte is
/// fetched), ``dryRun(_:)``, ``requireSpace(_:downloading:)``, the fetch,
/// ``install(_:payloads:)`` and ``outcome(_:)`` (the fleet report).
struct SyncRun {
    /// The options, with the trust this run advanced to.
    var options: SyncOptions
    let peers: PeerContext
    /// The root, locked for the whole run, any interrupted transaction recovered.
    let session: RootSession
    /// Peers heard while the tree is scanned and the server asked.
    let discovery: Task<[DiscoveredPeer], any Error>?
    let started: Date
    let device: PlanRequest.Device
    /// The installed release, as the run last read it (its manifest is read only when needed:
    /// ``installedManifest``).
    var installed: (headerBytes: [UInt8], header: ReleaseHeader)?
    /// The tree, scanned once: the plan request, the plan check and the install all use it.
    /// Nil while a sealed tree has not needed a scan (``ask(transport:logger:)``).
    var scanned: Manifest?
    var report: SyncReport

    /// The tree as scanned. A run scans at the start, or, when the tree is sealed, in
    /// ``ask(transport:logger:)`` before any offer is checked: nothing after the ask runs
    /// without it.
    var local: Manifest {
        guard let scanned else { preconditionFailure("the tree is used before it was scanned") }
        return scanned
    }

    /// Opens the root (lock, recovery), starts listening for peers, and scans the tree; with
    /// `sealed`, a tree whose seal is recorded is not scanned yet (the ask decides).
    init(_ options: SyncOptions, peers: PeerContext, started: Date, sealed: Bool = false) async throws {
        session = try RootSession(
            root: options.root,
            stateDirectoryName: options.stateDirectoryName,
            lockTimeout: options.lockTimeout
        )
        discovery = peers.startDiscovery(options)
        scanned = sealed && session.hasSeal ? nil : try await session.scan()
        self.options = options
        self.peers = peers
        self.started = started
        device = SyncClient.thisDevice(options)
        installed = session.installedHeader
        report = SyncReport(
            result: .upToDate,
            product: options.product,
            fromVersion: installed?.header.version,
            recovered: session.recovered
        )
    }

    /// The installed release's manifest (read once, then kept by the state store).
    var installedManifest: Manifest? { session.installed?.manifest }

    /// The report as it stands, with the run's duration.
    func finished() -> SyncReport {
        var report = report
        report.durationSeconds = Date().timeIntervalSince(started)
        return report
    }

    /// A release checked against the tree before a byte is fetched.
    struct Checked {
        /// What the engine installs (its payloads are filled in once fetched).
        var install: InstallRequest
        /// The plan with the release's path policy and the machine's keep patterns applied:
        /// what is fetched and installed.
        var plan: Plan
        /// The distinct payloads the plan needs.
        var needed: [FileContent]
        /// The dry run's report: the operations and the local changes.
        var dry: InstallReport
    }

    /// Checks `plan` towards the signed release (`header`, `manifest`) against the tree as
    /// scanned; `revert` lets a signed revert install an older release.
    mutating func check(header: [UInt8], manifest: [UInt8], plan: Plan, revert: Bool = false) throws -> Checked {
        var install = SyncClient.installRequest(
            options,
            session: session,
            header: header,
            manifest: manifest,
            plan: plan
        )
        if revert { install.allowDowngrade = true }
        // One scan per run: the plan check and the install use the tree scanned at the start
        // (the session's lock is held throughout), and the install reuses the check.
        install.scanned = local
        install.keep = options.keep
        let (dry, checkedPlan) = try SyncClient.checkPlan(install, session: session)
        let plan = checkedPlan ?? plan
        report.summary = plan.summary
        report.localChanges = dry.localChanges
        return Checked(install: install, plan: plan, needed: SyncClient.neededObjects(plan), dry: dry)
    }

    /// A dry run ends after the check: what would be done, nothing fetched.
    func dryRun(_ checked: Checked) -> SyncReport {
        var report = finished()
        report.result = .dryRun
        report.operations = checked.dry.operations
        return report
    }

    /// Refuses (exit 7) before the first payload request unless the root's filesystem has room.
    func requireSpace(_ checked: Checked, downloading: UInt64) throws {
        try SyncClient.requireSpace(session: session, plan: checked.plan, downloading: downloading)
    }

    /// Installs what was checked with the payloads this run fetched: the run's result,
    /// or why it failed (returned, so the fleet report goes out either way).
    mutating func install(
        _ checked: Checked,
        payloads: DownloadedObjects
    ) -> Result<RunResult, any Error> {
        var install = checked.install
        install.payloads = payloads
        do {
            let installed = try session.install(install)
            report.localChanges = installed.localChanges
            // Different from the release only where the policy keeps the tree as it is.
            return .success(installed.result == .nothingToDo ? .upToDate : installed.result)
        } catch {
            return .failure(error)
        }
    }

    /// The fleet report of this run, ending with `result`.
    func outcome(_ result: Result<RunResult, any Error>) -> SyncOutcome {
        let said: String
        switch result {
        case .success(let result): said = result.rawValue
        case .failure(let error): said = SyncClient.failed(error)
        }
        return SyncClient.outcome(
            options: options,
            device: device,
            report: report,
            result: said,
            releaseDigest: session.installedDigest
        )
    }
}
