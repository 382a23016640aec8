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
            var files = [Stager.Job]()
            for (position, operation) in plan.operations.enumerated() {
                switch operation {
                case .add(_, let mode, let content), .replace(_, let mode, let content):
                    files.append(Stager.Job(content: content, mode: mode, name: "s\(position)"))
                case .symlink(_, let target):
                    try staging.observer.willMutate("stage symlink s\(position)")
                    guard symlinkat(target, staging.fd, "s\(position)") == 0 else {
                        throw SystemCallError(call: "symlink \(staging.display)/s\(position)", code: errno)
                    }
                default: break
                }
            }
            try Stager.stage(files, in: staging, from: payloads)
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
        let environment = HookContext.environment(
            root: root.display,
            phase: "rollback",
            product: header.product,
            from: failed,
            to: header.version
        )
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

    /// Recovery of an interrupted transaction, under the lock.
    static func recover(store: StateStore, root: SafeTree) throws -> String? {
        switch Recovery.decide(try store.journal()) {
        case .nothing:
            return nil
        case .rollForward(let journal):
            try finish(store: store, journal: journal)
            return "completed the interrupted upgrade to \(journal.toVersion)"
        case .rollBack(let journal):
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

    /// What every hook runs with: a fixed PATH, the root, why it runs and between which releases.
    static func environment(root: String, phase: String, product: String, from: String, to: String) -> [String: String]
    {
        [
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "UPGRADE_ROOT": root, "UPGRADE_PHASE": phase, "UPGRADE_PRODUCT": product,
            "UPGRADE_FROM_VERSION": from, "UPGRADE_TO_VERSION": to,
        ]
    }

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
        let environment = Self.environment(
            root: root.display,
            phase: kind.description,
            product: header.product,
            from: fromVersion ?? "",
            to: header.version
        )
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
