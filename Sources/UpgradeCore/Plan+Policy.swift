/// What a sync does to an entry the machine's operator changed, or would have done without a
/// policy: reported in the human output and in `--json`.
public struct LocalChange: Hashable, Sendable, Codable {
    public enum Action: String, Hashable, Sendable, Codable {
        /// A local modification was replaced by the release's entry.
        case reverted
        /// An entry that is not in the release was deleted.
        case deleted
        /// A local entry was kept (a config file edited here, a `keep` path).
        case kept
        /// A config file changed both here and in the release: the local one was kept and the
        /// release's written beside it as `NAME.upgrade-new`.
        case conflict
    }

    public var path: String
    public var action: Action
    /// Why, in words: "modified locally", "not in the release", "wrote etc/a.toml.upgrade-new".
    public var reason: String

    public init(path: String, action: Action, reason: String) {
        self.path = path
        self.action = action
        self.reason = reason
    }
}

/// A plan with the publisher's path policy and the machine's `keep` patterns applied.
public struct PolicyOutcome: Sendable {
    /// What to carry out.
    public var plan: Plan
    /// The tree the plan yields: the release, with kept and unmanaged local entries in place
    /// and `.upgrade-new` files beside conflicting config files.
    public var target: Manifest
    /// Reverted, deleted, kept and conflicting entries, in path order.
    public var changes: [LocalChange]
}

extension Plan {
    /// Applies `target.policy` and `keep` to this plan (computed from `local` to `target`).
    ///
    /// `base` is the installed release's manifest, the common ancestor of the 3-way decision on
    /// config files (nil when nothing is installed). Unmanaged and `keep` paths, and the
    /// `.upgrade-new` files a sync wrote, are left as they are; a config file modified locally is
    /// kept, with the release's version beside it when both sides changed. The result is the
    /// same whatever plan is passed in for the same trees, so applying it twice changes nothing.
    public func respecting(keep: [Glob], local: Manifest, base: Manifest?, target: Manifest) -> PolicyOutcome {
        let policy = target.policy
        let hasRules = !policy.isEmpty || !keep.isEmpty
        guard hasRules || !isEmpty else { return PolicyOutcome(plan: self, target: target, changes: []) }
        // Without rules only the plan's paths are looked up: no whole-tree dictionaries.
        let localIndex = hasRules ? local.index() : [:]
        let baseIndex = hasRules ? base?.index() ?? [:] : [:]
        let localEntry = { (path: String) in hasRules ? localIndex[path] : local.entry(at: path) }
        let baseEntry = { (path: String) in hasRules ? baseIndex[path] : base?.entry(at: path) }
        var changes = [LocalChange]()
        var result = target
        var plan = self
        if hasRules {
            let targetIndex = target.index()
            let overrides = Self.overrides(
                policy: policy,
                keep: keep,
                local: local,
                localIndex: localIndex,
                baseIndex: baseIndex,
                target: target,
                targetIndex: targetIndex,
                changes: &changes
            )
            if !overrides.isEmpty {
                var entries = targetIndex
                for (path, entry) in overrides { entries[path] = entry }
                // A kept entry needs its directories; one whose parent the release turned into a
                // file or link cannot be kept, and the release's entry wins.
                for path in overrides.keys.sorted(by: PathRules.byteOrder) where entries[path] != nil {
                    var missing = [String]()
                    var parent = PathRules.parent(of: path)
                    var placeable = true
                    while let directory = parent {
                        if let existing = entries[directory] {
                            placeable = existing.kind == .directory
                            break
                        }
                        guard let mine = localIndex[directory], mine.kind == .directory else {
                            placeable = false
                            break
                        }
                        missing.append(directory)
                        parent = PathRules.parent(of: directory)
                    }
                    if placeable {
                        for directory in missing { entries[directory] = localIndex[directory] }
                    } else {
                        entries[path] = targetIndex[path]
                        changes.removeAll { $0.path == path }
                    }
                }
                let sorted = entries.values.sorted { PathRules.byteOrder($0.path, $1.path) }
                result = Manifest(
                    trustedSorted: sorted,
                    hooks: target.hooks,
                    policy: target.policy,
                    metadata: target.metadata.filter { entries[$0.key] != nil && overrides[$0.key] == nil }
                )
                plan = Plan(from: local, to: result)
            }
        }

        // What the plan reverts or deletes that the operator changed or added.
        for operation in plan.operations {
            let path = operation.path
            guard let mine = localEntry(path) else { continue }
            let ancestor = baseEntry(path)
            switch operation {
            case .delete:
                if let staying = result.entry(at: path), staying.kind == mine.kind { continue }
                if let ancestor {
                    if !Self.sameFile(ancestor, mine) {
                        changes.append(
                            LocalChange(
                                path: path,
                                action: .deleted,
                                reason: "modified locally, removed in the release"
                            )
                        )
                    }
                } else {
                    let reason = base == nil ? "not in the release" : "not in the installed release"
                    changes.append(LocalChange(path: path, action: .deleted, reason: reason))
                }
            case .replace, .chmod, .symlink:
                if let ancestor, !Self.sameFile(ancestor, mine) {
                    changes.append(LocalChange(path: path, action: .reverted, reason: "modified locally"))
                } else if ancestor == nil {
                    changes.append(LocalChange(path: path, action: .reverted, reason: "existed before the install"))
                }
            case .mkdir, .add:
                continue
            }
        }
        changes.sort { PathRules.byteOrder($0.path, $1.path) }
        return PolicyOutcome(plan: plan, target: result, changes: changes)
    }

