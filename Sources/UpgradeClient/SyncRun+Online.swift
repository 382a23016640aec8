import Crypto
import Foundation
import Logging
import UpgradeApply
import UpgradeCore
import UpgradeProtocol
import UpgradeScan
import UpgradeTrust

/// The online run's own steps: trust, ask, verify the offer, fetch (peers, deltas, objects),
/// install and report to the server.
extension SyncRun {
    /// What the server offered, verified: the signed channel record and the header it names,
    /// and the plan towards it.
    struct Offer {
        let response: PlanResponse
        let record: ChannelRecord
        let headerBytes: [UInt8]
        let header: ReleaseHeader
        /// SHA-256 hex of the signed header: the release's identity (peers, failure memory).
        let digest: String
        /// The channel's sequence floor before this run.
        let floor: UInt64
        var plan: Plan
    }

    /// The root of trust first (a rotation applies to everything this run verifies); then a
    /// release on probation that nobody confirmed in time goes, and is not tried again.
    mutating func advanceTrust(transport: HTTPTransport) async throws {
        let anchor = options
        options.trusted = try await session.advanceTrust(anchor: anchor.trusted, now: anchor.now) { version in
            try await SyncClient.fetchRoot(version, options: anchor, transport: transport)
        }
        let probationNote = try SyncClient.expireProbation(session: session, now: options.now)
        if probationNote != nil { scanned = try await session.scan() }
        installed = session.installedHeader
        report.fromVersion = installed?.header.version
        report.recovered = [session.recovered, probationNote].compactMap { $0 }.joined(separator: "; ")
        if report.recovered?.isEmpty == true { report.recovered = nil }
    }

    /// Asks for a plan: the installed release's changes only, when there is one. Nil when the
    /// server's auto-halt holds the release (the report says so; nothing is fetched).
    ///
    /// A sealed tree (not scanned yet) asks as an unchanged one, then proves it: when the
    /// server offers the installed version, by the seal alone (a walk of `stat` calls, no stat
    /// cache, no manifest: the cron no-op); otherwise, or when the seal no longer holds, by a
    /// full scan, asking again when the tree did change.
    mutating func ask(transport: HTTPTransport, logger: Logger) async throws -> PlanResponse? {
        var base: ReleaseHeader?
        if let installed, installed.header.product == options.product { base = installed.header }
        if scanned == nil, base == nil { scanned = try await session.scan() }
        let sealed = scanned == nil
        guard var (response, request) = try await askOnce(base: base, transport: transport, logger: logger) else {
            return nil
        }
        if sealed {
            let unchanged = response.version == base?.version ? await session.sealHolds() : false
            if !unchanged {
                scanned = try await session.scan()
                if let base, delta(base: base.manifestSHA256)?.isEmpty != true {
                    guard let again = try await askOnce(base: base, transport: transport, logger: logger) else {
                        return nil
                    }
                    (response, request) = again
                }
            }
        }
        // The server answered: what earlier runs could not report goes now, whatever this run
        // turns out to be (up to date, held and skipped runs send no report of their own).
        await SyncClient.sendQueuedReports(session: session, options: options, transport: transport, logger: logger)
        report.requestBytes = request.bytes
        report.planBytes = request.planBytes
        return response
    }

    /// One plan request: the delta from `base` (empty while the tree is sealed and not
    /// scanned), or the whole tree when there is no base or the server does not know it. Nil
    /// when the release is halted (the report says so).
    private mutating func askOnce(
        base: ReleaseHeader?,
        transport: HTTPTransport,
        logger: Logger
    ) async throws -> (PlanResponse, (bytes: Int, planBytes: Int))? {
        var request = PlanRequest(product: options.product, channel: options.channel, installed: nil, device: device)
        request.accepts = ["inline-plan", "local-plan"]
        request.version = options.targetVersion
        if let base,
            let delta = scanned == nil
                ? ManifestDelta(base: base.manifestSHA256, changed: [], removed: [])
                : delta(base: base.manifestSHA256)
        {
            request.installed = .init(
                version: base.version,
                sequence: base.sequence,
                manifestSHA256: base.manifestSHA256
            )
            request.delta = delta
        } else {
            request.manifest = Data(local.canonicalEncoding()).base64EncodedString()
        }
        // Bounds the plan response; a sealed tree has the installed release's entries.
        let localEntries = scanned?.entries.count ?? base?.entries ?? 0
        var (response, requestBytes, planResponseBytes): (PlanResponse?, Int, Int)
        do {
            (response, requestBytes, planResponseBytes) = try await SyncClient.askForPlan(
                request,
                localEntries: localEntries,
                options: options,
                transport: transport
            )
            if response == nil {
                // The server does not know our base release: send the whole tree.
                if scanned == nil { scanned = try await session.scan() }
                request.delta = nil
                request.manifest = Data(local.canonicalEncoding()).base64EncodedString()
                (response, requestBytes, planResponseBytes) = try await SyncClient.askForPlan(
                    request,
                    localEntries: local.entries.count,
                    options: options,
                    transport: transport
                )
            }
        } catch let halted as ReleaseHalted {
            report.result = .held
            report.reason = halted.reason
            report.toVersion = installed?.header.version
            await SyncClient.sendQueuedReports(session: session, options: options, transport: transport, logger: logger)
            return nil
        }
        guard let response else { throw SyncError.server(status: 409, message: "the server refused the manifest") }
        return (response, (requestBytes, planResponseBytes))
    }

