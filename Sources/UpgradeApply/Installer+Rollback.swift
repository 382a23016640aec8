internal import CUpgradeSys
import Foundation
import UpgradeCore
import UpgradeScan
import UpgradeSystem
import UpgradeTrust

#if canImport(Glibc)
import Glibc
#endif

extension Installer {
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
}