    /// Path → the entry the result has there (nil: absent), where the policy says it is not the
    /// release's.
    private static func overrides(
        policy: PathPolicy,
        keep: [Glob],
        local: Manifest,
        localIndex: [String: ManifestEntry],
        baseIndex: [String: ManifestEntry],
        target: Manifest,
        targetIndex: [String: ManifestEntry],
        changes: inout [LocalChange]
    ) -> [String: ManifestEntry?] {
        var overrides = [String: ManifestEntry?]()
        func kept(_ path: String) -> Bool { keep.contains { $0.matches(path) } }
        func isProtected(_ path: String) -> Bool {
            if policy.isUnmanaged(path) || kept(path) { return true }
            guard path.hasSuffix(PathPolicy.newSuffix) else { return false }
            let original = String(path.dropLast(PathPolicy.newSuffix.count))
            return !original.isEmpty && policy.isConfig(original)
        }
        // Unmanaged, kept and `.upgrade-new` paths: the local entry or nothing, whatever the release says.
        for entry in local.entries where isProtected(entry.path) {
            let theirs = targetIndex[entry.path]
            guard theirs != entry else { continue }
            overrides[entry.path] = .some(entry)
            if !policy.isUnmanaged(entry.path), kept(entry.path) {
                changes.append(LocalChange(path: entry.path, action: .kept, reason: "matches a keep pattern"))
            }
        }
        for entry in target.entries where localIndex[entry.path] == nil && isProtected(entry.path) {
            overrides[entry.path] = .some(nil)
        }
        guard !policy.config.isEmpty else { return overrides }
        // Config files: a 3-way decision with the installed release as the common ancestor.
        var candidates = Set<String>()
        for entry in local.entries where entry.kind == .file && policy.isConfig(entry.path) {
            candidates.insert(entry.path)
        }
        for entry in target.entries where entry.kind == .file && policy.isConfig(entry.path) {
            candidates.insert(entry.path)
        }
        for path in candidates.sorted(by: PathRules.byteOrder) where overrides[path] == nil {
            let theirs = targetIndex[path]
            let ancestor = baseIndex[path]
            guard let mine = localIndex[path] else {
                // Deleted here after it was installed: stays deleted.
                if ancestor != nil, theirs != nil {
                    overrides[path] = .some(nil)
                    changes.append(LocalChange(path: path, action: .kept, reason: "deleted locally"))
                }
                continue
            }
            guard mine.kind == .file, theirs == nil || theirs?.kind == .file else { continue }
            let modified = !sameFile(ancestor ?? theirs ?? mine, mine) || (ancestor == nil && theirs == nil)
            guard modified else { continue }
            if let theirs, sameFile(theirs, mine) { continue }
            overrides[path] = .some(mine)
            let upstreamChanged = ancestor.map { ancestor in theirs.map { !sameFile(ancestor, $0) } ?? true } ?? true
            if let theirs, upstreamChanged {
                let beside = path + PathPolicy.newSuffix
                if targetIndex[beside] == nil, (try? PathRules.validate(beside)) != nil {
                    var copy = theirs
                    copy.path = beside
                    overrides[beside] = .some(copy)
                    changes.append(
                        LocalChange(
                            path: path,
                            action: .conflict,
                            reason: "changed here and in the release; wrote \(beside)"
                        )
                    )
                    continue
                }
            }
            let reason =
                theirs == nil
                ? (ancestor == nil ? "config file added locally" : "modified locally, removed in the release")
                : "modified locally, unchanged in the release"
            changes.append(LocalChange(path: path, action: .kept, reason: reason))
        }
        return overrides
    }

    /// Same kind, content and mode (a local scan has no SHA-256 for files it did not fetch).
    static func sameFile(_ a: ManifestEntry, _ b: ManifestEntry) -> Bool {
        guard a.kind == b.kind, a.mode == b.mode else { return false }
        switch (a.content, b.content) {
        case (.file(let x), .file(let y)): return x.size == y.size && x.xxh128 == y.xxh128
        case (.symlink(let x), .symlink(let y)): return x == y
        case (.directory, .directory): return true
        default: return false
        }
    }
}

extension Manifest {
    /// Same paths, kinds, modes and contents (by size and XXH3-128), in one walk: a local scan
    /// that is exactly this release.
    public func sameTree(as other: Manifest) -> Bool {
        entries.count == other.entries.count
            && zip(entries, other.entries).allSatisfy { $0.path == $1.path && Plan.sameFile($0, $1) }
    }
}
