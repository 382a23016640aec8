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
        var run = try await SyncRun(options, peers: peers, started: started)
        let found = try await run.discovery?.value ?? []
        // The root chain the peers verified: a rotation reaches machines without a server too.
        let anchor = options
        run.options.trusted = try await run.session.advanceTrust(anchor: anchor.trusted, now: anchor.now) { version in
            await fetchRoot(version, peers: found, transport: peers.transport)
        }
        let options = run.options
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
                run.installed.map { release.header.sequence > $0.header.sequence } ?? true
            }
        }
        guard let target = chosen else { return run.finished() }
        run.report.toVersion = target.header.version
        if let mismatch = target.header.platformMismatch() { throw SyncError.wrongPlatform(mismatch) }
        peers.board.ignore(releases, except: target.digest)

        let manifestBytes = try await manifest(of: target, peers: peers, product: options.product)
        let manifest: Manifest
        do {
            manifest = try Manifest(canonical: manifestBytes)
            try target.header.check(manifest)
        } catch {
            throw SyncError.verification("the manifest of \(target.header.version) from the peers: \(error)")
        }
        let plan = Plan(from: run.local, to: manifest)
        run.report.summary = plan.summary
        if plan.isEmpty && run.installed?.header.manifestSHA256 == target.header.manifestSHA256 {
            return run.finished()
        }

        let checked = try run.check(header: target.headerBytes, manifest: manifestBytes, plan: plan)
        let needed = checked.needed
        run.report.bytesToDownload = needed.reduce(0) { $0 + $1.size }
        run.report.files = checked.plan.operations.compactMap { operation in
            switch operation {
            case .add(let path, _, let content), .replace(let path, _, let content):
                FileTransfer(
                    path: path,
                    transfer: .wholeFromPeer,
                    bytes: content.size,
                    sha256: content.sha256?.hex ?? ""
                )
            default: nil
            }
        }
        if options.dryRun { return run.dryRun(checked) }
        try run.requireSpace(checked, downloading: run.report.bytesToDownload)

        let downloads = try run.session.directory("downloads")
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
        run.report.bytesFromPeers = peers.bytes
        run.report.bytesDownloaded = peers.bytes
        run.report.objectsFromPeers = fetched.count
        run.report.objectsDownloaded = fetched.count
        defer { removeDownloads(needed, from: downloads) }
        let outcome = run.install(checked, payloads: DownloadedObjects(directory: downloads, root: run.session.root))
        run.report.durationSeconds = Date().timeIntervalSince(started)
        // Kept for the server until the next online sync.
        var queued = run.outcome(outcome)
        queued.via = "offline"
        queueReport(queued, session: run.session)
        run.report.result = try outcome.get()
        return run.report
    }

    /// The signed manifest of `target`, from the first peer that serves the bytes its header names.
    private static func manifest(of target: PeerRelease, peers: PeerContext, product: String) async throws -> [UInt8] {
        for source in target.sources where !peers.board.isDropped(source.url) {
            let url = source.url + PeerWire.releasePath(header: target.digest, file: "manifest")
            do {
                let (status, bytes) = try await peers.transport.fetch(url, limit: target.header.manifestByteLimit)
                guard status == 200,
                    SHA256Hash(bytes: Array(SHA256.hash(data: bytes)))!.hex == target.header.manifestSHA256
                else {
                    peers.board.drop(source.url, "serves a manifest that does not match the signed header")
                    continue
                }
                return bytes
            } catch {
                peers.board.drop(source.url, "stalled or failed (\(error))")
            }
        }
        throw SyncError.network("no peer served the signed manifest of \(product) \(target.header.version)")
    }
}
