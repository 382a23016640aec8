/// Applying a plan to a manifest in memory: how the client checks a plan before it touches a
/// byte (the result's digest must equal the signed one), and how tests prove a plan's order safe.
extension Manifest {
    /// The tree after `plan`, checking every operation's precondition as a filesystem would:
    /// a created path is free and its parent is a directory, a replaced path is a file, a deleted
    /// directory is empty, and so on. Throws ``PlanApplicationError`` at the first violation.
    ///
    /// Cost follows the plan, not the tree: untouched entries are found by binary search in the
    /// sorted entries, the plan's changes live in an overlay, and the result is one merge.
    public func applying(_ plan: Plan) throws(PlanApplicationError) -> Manifest {
        // Path -> the entry there now (nil: removed), for every path the plan touched.
        var overlay = [String: ManifestEntry?](minimumCapacity: plan.operations.count)
        // Directory -> change in its number of children since the start.
        var childDelta = [String: Int]()
        func lookup(_ path: String) -> ManifestEntry? {
            if let changed = overlay[path] { return changed }
            return entry(at: path)
        }
        func set(_ path: String, _ new: ManifestEntry?) {
            let existed = lookup(path) != nil
            overlay[path] = .some(new)
            if existed != (new != nil), let parent = PathRules.parent(of: path) {
                childDelta[parent, default: 0] += new != nil ? 1 : -1
            }
        }
        func children(of directory: String) -> Int {
            let prefix = Array(directory.utf8) + [UInt8(ascii: "/")]
            var count = 0
            var index = firstIndex(notBefore: directory + "/")
            while index < entries.count {
                let path = entries[index].path.utf8
                guard path.starts(with: prefix) else { break }
                if !path.dropFirst(prefix.count).contains(UInt8(ascii: "/")) { count += 1 }
                index += 1
            }
            return count + childDelta[directory, default: 0]
        }

        for (step, operation) in plan.operations.enumerated() {
            func fail(_ reason: PlanApplicationError.Reason) -> PlanApplicationError {
                PlanApplicationError(step: step, operation: operation, reason: reason)
            }
            let path = operation.path
            do {
                try PathRules.validate(path)
            } catch {
                throw fail(.invalidPath(error))
            }
            let existing = lookup(path)

            func requireParentDirectory() throws(PlanApplicationError) {
                guard let parent = PathRules.parent(of: path) else { return }
                guard let entry = lookup(parent) else { throw fail(.parentMissing(parent)) }
                guard entry.kind == .directory else { throw fail(.parentNotDirectory(parent, entry.kind)) }
            }

            switch operation {
            case .mkdir(_, let mode):
                guard existing == nil else { throw fail(.exists(existing!.kind)) }
                try requireParentDirectory()
                set(path, .directory(path, mode: mode))
            case .add(_, let mode, let content):
                guard existing == nil else { throw fail(.exists(existing!.kind)) }
                try requireParentDirectory()
                set(path, .file(path, mode: mode, content))
            case .replace(_, let mode, let content):
                guard let existing else { throw fail(.missing) }
                guard existing.kind == .file else { throw fail(.wrongKind(expected: .file, found: existing.kind)) }
                set(path, .file(path, mode: mode, content))
            case .symlink(_, let target):
                do {
                    try PathRules.validateSymlinkTarget(target, of: path)
                } catch {
                    throw fail(.invalidPath(error))
                }
                if let existing {
                    guard existing.kind == .symlink else { throw fail(.exists(existing.kind)) }
                    set(path, .symlink(path, target: target))
                } else {
                    try requireParentDirectory()
                    set(path, .symlink(path, target: target))
                }
            case .delete(_, let kind):
                guard let existing else { throw fail(.missing) }
                guard existing.kind == kind else { throw fail(.wrongKind(expected: kind, found: existing.kind)) }
                if kind == .directory {
                    let count = children(of: path)
                    if count > 0 { throw fail(.directoryNotEmpty(count)) }
                }
                set(path, nil)
            case .chmod(_, let mode):
                guard var existing else { throw fail(.missing) }
                guard existing.kind != .symlink else { throw fail(.wrongKind(expected: .file, found: .symlink)) }
                existing.mode = mode & 0o7777
                set(path, existing)
            }
        }

        // One merge of the untouched entries (in order already) with the touched ones.
        let changed = overlay.compactMap { $0.value }.sorted { PathRules.byteOrder($0.path, $1.path) }
        var sorted = [ManifestEntry]()
        sorted.reserveCapacity(entries.count + changed.count)
        var next = 0
        for entry in entries where overlay[entry.path] == nil {
            while next < changed.count, PathRules.byteOrder(changed[next].path, entry.path) {
                sorted.append(changed[next])
                next += 1
            }
            sorted.append(entry)
        }
        sorted.append(contentsOf: changed[next...])
        // Hooks travel with the release, not the plan; keep the ones whose script is still a file.
        let hooks = Hooks(self.hooks.scripts.filter { lookup($0.value)?.kind == .file })
        return Manifest(trustedSorted: sorted, hooks: hooks, policy: policy)
    }

