/// Checking a plan before a byte is fetched or written: the client applies it to its own
/// manifest in memory and the result must be exactly the signed release manifest.
extension Plan {
    /// Verifies that applying the plan to `local` yields `target`.
    ///
    /// Files the plan does not touch carry no SHA-256 in a local scan; they adopt the target's
    /// when size and XXH3-128 agree (local files are not fetched, so the scanner's hash is the
    /// change check the design relies on). Fetched content is checked against the SHA-256 the
    /// plan names, which this check binds to the signed manifest.
    ///
    /// - Parameter reserved: top-level names no plan may touch (the state directory).
    /// - Throws: ``PlanVerificationError``.
    public func verify(
        against local: Manifest,
        yields target: Manifest,
        reserved: Set<String> = [".upgrade"]
    ) throws(PlanVerificationError) {
        for operation in operations {
            let top = operation.path.split(separator: "/", maxSplits: 1).first.map(String.init) ?? operation.path
            if reserved.contains(top) {
                throw .unsafe("plan touches the reserved path \(operation.path.debugDescription)")
            }
            switch operation {
            case .add(_, _, let content), .replace(_, _, let content):
                if content.sha256 == nil {
                    throw .unsafe("plan writes \(operation.path.debugDescription) without a SHA-256")
                }
            default: break
            }
        }
        for entry in target.entries {
            let top = entry.path.split(separator: "/", maxSplits: 1).first.map(String.init) ?? entry.path
            if reserved.contains(top) {
                throw .unsafe("release contains the reserved path \(entry.path.debugDescription)")
            }
        }
        let result: Manifest
        do {
            result = try local.applying(self)
        } catch {
            throw .unsafe("\(error)")
        }
        // One walk of the two sorted lists; the dictionaries only when reporting a mismatch.
        guard Self.sameAfterAdoption(result.entries, target.entries) else {
            let adopted = result.adoptingDigests(from: target)
            throw .mismatch(paths: adopted.differingPaths(from: target))
        }
    }

    /// `mine` equals `theirs` entry by entry, a file of `mine` without a SHA-256 taking the one of
    /// `theirs` when size and XXH3-128 agree (what ``Manifest/adoptingDigests(from:)`` does).
    static func sameAfterAdoption(_ mine: [ManifestEntry], _ theirs: [ManifestEntry]) -> Bool {
        guard mine.count == theirs.count else { return false }
        for index in mine.indices {
            let a = mine[index]
            let b = theirs[index]
            if a == b { continue }
            guard a.path == b.path, a.mode == b.mode else { return false }
            guard case .file(var content) = a.content else { return false }
            guard case .file(let signed) = b.content else { return false }
            if content.sha256 != nil || content.size != signed.size || content.xxh128 != signed.xxh128 { return false }
            content.sha256 = signed.sha256
            if content != signed { return false }
        }
        return true
    }
}

extension Manifest {
    /// This manifest with SHA-256s filled in from `other` wherever a file entry has none and
    /// `other` has a file of the same size and XXH3-128 at the same path.
    public func adoptingDigests(from other: Manifest) -> Manifest {
        let index = other.index()
        let entries = entries.map { entry -> ManifestEntry in
            guard case .file(var content) = entry.content, content.sha256 == nil,
                let theirs = index[entry.path]?.file, theirs.size == content.size, theirs.xxh128 == content.xxh128
            else { return entry }
            content.sha256 = theirs.sha256
            var adopted = entry
            adopted.content = .file(content)
            return adopted
        }
        return Manifest(trustedSorted: entries, hooks: hooks, policy: policy, metadata: metadata)
    }
}

/// A plan that must not be carried out.
public enum PlanVerificationError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The plan cannot be applied safely to this tree (hostile path, write beneath a symlink…).
    case unsafe(String)
    /// The plan applies but does not yield the signed release; the paths that differ.
    case mismatch(paths: [String])

    public var description: String {
        switch self {
        case .unsafe(let why): "unsafe plan: \(why)"
        case .mismatch(let paths):
            "the plan does not yield the signed release; it differs at "
                + paths.prefix(10).map(\.debugDescription).joined(separator: ", ")
                + (paths.count > 10 ? " and \(paths.count - 10) more" : "")
        }
    }
}
