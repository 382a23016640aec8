internal import CUpgradeSys
import Foundation
public import UpgradeCore
public import UpgradeScan
import UpgradeSystem
import UpgradeTrust

#if canImport(Glibc)
import Glibc
#endif

extension Installer {

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
        // What the last run did, for `upgrade status`: a crash may lose it, not worth two fsyncs.
        try? store.write(RunRecord.attemptFile, [UInt8](bytes), durable: false)
        if record.exitCode == 0 { try? store.write(RunRecord.successFile, [UInt8](bytes), durable: false) }
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
    ) async throws -> [Manifest.Difference] {
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
        let local = try await TreeSource.scan(rootPath, options: frozen, cache: .readOnly(cache)).manifest
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
}