    /// How this tree (the local one) differs from `other` (the installed release), path by path
    /// in byte order: what `upgrade verify` reports.
    public func differences(from other: Manifest) -> [Difference] {
        let mine = index()
        let theirs = other.index()
        var found = [Difference]()
        for (path, entry) in mine {
            guard let expected = theirs[path] else {
                found.append(Difference(path: path, kind: .extra))
                continue
            }
            if entry.kind != expected.kind {
                found.append(Difference(path: path, kind: .type))
            } else if entry.content != expected.content {
                found.append(Difference(path: path, kind: entry.kind == .symlink ? .target : .content))
            } else if entry.mode != expected.mode {
                found.append(Difference(path: path, kind: .mode))
            }
        }
        for path in theirs.keys where mine[path] == nil { found.append(Difference(path: path, kind: .missing)) }
        return found.sorted { PathRules.byteOrder($0.path, $1.path) }
    }

    /// One path where a tree differs from a manifest.
    public struct Difference: Hashable, Sendable, Codable {
        /// What differs.
        public enum Kind: String, Hashable, Sendable, Codable {
            /// A file's bytes.
            case content
            /// Permission bits only.
            case mode
            /// A symlink's target.
            case target
            /// A file where a directory should be, or the like.
            case type
            /// In the release, not in the tree.
            case missing
            /// In the tree, not in the release.
            case extra
            /// Owner or group.
            case owner
            /// An extended attribute the release sets.
            case xattr
            /// A hard link of the release that is a separate file here.
            case link
        }

        public var path: String
        public var kind: Kind

        public init(path: String, kind: Kind) {
            self.path = path
            self.kind = kind
        }
    }
}

/// A plan operation that cannot be applied to the tree it meets.
public struct PlanApplicationError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What went wrong.
    public enum Reason: Hashable, Sendable {
        case invalidPath(PathError)
        case exists(EntryKind)
        case missing
        case wrongKind(expected: EntryKind, found: EntryKind)
        case parentMissing(String)
        case parentNotDirectory(String, EntryKind)
        case directoryNotEmpty(Int)
    }

    /// Zero-based index of the operation in the plan.
    public let step: Int
    /// The operation.
    public let operation: PlanOperation
    /// Why it cannot be applied.
    public let reason: Reason

    /// Creates an error for the operation at `step`.
    public init(step: Int, operation: PlanOperation, reason: Reason) {
        self.step = step
        self.operation = operation
        self.reason = reason
    }

    public var description: String {
        let head = "plan step \(step + 1) (\(operation.name) \(operation.path.debugDescription))"
        switch reason {
        case .invalidPath(let error): return "\(head): \(error)"
        case .exists(let kind): return "\(head): a \(kind) already exists there"
        case .missing: return "\(head): nothing exists there"
        case .wrongKind(let expected, let found): return "\(head): expected a \(expected), found a \(found)"
        case .parentMissing(let parent): return "\(head): parent \(parent.debugDescription) does not exist"
        case .parentNotDirectory(let parent, let kind):
            return "\(head): parent \(parent.debugDescription) is a \(kind), not a directory"
        case .directoryNotEmpty(let count): return "\(head): directory still holds \(count) entries"
        }
    }
}
