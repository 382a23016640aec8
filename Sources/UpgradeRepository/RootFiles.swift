import Foundation
import UpgradeSystem
public import UpgradeTrust

#if canImport(Glibc)
import Glibc
#endif

/// A repository's roots of trust: `roots/1.json`, `roots/2.json`, … (each verified against the
/// one before), and `roots/draft.json`, the next root while it gathers signatures.
public enum RootFiles {
    /// What a root change did.
    public enum Outcome: Sendable {
        /// The root is signed as required and published as `roots/N.json`.
        case published(RootDocument)
        /// Kept as the draft: `missing` says which signatures it still needs.
        case draft(RootDocument, missing: String)
    }

    /// The repository's root chain, each root verified against the one before (the first
    /// against its own root keys). Empty for a repository without roots.
    public static func chain(_ repository: String) throws -> [RootDocument] {
        let layout = RepositoryLayout(root: repository)
        var chain = [RootDocument]()
        var version: UInt64 = 1
        while FileSystem.exists(layout.root(version)) {
            let bytes = try AtomicFile.read(layout.root(version))
            do {
                let envelope = try SignedEnvelope(encoded: bytes)
                let root =
                    try chain.last.map { try $0.verifyNext(envelope) } ?? RootDocument.verifyAnchor(envelope)
                chain.append(root)
            } catch {
                throw RootFileError.invalid(layout.relative(layout.root(version)), "\(error)")
            }
            version += 1
        }
        return chain
    }

    /// The newest root reached from `anchor` (a client's `--trust`): each root after it
    /// verified against the one before, as a client would walk them.
    public static func newest(_ repository: String, from anchor: RootDocument) throws -> RootDocument {
        let layout = RepositoryLayout(root: repository)
        var root = anchor
        while FileSystem.exists(layout.root(root.version + 1)) {
            let path = layout.root(root.version + 1)
            do {
                root = try root.verifyNext(SignedEnvelope(encoded: try AtomicFile.read(path)))
            } catch {
                throw RootFileError.invalid(
                    layout.relative(path),
                    "\(error) (walking from the --trust root \(anchor.version))"
                )
            }
        }
        return root
    }

    /// The newest root, nil without any.
    public static func newest(_ repository: String) throws -> RootDocument? { try chain(repository).last }

    /// Creates root 1. `rootKeys` sign it; it is published when they reach `root.threshold`.
    public static func initialize(
        repository: String,
        root: RootDocument,
        signers: [PrivateKey]
    ) throws -> Outcome {
        let layout = RepositoryLayout(root: repository)
        try FileSystem.makeDirectories(layout.roots)
        if !FileSystem.exists(layout.marker) {
            try AtomicFile.write(Array("{\"format\":\"upgrade-repository/1\"}\n".utf8), to: layout.marker)
        }
        let lock = try FileLock(layout.lockFile, mode: .exclusive, timeout: nil)
        defer { withExtendedLifetime(lock) {} }
        guard !FileSystem.exists(layout.root(1)) else { throw RootFileError.exists(layout.relative(layout.root(1))) }
        if let problem = root.problem { throw RootFileError.rejected("the new root", problem) }
        return try settle(root.signed(with: signers), previous: nil, layout: layout)
    }

    /// Starts root N+1 from the newest with `change` applied, signed by `signers`.
    public static func rotate(
        repository: String,
        signers: [PrivateKey],
        change: RootChange
    ) throws -> Outcome {
        let layout = RepositoryLayout(root: repository)
        guard FileSystem.exists(layout.marker) else { throw RootFileError.notARepository(repository) }
        let lock = try FileLock(layout.lockFile, mode: .exclusive, timeout: nil)
        defer { withExtendedLifetime(lock) {} }
        guard let current = try chain(repository).last else { throw RootFileError.noRoot(repository) }
        let next = current.next(change)
        if let problem = next.problem { throw RootFileError.rejected("root \(next.version)", problem) }
        return try settle(next.signed(with: signers), previous: current, layout: layout)
    }

