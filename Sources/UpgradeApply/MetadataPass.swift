internal import CUpgradeSys
import UpgradeCore
import UpgradeScan
import UpgradeSystem

#if canImport(Glibc)
import Glibc
#endif

/// What a transaction does about the release's ``EntryMetadata`` beyond the plan's content:
/// staged entries get their owner, attributes and holes in the staging directory; entries the
/// plan leaves alone get journal steps (``Journal/Step/metadata(path:from:to:mode:)``) when what
/// is on disk differs; hard-link members that are not links to their group's first file get a
/// staged link placed over them. Nothing is downloaded for any of it.
enum MetadataPass {
    /// The release's metadata, plus the root's own owner for entries the installed release gave
    /// an owner and this one does not (an owner the release no longer declares is taken back).
    static func desired(_ release: Manifest, installed: Manifest?, root: SafeTree) -> [String: EntryMetadata] {
        var desired = release.metadata
        guard let installed, installed.metadata.values.contains(where: { $0.owner != nil }) else { return desired }
        var info = stat()
        guard fstat(root.fd, &info) == 0 else { return desired }
        let paths = Set(release.entries.lazy.map(\.path))
        for (path, meta) in installed.metadata
        where meta.owner != nil && desired[path]?.owner == nil && desired[path]?.hardLink == nil && paths.contains(path)
        {
            var reset = desired[path] ?? EntryMetadata()
            reset.owner = Owner(user: nil, uid: info.st_uid, group: nil, gid: info.st_gid)
            desired[path] = reset
        }
        return desired
    }

    static func prepare(
        _ metadata: [String: EntryMetadata],
        installed: Manifest?,
        target: Manifest,
        plan: Plan,
        root: SafeTree,
        staging: SafeTree
    ) throws -> [Journal.Step] {
        let dropped = droppedXattrs(installed: installed, release: metadata)
        guard !metadata.isEmpty || !dropped.isEmpty else { return [] }
        var staged = [String: (name: String, mode: UInt32?)]()
        var created = Set<String>()
        for (position, operation) in plan.operations.enumerated() {
            switch operation {
            case .add(let path, let mode, _), .replace(let path, let mode, _): staged[path] = ("s\(position)", mode)
            case .symlink(let path, _): staged[path] = ("s\(position)", nil)
            case .mkdir(let path, _): created.insert(path)
            case .delete(let path, _): staged[path] = nil
            case .chmod: break
            }
        }
        var modes = [String: UInt32]()
        for entry in target.entries where metadata[entry.path] != nil && entry.kind != .symlink {
            modes[entry.path] = entry.mode
        }
        var steps = [Journal.Step]()
        var links = [Journal.Step]()
        for path in metadata.keys.sorted(by: PathRules.byteOrder) {
            let meta = metadata[path]!
            let wanted = EntryMetadata(owner: meta.owner, xattrs: meta.xattrs)
            if let leader = meta.hardLink {
                // The group shares the first file's inode, owner and attributes included.
                let observe = { (path: String) in
                    (try? root.withParent(path) { MetadataIO.observe($0, $1, xattrs: false) }) ?? nil
                }
                let (mine, theirs) = (observe(path), observe(leader))
                let linked =
                    staged[path] == nil && staged[leader] == nil && mine != nil && theirs != nil
                    && mine!.device == theirs!.device && mine!.inode == theirs!.inode
                guard !linked else { continue }
                let name = "h\(links.count)"
                try staging.observer.willMutate("stage hard link \(name)")
                if let leaderStaged = staged[leader] {
                    guard linkat(staging.fd, leaderStaged.name, staging.fd, name, 0) == 0 else {
                        throw SystemCallError(call: "link \(staging.display)/\(name)", code: errno)
                    }
                } else {
                    try root.link(leader, into: staging, as: name)
                }
                let exists = mine != nil || staged[path] != nil
                links.append(.place(path: path, staged: name, backup: exists ? "hb\(links.count)" : nil))
                continue
            }
            if let (name, mode) = staged[path] {
                if meta.sparse { try punchHoles(staging, name) }
                if !wanted.isEmpty { try staging.setMetadata(name, wanted, mode: mode) }
            } else if created.contains(path) {
                if !wanted.isEmpty { steps.append(.metadata(path: path, from: nil, to: wanted, mode: modes[path])) }
            } else if !wanted.isEmpty,
                let observed =
                    (try? root.withParent(path, { MetadataIO.observe($0, $1, xattrs: !wanted.xattrs.isEmpty) }))
                        ?? nil,
                !MetadataIO.satisfies(observed, wanted)
            {
                let names = Set(wanted.xattrs.map(\.name))
                let before = EntryMetadata(
                    owner: Owner(user: nil, uid: observed.uid, group: nil, gid: observed.gid),
                    xattrs: observed.xattrs.filter { names.contains($0.name) }
                )
                let mode = observed.isSymlink ? nil : observed.mode
                steps.append(.metadata(path: path, from: before, to: wanted, mode: mode))
            }
        }
        // Attributes the installed release set and this one does not (a capability revoked):
        // removed from entries the plan leaves in place.
        for path in dropped.keys.sorted(by: PathRules.byteOrder) where staged[path] == nil && !created.contains(path) {
            guard let observed = (try? root.withParent(path, { MetadataIO.observe($0, $1, xattrs: true) })) ?? nil
            else {
                continue
            }
            let names = dropped[path]!
            let present = observed.xattrs.filter { names.contains($0.name) }
            if !present.isEmpty { steps.append(.removeXattrs(path: path, removed: present)) }
        }
        return steps + links
    }

    /// Path → names of attributes `installed` set that `release` no longer names.
    static func droppedXattrs(installed: Manifest?, release: [String: EntryMetadata]) -> [String: Set<String>] {
        guard let installed else { return [:] }
        var dropped = [String: Set<String>]()
        for (path, meta) in installed.metadata where !meta.xattrs.isEmpty {
            let kept = Set(release[path]?.xattrs.map(\.name) ?? [])
            let gone = Set(meta.xattrs.map(\.name)).subtracting(kept)
            if !gone.isEmpty { dropped[path] = gone }
        }
        return dropped
    }

    /// Frees the all-zero 4 KiB blocks of a staged file (its size stays).
    static func punchHoles(_ staging: SafeTree, _ name: String) throws {
        let fd = openat(staging.fd, name, O_RDWR | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw SystemCallError(call: "open \(staging.display)/\(name)", code: errno) }
        defer { close(fd) }
        let block = 4096
        var offset: off_t = 0
        var holeStart: off_t? = nil
        func flush(_ end: off_t) throws {
            if let start = holeStart, end > start, upgrade_punch_hole(fd, start, end - start) != 0 {
                throw SystemCallError(call: "punch hole in \(staging.display)/\(name)", code: errno)
            }
            holeStart = nil
        }
        try Posix.readChunks(fd, from: 0, chunkSize: 256 * block, what: "\(staging.display)/\(name)") { chunk in
            var position = 0
            while position < chunk.count {
                let end = min(position + block, chunk.count)
                let zero = end - position == block && chunk[position..<end].allSatisfy { $0 == 0 }
                let at = offset + off_t(position)
                if zero {
                    if holeStart == nil { holeStart = at }
                } else {
                    try flush(at)
                }
                position = end
            }
            offset += off_t(chunk.count)
        }
        try flush(offset)
    }
}
