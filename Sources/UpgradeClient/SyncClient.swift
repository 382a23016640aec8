import Crypto
import Foundation
public import Logging
import NIOHTTP1
import Synchronization
import UpgradeApply
import UpgradeCore
import UpgradePeer
import UpgradeProtocol
import UpgradeTrust
import UpgradeZstd

#if canImport(Glibc)
import Glibc
#endif

/// `upgrade sync`: recover, lock, scan, ask, verify, fetch, install, report.
public enum SyncClient {
    public static func sync(_ options: SyncOptions, logger: Logger) async throws -> SyncReport {
        // Cron: only inside the maintenance window, and not all machines at the same second.
        if let window = options.window, !window.contains(Date()) {
            var report = SyncReport(result: .held, product: options.product)
            report.reason = "outside the maintenance window \(window)"
            return report
        }
        if options.randomDelay > 0 {
            try await Task.sleep(for: .milliseconds(Int64(Double.random(in: 0...options.randomDelay) * 1000)))
        }
        let started = Date()
        return try await withTransports(options) { transport, peers in
            var report =
                options.offline
                ? try await runOffline(options, peers: peers, started: started)
                : try await run(options, transport: transport, peers: peers, logger: logger, started: started)
            // A signed pin: the pinned release, older or newer, as if asked for with --version.
            if let pin = report.pinnedVersion, !options.offline, options.targetVersion == nil {
                var pinned = options
                pinned.targetVersion = pin
                pinned.allowDowngrade = true
                report = try await run(pinned, transport: transport, peers: peers, logger: logger, started: started)
                report.pinnedVersion = pin
            }
            report.bytesReceived = transport.bytesReceived + peers.transport.bytesReceived
            report.peers = peers.board.outcomes
            return report
        }
    }

    /// Runs `body` with the server transport and the peer context, and shuts both clients down
    /// whether it returns or throws (AsyncHTTPClient's `withHTTPClient` shape).
    /// (The transports' byte counters are copyable lock boxes; see `HTTPTransport.received` for
    /// the Swift 6.3.1 optimizer crash a `Mutex` there caused.)
    private static func withTransports<T>(
        _ options: SyncOptions,
        _ body: (HTTPTransport, PeerContext) async throws -> T
    ) async throws -> T {
        let limits = TransferLimits(
            minimumRate: options.minimumRate,
            window: options.rateWindow,
            deadline: options.timeout.map { ContinuousClock.now + .milliseconds(Int64($0 * 1000)) }
        )
        let transport = try HTTPTransport(
            caCertificate: options.caCertificate,
            readTimeout: options.readTimeout,
            attempts: options.attempts,
            limits: limits,
            proxy: options.proxy.configuration(for: options.mirror ?? options.server)
        )
        // Peers get one attempt each and a short fuse: a slow peer is dropped, not waited for.
        let peers: HTTPTransport
        do {
            peers = try HTTPTransport(
                caCertificate: nil,
                readTimeout: options.peerTimeout,
                attempts: 1,
                connectTimeout: min(options.peerTimeout, 3),
                limits: limits
            )
        } catch {
            await transport.shutdown()
            throw error
        }
        let result: Result<T, any Error>
        do {
            result = .success(try await body(transport, PeerContext(transport: peers, board: PeerBoard())))
        } catch {
            result = .failure(error)
        }
        await transport.shutdown()
        await peers.shutdown()
        return try result.get()
    }