    /// Adds `key`'s signature to the draft; publishes it once it is signed as required.
    public static func sign(repository: String, key: PrivateKey) throws -> Outcome {
        let layout = RepositoryLayout(root: repository)
        guard FileSystem.exists(layout.marker) else { throw RootFileError.notARepository(repository) }
        let lock = try FileLock(layout.lockFile, mode: .exclusive, timeout: nil)
        defer { withExtendedLifetime(lock) {} }
        guard FileSystem.exists(layout.rootDraft) else {
            throw RootFileError.noDraft(layout.relative(layout.rootDraft))
        }
        let draft: SignedEnvelope
        do {
            draft = try SignedEnvelope(encoded: try AtomicFile.read(layout.rootDraft))
        } catch {
            throw RootFileError.invalid(layout.relative(layout.rootDraft), "\(error)")
        }
        let chain = try chain(repository)
        let document = try RootDocument(unverified: draft)
        guard document.version == (chain.last?.version ?? 0) + 1 else {
            throw RootFileError.invalid(
                layout.relative(layout.rootDraft),
                "it is root \(document.version) but the repository is at root \(chain.last?.version ?? 0)"
            )
        }
        return try settle(draft.adding(signatureBy: key), previous: chain.last, layout: layout)
    }

    /// Publishes `envelope` when it verifies after `previous` (or as a first root), else keeps
    /// it as the draft and says what is missing.
    private static func settle(
        _ envelope: SignedEnvelope,
        previous: RootDocument?,
        layout: RepositoryLayout
    ) throws -> Outcome {
        let document = try RootDocument(unverified: envelope)
        do {
            if let previous {
                _ = try previous.verifyNext(envelope)
            } else {
                _ = try RootDocument.verifyAnchor(envelope)
            }
        } catch {
            try AtomicFile.write(envelope.encoded(), to: layout.rootDraft)
            return .draft(document, missing: missing(envelope, document: document, previous: previous))
        }
        try AtomicFile.write(envelope.encoded(), to: layout.root(document.version))
        if FileSystem.exists(layout.rootDraft) { unlink(layout.rootDraft) }
        return .published(document)
    }

    /// Which thresholds a draft does not meet yet.
    static func missing(_ envelope: SignedEnvelope, document: RootDocument, previous: RootDocument?) -> String {
        var needs = [String]()
        for (what, root) in [("root \(previous?.version ?? 0)", previous), ("root \(document.version)", document)] {
            guard let root else { continue }
            let keys = root.keys(for: .root)
            let have = envelope.validSigners(among: keys).count
            let threshold = root.threshold(for: .root)
            if have < threshold {
                let unsigned = keys.keys.filter { !envelope.validSigners(among: keys).contains($0) }.sorted()
                needs.append(
                    "\(threshold - have) more of the root keys of \(what) (\(unsigned.joined(separator: ", ")))"
                )
            }
        }
        return needs.joined(separator: " and ")
    }

    /// Refuses keys `root` (the repository's newest) does not put in `role`, or too few of
    /// them; a repository without roots (nil) accepts any key.
    public static func requireAuthorized(_ keys: [PrivateKey], role: Role, root: RootDocument?) throws {
        guard let root else { return }
        let allowed = Set(root.roles[role]?.keyids ?? [])
        for key in keys where !allowed.contains(key.publicKey.keyID) {
            throw RootFileError.unauthorized(key: key.publicKey.keyID, role: role, root: root.version)
        }
        let distinct = Set(keys.map(\.publicKey.keyID)).count
        guard distinct >= root.threshold(for: role) else {
            throw RootFileError.belowThreshold(role: role, given: distinct, threshold: root.threshold(for: role))
        }
    }
}

/// Why a root file operation was refused.
public enum RootFileError: Error, CustomStringConvertible {
    case notARepository(String)
    case exists(String)
    case noRoot(String)
    case noDraft(String)
    /// A root file of the repository does not verify.
    case invalid(String, String)
    /// The root asked for breaks the rules (nothing was written).
    case rejected(String, String)
    case unauthorized(key: String, role: Role, root: UInt64)
    case belowThreshold(role: Role, given: Int, threshold: Int)

    public var description: String {
        switch self {
        case .notARepository(let path):
            "\(path) is not a repository (no upgrade-repository.json); create one with `upgrade publish` or `upgrade root init`"
        case .exists(let path): "\(path) already exists; change the root with `upgrade root rotate`"
        case .noRoot(let repository): "\(repository) has no root of trust yet; create one with `upgrade root init`"
        case .noDraft(let path): "no draft root to sign (\(path)); start one with `upgrade root rotate`"
        case .invalid(let what, let why): "\(what): \(why)"
        case .rejected(let what, let why): "\(what) would be malformed: \(why); nothing was written"
        case .unauthorized(let key, let role, let root):
            "key \(key) is not a \(role.rawValue) key of the repository's root \(root); use an authorized key, or rotate the root to add it"
        case .belowThreshold(let role, let given, let threshold):
            "the \(role.rawValue) role needs \(threshold) signatures; \(given) key\(given == 1 ? " was" : "s were") given"
        }
    }
}
