/// Plans whose cost follows the change, not the tree.
///
/// A routine client is a release it installed (`base`) plus a few local changes; the release it
/// moves to differs from `base` in a few paths, which a server computes once per pair of
/// releases. Every path where the client and the target differ is among those two sets, so the
/// plan only needs them (and their ancestors, which keep the partial trees valid).
extension Manifest {
    /// The entry at `path`, by binary search over the sorted entries.
    public func entry(at path: String) -> ManifestEntry? {
        let index = firstIndex(notBefore: path)
        return index < entries.count && entries[index].path == path ? entries[index] : nil
    }

    /// Index of the first entry whose path does not sort before `path`.
    func firstIndex(notBefore path: String) -> Int {
        var low = 0
        var high = entries.count
        while low < high {
            let middle = (low + high) / 2
            if PathRules.byteOrder(entries[middle].path, path) { low = middle + 1 } else { high = middle }
        }
        return low
    }

    /// Paths whose entry differs between this manifest and `other` (present in one only, or
    /// unequal), in canonical order: one merge walk of the two sorted lists. What a refusal names
    /// when a plan does not yield the signed tree, and what a server caches between releases.
    public func differingPaths(from other: Manifest) -> [String] {
        var paths = [String]()
        var i = 0
        var j = 0
        let left = entries
        let right = other.entries
        while i < left.count || j < right.count {
            if j == right.count || (i < left.count && PathRules.byteOrder(left[i].path, right[j].path)) {
                paths.append(left[i].path)
                i += 1
            } else if i == left.count || PathRules.byteOrder(right[j].path, left[i].path) {
                paths.append(right[j].path)
                j += 1
            } else {
                if left[i] != right[j] { paths.append(left[i].path) }
                i += 1
                j += 1
            }
        }
        return paths
    }
}

/// A tree described as a known manifest plus changes, read without building the whole tree.
public struct ChangedTree: Sendable {
    public var base: Manifest
    /// Entries that are new or differ from `base`, by path.
    public var changed: [String: ManifestEntry]
    /// Paths of `base` that are gone.
    public var removed: Set<String>

    public init(base: Manifest, changed: [String: ManifestEntry], removed: Set<String>) {
        self.base = base
        self.changed = changed
        self.removed = removed
    }

    /// The entry at `path` in the changed tree.
    public func entry(at path: String) -> ManifestEntry? {
        if let entry = changed[path] { return entry }
        return removed.contains(path) ? nil : base.entry(at: path)
    }
}

extension Plan {
    /// The plan from `client` to `target`, where `releaseChanges` are the paths in which
    /// `client.base` and `target` differ (``Manifest/differingPaths(from:)``). Equal to
    /// `Plan(from: client, to: target)` on the whole trees, at a cost of O((changes) log n).
    ///
    /// Also returns the part of the client tree it looked at, with the files of the same
    /// directories that a new file could start a delta from, for ``deltaBases(client:)``.
    /// Throws when the client's changes break the manifest rules (say, a file whose directory it
    /// removed).
    public static func incremental(
        client: ChangedTree,
        target: Manifest,
        releaseChanges: [String]
    ) throws(PathError) -> (plan: Plan, client: Manifest) {
        var paths = Set(releaseChanges)
        paths.formUnion(client.changed.keys)
        paths.formUnion(client.removed)
        var wanted = paths
        for path in paths {
            var parent = PathRules.parent(of: path)
            while let directory = parent, wanted.insert(directory).inserted {
                parent = PathRules.parent(of: directory)
            }
        }
        let targetEntries = wanted.compactMap { target.entry(at: $0) }
        var clientEntries = wanted.compactMap { client.entry(at: $0) }
        let partialTarget = try Manifest(entries: targetEntries)
        let partialClient = try Manifest(entries: clientEntries)
        let plan = Plan(from: partialClient, to: partialTarget)

        // Delta bases: a new file may start from a similarly named file of its directory that
        // neither side changed (`libfoo-1.so` for `libfoo-2.so`), so those join the client part.
        var extra = [ManifestEntry]()
        var seen = Set<String>()
        for case .add(let path, _, _) in plan.operations {
            let directory = PathRules.parent(of: path)
            let key = Self.similarityKey(path)
            guard seen.insert((directory ?? "") + "\u{0}" + key).inserted else { continue }
            let prefix = directory.map { $0 + "/" } ?? ""
            var index = prefix.isEmpty ? 0 : client.base.firstIndex(notBefore: prefix)
            var looked = 0
            while index < client.base.entries.count, looked < 4096 {
                let entry = client.base.entries[index]
                guard entry.path.hasPrefix(prefix) else { break }
                index += 1
                looked += 1
                guard entry.file != nil, !wanted.contains(entry.path), PathRules.parent(of: entry.path) == directory,
                    Self.similarityKey(entry.path) == key, client.entry(at: entry.path) == entry
                else { continue }
                extra.append(entry)
                wanted.insert(entry.path)
            }
        }
        guard !extra.isEmpty else { return (plan, partialClient) }
        clientEntries += extra
        return (plan, try Manifest(entries: clientEntries))
    }
}