    private static func run(
        _ options: SyncOptions,
        transport: HTTPTransport,
        peers: PeerContext,
        logger: Logger,
        started: Date
    ) async throws -> SyncReport {
        // Peers are heard while the tree is scanned and the server asked.
        let (session, discovery, scanned) = try openRoot(options, peers: peers)
        var local = scanned
        // The root of trust first: a rotation applies to everything this run verifies.
        var options = options
        let anchor = options
        options.trusted = try await session.advanceTrust(anchor: anchor.trusted, now: anchor.now) { version in
            try await fetchRoot(version, options: anchor, transport: transport)
        }
        // A release on probation that nobody confirmed in time goes, and is not tried again.
        let probationNote = try expireProbation(session: session, now: options.now)
        if probationNote != nil { local = try session.scan() }
        let installed = session.installed
        let device = thisDevice(options)
        var report = SyncReport(
            result: .upToDate,
            product: options.product,
            fromVersion: installed?.header.version,
            recovered: [session.recovered, probationNote].compactMap { $0 }.joined(separator: "; ")
        )
        if report.recovered?.isEmpty == true { report.recovered = nil }

        // Ask: the installed release's changes only, when there is one.
        var request = PlanRequest(product: options.product, channel: options.channel, installed: nil, device: device)
        request.accepts = ["inline-plan", "local-plan"]
        request.version = options.targetVersion
        if let installed, installed.header.product == options.product {
            request.installed = .init(
                version: installed.header.version,
                sequence: installed.header.sequence,
                manifestSHA256: installed.header.manifestSHA256
            )
            // The installed manifest matched the signed digest when it was installed.
            request.delta = ManifestDelta(
                from: installed.manifest,
                to: local,
                baseDigest: installed.header.manifestSHA256
            )
        } else {
            request.manifest = Data(local.canonicalEncoding()).base64EncodedString()
        }
        var (response, requestBytes, planResponseBytes): (PlanResponse?, Int, Int)
        do {
            (response, requestBytes, planResponseBytes) = try await askForPlan(
                request,
                localEntries: local.entries.count,
                options: options,
                transport: transport
            )
            if response == nil {
                // The server does not know our base release: send the whole tree.
                request.delta = nil
                request.manifest = Data(local.canonicalEncoding()).base64EncodedString()
                (response, requestBytes, planResponseBytes) = try await askForPlan(
                    request,
                    localEntries: local.entries.count,
                    options: options,
                    transport: transport
                )
            }
        } catch let halted as ReleaseHalted {
            // The server's auto-halt: it does not offer the release; nothing is fetched.
            report.result = .held
            report.reason = halted.reason
            report.toVersion = installed?.header.version
            report.durationSeconds = Date().timeIntervalSince(started)
            await sendQueuedReports(session: session, options: options, transport: transport, logger: logger)
            return report
        }
        guard let response else { throw SyncError.server(status: 409, message: "the server refused the manifest") }
        // The server answered: what earlier runs could not report goes now, whatever this run
        // turns out to be (up to date, held and skipped runs send no report of their own).
        await sendQueuedReports(session: session, options: options, transport: transport, logger: logger)
        report.requestBytes = requestBytes
        report.planBytes = planResponseBytes

        // Verify what is signed: the channel record, then the header it names.
        let floor = session.channelFloor(channelKey(options), root: options.trusted.root)
        let (record, headerBytes, header) = try verifySigned(response, options: options, session: session)
        if let mismatch = header.platformMismatch() { throw SyncError.refused(mismatch) }
        let targetDigest = SHA256Hash(bytes: Array(SHA256.hash(data: headerBytes)))!.hex
        report.toVersion = header.version
        // The signed rollout rules, checked here: a server or mirror cannot push past them.
        if options.targetVersion == nil,
            let stop = rolloutStop(record, device: device, options: options, installed: installed?.header.version)
        {
            report.result = .held
            report.reason = stop.why
            report.pinnedVersion = stop.pin
            report.toVersion = installed?.header.version
            report.durationSeconds = Date().timeIntervalSince(started)
            return report
        }
        // A release that failed here before is not tried again until a newer one appears.
        if !options.retryFailed, installed?.header.manifestSHA256 != header.manifestSHA256,
            let failure = FailedRelease(session.value(FailedRelease.key(targetDigest)))
        {
            report.result = .skipped
            report.reason =
                "\(header.version) failed here on \(failure.at) (\(failure.reason)); skipped until a newer release appears or --retry-failed"
            report.toVersion = installed?.header.version
            report.durationSeconds = Date().timeIntervalSince(started)
            return report
        }
        var plan: Plan
        do {
            if let document = response.planJSON {
                plan = try Plan(document: document)
            } else {
                guard let planBytes = Data(base64Encoded: response.plan) else {
                    throw SyncError.verification("plan is not base64")
                }
                plan = try Plan(json: planBytes)
            }
        } catch let error as PlanDecodingError {
            throw ApplyError.unsafePlan("the server's \(error)")
        }
        report.summary = plan.summary
        if plan.isEmpty && installed?.header.manifestSHA256 == header.manifestSHA256 {
            try session.setChannelFloor(
                channelKey(options),
                sequence: record.sequence,
                signers: channelSigners(channelBytesOf(response), trusted: options.trusted)
            )
            report.durationSeconds = Date().timeIntervalSince(started)
            return report
        }

        // The signed manifest, from the mirror when there is one.
        let base = installed.map { ($0.header.manifestSHA256, $0.manifest.canonicalEncoding()) }
        let (manifestBytes, manifestForm, manifestReceived) = try await fetchManifest(
            response.manifestPath,
            header: header,
            base: base,
            options: options,
            transport: transport
        )
        report.manifestForm = manifestForm
        report.manifestBytes = manifestReceived
        if response.localPlan == true {
            // A first install: the plan from the signed manifest, computed here.
            guard local.entries.isEmpty else {
                throw SyncError.verification("the server sent no plan for a tree that is not empty")
            }
            do {
                plan = Plan(from: local, to: try Manifest(canonical: manifestBytes))
            } catch {
                throw SyncError.verification("the signed manifest does not decode: \(error)")
            }
            report.summary = plan.summary
        }
        var install = installRequest(
            options,
            session: session,
            header: headerBytes,
            manifest: manifestBytes,
            plan: plan
        )
        // A newer record of this channel naming an older release is the publisher's signed revert.
        if options.targetVersion == nil, floor > 0, record.sequence > floor, let installed,
            header.sequence < installed.header.sequence
        {
            install.allowDowngrade = true
        }
        // One scan per run: the plan check and the install use the tree scanned at the start
        // (the session's lock is held throughout), and the install reuses the check.
        install.scanned = local
        install.keep = options.keep
        // The plan checked against the tree before a byte is fetched, with the release's path
        // policy and the machine's keep patterns applied: what is fetched and installed.
        let (dry, checkedPlan) = try checkPlan(install, session: session)
        plan = checkedPlan ?? plan
        report.summary = plan.summary
        report.localChanges = dry.localChanges

        let needed = neededObjects(plan)
        let downloads = try session.directory("downloads")
        // Deltas whose base is, per the scan, exactly the content the server diffed against.
        let (deltas, transfers, skipped) = usableDeltas(plan: plan, local: local, response: response)
        report.files = transfers
        report.fallbacks = skipped
        report.bytesToDownload = needed.reduce(0) { total, content in
            let sha = content.sha256!
            if FileManager.default.fileExists(atPath: downloads + "/" + sha.hex) { return total }
            if deltas[sha] != nil, FileManager.default.fileExists(atPath: downloads + "/" + sha.hex + ".delta") {
                return total
            }
            return total + (deltas[sha]?.size ?? response.objects[sha.hex] ?? content.size)
        }
        if options.dryRun {
            report.result = .dryRun
            report.operations = dry.operations
            report.durationSeconds = Date().timeIntervalSince(started)
            return report
        }
        try requireSpace(session: session, plan: plan, downloading: report.bytesToDownload)

        // Payloads from peers that hold the target release first (LAN bytes spare the uplink);
        // whatever they do not deliver comes from the mirror or server below.
        let found = try await discovery?.value ?? []
        let releases = await checkPeers(found, options: options, transport: peers.transport, board: peers.board)
        for (digest, release) in releases where digest != targetDigest {
            for source in release.sources {
                peers.board.note(
                    source.url,
                    version: release.header.version,
                    status: "ignored: holds \(release.header.version), not the target"
                )
            }
        }
        let fromPeers = await fetchFromPeers(
            needed,
            sources: releases[targetDigest]?.sources ?? [],
            into: downloads,
            options: options,
            transport: peers.transport,
            board: peers.board
        )
        let sizes = Dictionary(needed.map { ($0.sha256!, $0.size) }, uniquingKeysWith: { first, _ in first })
        for (index, file) in report.files.enumerated() {
            if let sha = SHA256Hash(hex: file.sha256), fromPeers.contains(sha) {
                report.files[index].transfer = "whole from a peer"
                report.files[index].bytes = sizes[sha] ?? file.bytes
            }
        }
        let viaDelta: (applied: [SHA256Hash: String], bytes: UInt64, fallbacks: [String])
        let fetched: (bytes: UInt64, objects: Int, resumed: Int)
        do {
            viaDelta = try await fetchDeltas(
                deltas.filter { !fromPeers.contains($0.key) },
                sizes: sizes,
                into: downloads,
                root: session.root,
                options: options,
                transport: transport
            )
            fetched = try await fetchObjects(
                needed.filter { viaDelta.applied[$0.sha256!] == nil && !fromPeers.contains($0.sha256!) },
                into: downloads,
                response: response,
                options: options,
                transport: transport
            )
        } catch SyncError.noSpace(let why) {
            // Nothing partial is left to fill the disk further; the next run starts afresh.
            removeDownloads(needed, from: downloads, partial: true)
            throw SyncError.noSpace(why)
        }
        report.fallbacks += viaDelta.fallbacks
        report.deltasUsed = viaDelta.applied.count
        for (index, file) in report.files.enumerated() where file.transfer.hasPrefix("delta") {
            if let sha = SHA256Hash(hex: file.sha256), viaDelta.applied[sha] == nil {
                report.files[index].transfer = "whole (delta failed)"
                report.files[index].bytes = response.objects[sha.hex] ?? 0
            }
        }
        report.bytesDownloaded = fetched.bytes + viaDelta.bytes + peers.bytes
        report.bytesFromPeers = peers.bytes
        report.objectsFromPeers = fromPeers.count
        report.objectsDownloaded = fetched.objects
        report.resumedDownloads = fetched.resumed

        install.payloads = DownloadedObjects(directory: downloads, root: session.root, deltaBases: viaDelta.applied)
        let outcome: Result<RunResult, any Error>
        do {
            let installedReport = try session.install(install)
            try session.setChannelFloor(
                channelKey(options),
                sequence: record.sequence,
                signers: channelSigners(channelBytesOf(response), trusted: options.trusted)
            )
            removeDownloads(needed, from: downloads)
            report.localChanges = installedReport.localChanges
            if installedReport.result == .installed, let seconds = options.confirmWithin {
                try session.startProbation(deadline: options.now + Int64(seconds.rounded(.up)))
            }
            // Different from the release only where the policy keeps the tree as it is.
            outcome = .success(installedReport.result == .nothingToDo ? .upToDate : installedReport.result)
        } catch {
            outcome = .failure(error)
            if case ApplyError.rolledBack(let hook, let why, _) = error {
                // Remembered, so the next cron run does not download, install and roll back again.
                try? session.setValue(
                    FailedRelease.key(targetDigest),
                    FailedRelease(
                        version: header.version,
                        at: Timestamps.iso(options.now),
                        reason: "\(hook) failed: \(why)"
                    )
                    .encoded
                )
            }
        }
        report.durationSeconds = Date().timeIntervalSince(started)
        report.peers = peers.board.outcomes
        let said: String
        switch outcome {
        case .success(let result): said = result.rawValue
        case .failure(let error): said = failed(error)
        }
        let outcomeToSend = Self.outcome(
            options: options,
            device: device,
            report: report,
            result: said,
            releaseDigest: session.installedDigest
        )
        await deliverReport(outcomeToSend, session: session, options: options, transport: transport, logger: logger)
        report.result = try outcome.get()
        return report
    }

