import Crypto
import Foundation
import UpgradeApply
import UpgradeCore
import UpgradePeer
import UpgradeTrust

#if canImport(Glibc)
import Glibc
#endif

extension SyncClient {
    /// `upgrade sync --offline`: no server. The newest release the peers hold (or
    /// `--version`), when a trusted key signed it and it is newer than the installed one; the
    /// plan is computed here from that release's signed manifest, and every payload comes from
    /// the peers and is verified like any other.
    static func runOffline(_ options: SyncOptions, peers: PeerContext, started: Date) async throws -> SyncReport {
        guard options.peers != .off else {
            throw SyncError.network("--offline needs peers (--peers auto or --peers HOST:PORT,...)")
        }
        let (session, discovery, local) = try openRoot(options, peers: peers)
        let installed = session.installed
        var report = SyncReport(
            result: .upToDate,
            product: options.product,
            fromVersion: installed?.header.version,
            recovered: session.recovered
        )
        let found = try await discovery?.value ?? []
        // The root chain the peers verified: a rotation reaches machines without a server too.
        var options = options
        let anchor = options
        options.trusted = try await session.advanceTrust(anchor: anchor.trusted, now: anchor.now) { version in
            await fetchRoot(version, peers: found, transport: peers.transport)
        }
        let releases = await checkPeers(found, options: options, transport: peers.transport, board: peers.board)
        guard !releases.isEmpty else {
            throw SyncError.network(
                "no peer offers a verifiable release of \(options.product) (\(found.count) announced; see the peers in --json)"
            )
        }
        // The target: the version asked for, else the newest that is newer than what is installed.
        let candidates = releases.values.sorted { $0.header.sequence > $1.header.sequence }
        let chosen: PeerRelease?
        if let version = options.targetVersion {
            chosen = candidates.first { $0.header.version == version }
            guard chosen != nil else {
                throw SyncError.network(
                    "no peer offers \(options.product) \(version) (offered: \(candidates.map(\.header.version).joined(separator: ", ")))"
                )
            }
        } else {
            chosen = candidates.first { release in
                installed.map { release.header.sequence > $0.header.sequence } ?? true
            }
        }
        guard let target = chosen else {
            report.durationSeconds = Date().timeIntervalSince(started)
            return report
        }
        report.toVersion = target.header.version
        if let mismatch = target.header.platformMismatch() { throw SyncError.refused(mismatch) }
        for (digest, release) in releases where digest != target.digest {
            for source in release.sources {
                peers.board.note(
                    source.url,
                    version: release.header.version,
                    status: "ignored: holds \(release.header.version), not the target"
                )
            }
        }

        // The signed manifest, from the first peer that serves the bytes the header names.
        var manifestBytes: [UInt8]?
        for source in target.sources where manifestBytes == nil && !peers.board.isDropped(source.url) {
            let url = source.url + PeerWire.releasePath(header: target.digest, file: "manifest")
            do {
                let (status, bytes) = try await peers.transport.fetch(url, limit: target.header.manifestByteLimit)
                guard status == 200,
                    SHA256Hash(bytes: Array(SHA256.hash(data: bytes)))!.hex == target.header.manifestSHA256
                else {
                    peers.board.drop(source.url, "serves a manifest that does not match the signed header")
                    continue
                }
                manifestBytes = bytes
            } catch {
                peers.board.drop(source.url, "stalled or failed (\(error))")
            }
        }
        guard let manifestBytes else {
            throw SyncError.network("no peer served the signed manifest of \(options.product) \(target.header.version)")
        }
        let manifest: Manifest
        do {
            manifest = try Manifest(canonical: manifestBytes)
            try target.header.check(manifest)
        } catch {
            throw SyncError.verification("the manifest of \(target.header.version) from the peers: \(error)")
        }
        var plan = Plan(from: local, to: manifest)
        report.summary = plan.summary
        if plan.isEmpty && installed?.header.manifestSHA256 == target.header.manifestSHA256 {
            report.durationSeconds = Date().timeIntervalSince(started)
            return report
        }

        var install = installRequest(
            options,
            session: session,
            header: target.headerBytes,
            manifest: manifestBytes,
            plan: plan
        )
        install.scanned = local
        install.keep = options.keep
        let (dry, checkedPlan) = try checkPlan(install, session: session)
        plan = checkedPlan ?? plan
        report.summary = plan.summary
        report.localChanges = dry.localChanges
        let needed = neededObjects(plan)
        report.bytesToDownload = needed.reduce(0) { $0 + $1.size }
        report.files = plan.operations.compactMap { operation in
            switch operation {
            case .add(let path, _, let content), .replace(let path, _, let content):
                FileTransfer(
                    path: path,
                    transfer: "whole from a peer",
                    bytes: content.size,
                    sha256: content.sha256?.hex ?? ""
                )
            default: nil
            }
        }
        if options.dryRun {
            report.result = .dryRun
            report.operations = dry.operations
            report.durationSeconds = Date().timeIntervalSince(started)
            return report
        }
        try requireSpace(
            session: session,
            plan: plan,
            downloading: needed.reduce(0) { $0 + $1.size }
        )

        let downloads = try session.directory("downloads")
        let fetched = await fetchFromPeers(
            needed,
            sources: target.sources,
            into: downloads,
            options: options,
            transport: peers.transport,
            board: peers.board
        )
        let missing = needed.filter { !fetched.contains($0.sha256!) }
        guard missing.isEmpty else {
            removeDownloads(needed, from: downloads)
            throw SyncError.network(
                "\(missing.count) of \(needed.count) files of \(target.header.version) could not be fetched from any peer (first: \(missing[0].sha256!.hex.prefix(12))); nothing was changed"
            )
        }
        report.bytesFromPeers = peers.bytes
        report.bytesDownloaded = peers.bytes
        report.objectsFromPeers = fetched.count
        report.objectsDownloaded = fetched.count
        install.payloads = DownloadedObjects(directory: downloads, root: session.root, deltaBases: [:])
        defer { removeDownloads(needed, from: downloads) }
        let result: InstallReport
        do {
            result = try session.install(install)
        } catch {
            report.durationSeconds = Date().timeIntervalSince(started)
            queueOfflineReport(
                report,
                result: failed(error),
                options: options,
                session: session
            )
            throw error
        }
        report.result = result.result == .nothingToDo ? .upToDate : result.result
        report.localChanges = result.localChanges
        report.durationSeconds = Date().timeIntervalSince(started)
        queueOfflineReport(report, result: report.result.rawValue, options: options, session: session)
        return report
    }

    /// An offline run's outcome, kept for the server until the next online sync.
    private static func queueOfflineReport(
        _ report: SyncReport,
        result: String,
        options: SyncOptions,
        session: RootSession
    ) {
        var queued = outcome(
            options: options,
            device: thisDevice(options),
            report: report,
            result: result,
            releaseDigest: session.installedDigest
        )
        queued.via = "offline"
        queueReport(queued, session: session)
    }
}