    /// The tree's changes from the installed release (`base`, its signed manifest digest). When
    /// the scan's fingerprint is the one recorded for the installed manifest there are none, and
    /// the manifest is not read at all; otherwise the delta is computed from it and its
    /// fingerprint recorded for the next run. A tree found unchanged gets its seal recorded.
    /// Nil when the installed manifest cannot be read (the whole tree is sent instead).
    private func delta(base: String) -> ManifestDelta? {
        if let recorded = session.installedFingerprint, recorded == local.scanFingerprint {
            if !options.dryRun { session.recordSeal() }
            return ManifestDelta(base: base, changed: [], removed: [])
        }
        guard let manifest = installedManifest else { return nil }
        // The installed manifest matched the signed digest when it was installed.
        let delta = ManifestDelta(from: manifest, to: local, baseDigest: base)
        if !options.dryRun {
            session.recordFingerprint()
            if delta.isEmpty { session.recordSeal() }
        }
        return delta
    }

    /// Verifies what is signed (the channel record, then the header it names) and decides: nil
    /// when the run ends here (held by the signed rollout rules, skipped as failed before, or up
    /// to date), else the offer with its plan.
    mutating func verify(_ response: PlanResponse) throws -> Offer? {
        let floor = session.channelFloor(SyncClient.channelKey(options), root: options.trusted.root)
        let (record, headerBytes, header) = try SyncClient.verifySigned(response, options: options, session: session)
        if let mismatch = header.platformMismatch() { throw SyncError.wrongPlatform(mismatch) }
        let digest = SHA256Hash(bytes: Array(SHA256.hash(data: headerBytes)))!.hex
        report.toVersion = header.version
        // The signed rollout rules, checked here: a server or mirror cannot push past them.
        if options.targetVersion == nil,
            let stop = SyncClient.rolloutStop(
                record,
                device: device,
                options: options,
                installed: installed?.header.version
            )
        {
            report.result = .held
            report.reason = stop.why
            report.pinnedVersion = stop.pin
            report.toVersion = installed?.header.version
            return nil
        }
        // A release that failed here before is not tried again until a newer one appears.
        if !options.retryFailed, installed?.header.manifestSHA256 != header.manifestSHA256,
            let failure = FailedRelease(session.value(FailedRelease.key(digest)))
        {
            report.result = .skipped
            report.reason =
                "\(header.version) failed here on \(failure.at) (\(failure.reason)); skipped until a newer release appears or --retry-failed"
            report.toVersion = installed?.header.version
            return nil
        }
        let plan: Plan
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
                SyncClient.channelKey(options),
                sequence: record.sequence,
                signers: SyncClient.channelSigners(SyncClient.channelBytesOf(response), trusted: options.trusted)
            )
            return nil
        }
        return Offer(
            response: response,
            record: record,
            headerBytes: headerBytes,
            header: header,
            digest: digest,
            floor: floor,
            plan: plan
        )
    }

    /// The signed manifest (from the mirror when there is one), a first install's plan computed
    /// from it, and the check against the tree.
    mutating func check(_ offer: Offer, transport: HTTPTransport) async throws -> Checked {
        // A sealed tree proved unchanged, so the plan stands; the check needs its entries.
        if scanned == nil { scanned = try await session.scan() }
        let base = installed.flatMap { installed in
            installedManifest.map { (installed.header.manifestSHA256, $0.canonicalEncoding()) }
        }
        let (manifestBytes, manifestForm, manifestReceived) = try await SyncClient.fetchManifest(
            offer.response.manifestPath,
            header: offer.header,
            base: base,
            options: options,
            transport: transport
        )
        report.manifestForm = manifestForm
        report.manifestBytes = manifestReceived
        var plan = offer.plan
        if offer.response.localPlan == true {
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
        // A newer record of this channel naming an older release is the publisher's signed revert.
        var revert = false
        if options.targetVersion == nil, offer.floor > 0, offer.record.sequence > offer.floor, let installed,
            offer.header.sequence < installed.header.sequence
        {
            revert = true
        }
        return try check(header: offer.headerBytes, manifest: manifestBytes, plan: plan, revert: revert)
    }

    /// Fetches the payloads into the run's downloads directory: from peers that hold the target
    /// release first (LAN bytes spare the uplink), then deltas, then whole objects from the
    /// mirror or server. Returns the delta bases used. Nil for a dry run (the report is final).
    mutating func fetch(
        _ checked: Checked,
        offer: Offer,
        transport: HTTPTransport
    ) async throws -> DownloadedObjects? {
        let response = offer.response
        let needed = checked.needed
        let downloads = try session.directory("downloads")
        // Deltas whose base is, per the scan, exactly the content the server diffed against.
        let (deltas, transfers, skipped) = SyncClient.usableDeltas(plan: checked.plan, local: local, response: response)
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
        if options.dryRun { return nil }
        try requireSpace(checked, downloading: report.bytesToDownload)

        let found = try await discovery?.value ?? []
        let releases = await SyncClient.checkPeers(
            found,
            options: options,
            transport: peers.transport,
            board: peers.board
        )
        peers.board.ignore(releases, except: offer.digest)
        let fromPeers = await SyncClient.fetchFromPeers(
            needed,
            sources: releases[offer.digest]?.sources ?? [],
            into: downloads,
            options: options,
            transport: peers.transport,
            board: peers.board
        )
        let sizes = Dictionary(needed.map { ($0.sha256!, $0.size) }, uniquingKeysWith: { first, _ in first })
        for (index, file) in report.files.enumerated() {
            if let sha = SHA256Hash(hex: file.sha256), fromPeers.contains(sha) {
                report.files[index].transfer = .wholeFromPeer
                report.files[index].bytes = sizes[sha] ?? file.bytes
            }
        }
        let held = HeldPayloads()
        let viaDelta: (applied: [SHA256Hash: String], bytes: UInt64, fallbacks: [String])
        let fetched: (bytes: UInt64, objects: Int, resumed: Int)
        do {
            viaDelta = try await SyncClient.fetchDeltas(
                deltas.filter { !fromPeers.contains($0.key) },
                sizes: sizes,
                into: downloads,
                root: session.root,
                held: held,
                options: options,
                transport: transport
            )
            fetched = try await SyncClient.fetchObjects(
                needed.filter { viaDelta.applied[$0.sha256!] == nil && !fromPeers.contains($0.sha256!) },
                into: downloads,
                held: held,
                response: response,
                options: options,
                transport: transport
            )
        } catch SyncError.noSpace(let why) {
            // Nothing partial is left to fill the disk further; the next run starts afresh.
            SyncClient.removeDownloads(needed, from: downloads, partial: true)
            throw SyncError.noSpace(why)
        }
        report.fallbacks += viaDelta.fallbacks
        report.deltasUsed = viaDelta.applied.count
        for (index, file) in report.files.enumerated() where file.transfer.isDelta {
            if let sha = SHA256Hash(hex: file.sha256), viaDelta.applied[sha] == nil {
                report.files[index].transfer = .wholeAfterFailedDelta
                report.files[index].bytes = response.objects[sha.hex] ?? 0
            }
        }
        report.bytesDownloaded = fetched.bytes + viaDelta.bytes + peers.bytes
        report.bytesFromPeers = peers.bytes
        report.objectsFromPeers = fromPeers.count
        report.objectsDownloaded = fetched.objects
        report.resumedDownloads = fetched.resumed
        return DownloadedObjects(directory: downloads, root: session.root, deltaBases: viaDelta.applied, held: held)
    }

    /// Installs, moves the channel floor, starts probation when asked, remembers a release whose
    /// hooks failed, and reports to the server; the report, or the install's error.
    mutating func install(
        _ checked: Checked,
        offer: Offer,
        fetched: DownloadedObjects,
        transport: HTTPTransport,
        logger: Logger
    ) async throws -> SyncReport {
        var outcome = install(checked, payloads: fetched)
        if case .success(let result) = outcome {
            do {
                try session.setChannelFloor(
                    SyncClient.channelKey(options),
                    sequence: offer.record.sequence,
                    signers: SyncClient.channelSigners(
                        SyncClient.channelBytesOf(offer.response),
                        trusted: options.trusted
                    )
                )
                SyncClient.removeDownloads(
                    checked.needed.filter { !fetched.held.holds($0.sha256!) },
                    from: fetched.directory
                )
                if result == .installed, let seconds = options.confirmWithin {
                    try session.startProbation(deadline: options.now + Int64(seconds.rounded(.up)))
                }
            } catch {
                outcome = .failure(error)
            }
        }
        if case .failure(ApplyError.rolledBack(let hook, let why, _)) = outcome {
            // Remembered, so the next cron run does not download, install and roll back again.
            try? session.setValue(
                FailedRelease.key(offer.digest),
                FailedRelease(
                    version: offer.header.version,
                    at: Timestamps.iso(options.now),
                    reason: "\(hook) failed: \(why)"
                )
                .encoded
            )
        }
        report.durationSeconds = Date().timeIntervalSince(started)
        report.peers = peers.board.outcomes
        await SyncClient.deliverReport(
            self.outcome(outcome),
            session: session,
            options: options,
            transport: transport,
            logger: logger
        )
        report.result = try outcome.get()
        return report
    }
}