    // MARK: Steps

    /// Opens the root (lock, recovery), starts listening for peers, and scans the tree.
    static func openRoot(
        _ options: SyncOptions,
        peers: PeerContext
    ) throws -> (RootSession, Task<[DiscoveredPeer], any Error>?, Manifest) {
        let session = try RootSession(
            root: options.root,
            stateDirectoryName: options.stateDirectoryName,
            lockTimeout: options.lockTimeout
        )
        let discovery = peers.startDiscovery(options)
        return (session, discovery, try session.scan())
    }

    /// Removes the downloaded payloads of `needed` (objects, deltas, files from peers).
    /// Removes the downloaded payloads of `needed`, and with `partial` the unfinished ones too.
    static func removeDownloads(_ needed: [FileContent], from directory: String, partial: Bool = false) {
        let suffixes = partial ? ["", ".delta", ".raw", ".part", ".delta.part"] : ["", ".delta", ".raw"]
        for content in needed {
            for suffix in suffixes { unlink(directory + "/" + content.sha256!.hex + suffix) }
        }
        if partial, let names = try? FileManager.default.contentsOfDirectory(atPath: directory) {
            for name in names where name.hasSuffix(".part") { unlink(directory + "/" + name) }
        }
    }

    /// Refuses (exit 7) before the first payload request unless the root's filesystem has room
    /// for the downloads, the staged files and the journal, with a margin (1 MiB and 2%); the
    /// replaced files move to backups by rename, which takes no space.
    static func requireSpace(session: RootSession, plan: Plan, downloading: UInt64) throws {
        let staged = plan.summary.bytesToWrite + UInt64(plan.operations.count) * 4096
        let needed = downloading + staged
        try session.requireFreeSpace(needed + needed / 50 + (1 << 20))
    }

    /// The install request for a verified release; payloads are filled in once fetched.
    static func installRequest(
        _ options: SyncOptions,
        session: RootSession,
        header: [UInt8],
        manifest: [UInt8],
        plan: Plan
    ) -> InstallRequest {
        var install = InstallRequest(
            root: session.root,
            trusted: options.trusted,
            headerBytes: header,
            manifestBytes: manifest,
            plan: plan,
            payloads: NoPayloads()
        )
        install.stateDirectoryName = options.stateDirectoryName
        // A release whose signing keys the root revoked sets no floor.
        install.allowDowngrade = options.allowDowngrade || !session.installedReleaseIsTrusted(by: options.trusted.root)
        install.rollbackPoints = options.rollbackPoints
        install.hookTimeout = options.hookTimeout
        install.healthCheckTimeout = options.healthCheckTimeout
        install.now = options.now
        return install
    }

    /// Verifies the plan against the tree before a byte is fetched: the dry run's report, and the
    /// plan with the path policy applied (nil when nothing was checked, the release being installed).
    static func checkPlan(_ install: InstallRequest, session: RootSession) throws -> (InstallReport, Plan?) {
        var check = install
        check.dryRun = true
        let dry = try session.install(check)
        return (dry, session.checkedPlan)
    }

    /// The distinct payloads a plan needs.
    static func neededObjects(_ plan: Plan) -> [FileContent] {
        var seen = Set<SHA256Hash>()
        var result = [FileContent]()
        for operation in plan.operations {
            switch operation {
            case .add(_, _, let content), .replace(_, _, let content):
                if let sha = content.sha256, seen.insert(sha).inserted { result.append(content) }
            default: break
            }
        }
        return result
    }

    static func channelKey(_ options: SyncOptions) -> String {
        "channel-\(options.product)-\(options.channel).sequence"
    }

    /// The reason in an error response: the server's `{"error":{"message":…}}`, or the start of
    /// the body (control characters replaced, so a hostile body cannot drive the terminal).
    static func message(_ bytes: [UInt8]) -> String {
        struct ErrorBody: Decodable {
            struct Inner: Decodable { var message: String }
            var error: Inner
        }
        let text =
            (try? JSONDecoder().decode(ErrorBody.self, from: Data(bytes.prefix(4096))))?.error.message
            ?? String(decoding: bytes.prefix(300), as: UTF8.self)
        return String(
            text.prefix(300).map { $0.isASCII && ($0.asciiValue! < 0x20 || $0.asciiValue! == 0x7f) ? " " : $0 }
        )
    }
}
