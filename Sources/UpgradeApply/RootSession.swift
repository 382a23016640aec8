import Crypto
import Foundation
public import UpgradeCore
public import UpgradeScan
import UpgradeSystem
public import UpgradeTrust

#if canImport(Glibc)
import Glibc
#endif

/// A root opened for changes: created when missing, its state directory on the same filesystem,
/// its lock held and any interrupted transaction recovered. Everything a command does to a root
/// happens inside one session, so the lock is taken once (flock conflicts with itself across two
/// descriptors of one process).
public final class RootSession: @unchecked Sendable {
    /// The root, as an absolute path.
    public let root: String
    /// What recovery did, if anything.
    public let recovered: String?
    let tree: SafeTree
    let store: StateStore
    private let lock: FileLock

    /// Opens `path`, creating the root and its state directory when missing (an install starts
    /// from nothing). ``withRootSession(root:stateDirectoryName:lockTimeout:observer:create:_:)``
    /// is the scoped form: the lock goes when its body returns.
    public convenience init(
        root path: String,
        stateDirectoryName: String = TreeSource.stateDirectoryName,
        lockTimeout: Double = 60,
        observer: any MutationObserver = NoObserver()
    ) throws {
        try self.init(
            existing: path,
            stateDirectoryName: stateDirectoryName,
            lockTimeout: lockTimeout,
            observer: observer,
            create: true
        )
    }

    /// `create` false: the root and its state directory must exist (`rollback` and `recover`
    /// write nothing into a directory that holds no release); ``ApplyError/notARoot(path:_:)``
    /// when the state directory is missing.
    init(
        existing path: String,
        stateDirectoryName: String,
        lockTimeout: Double,
        observer: any MutationObserver,
        create: Bool
    ) throws {
        if create { try Installer.makeRoot(path, observer: observer) }
        root = Installer.absolute(path)
        tree = try SafeTree(path: root, observer: observer)
        if !create, !tree.exists(stateDirectoryName) {
            throw ApplyError.notARoot(path: root, "nothing is installed here (no \(stateDirectoryName) directory)")
        }
        store = try Installer.openState(root: tree, root, name: stateDirectoryName)
        lock = try store.lock(timeout: lockTimeout)
        recovered = try Installer.recover(store: store, root: tree)
    }

    /// The state directory's path.
    public var stateDirectory: String { store.path }

    /// The installed release: its signed header bytes, decoded header and manifest.
    public var installed: (headerBytes: [UInt8], header: ReleaseHeader, manifest: Manifest)? {
        guard let current = store.current,
            let header = try? ReleaseHeader(unverified: SignedEnvelope(encoded: current.headerBytes))
        else { return nil }
        return (current.headerBytes, header, current.manifest)
    }

    /// The installed release's signed header bytes and decoded header, without its manifest
    /// (a million-entry manifest takes a second to read; ``installed`` reads it).
    public var installedHeader: (headerBytes: [UInt8], header: ReleaseHeader)? {
        guard let current = store.currentHeader,
            let header = try? ReleaseHeader(unverified: SignedEnvelope(encoded: current.headerBytes))
        else { return nil }
        return (current.headerBytes, header)
    }

    static let fingerprintFile = "fingerprint"

    /// The installed manifest's ``Manifest/scanFingerprint``, when a run recorded it.
    public var installedFingerprint: String? {
        guard let id = store.currentID, let bytes = store.read("state/\(id)/\(Self.fingerprintFile)") else {
            return nil
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Records the installed manifest's ``Manifest/scanFingerprint`` beside it, so the next run
    /// that scans the same tree need not read the manifest. A cache: a failure to write it only
    /// costs the next run that read.
    public func recordFingerprint() {
        guard let current = store.current else { return }
        try? store.write(
            "state/\(current.id)/\(Self.fingerprintFile)",
            Array(current.manifest.scanFingerprint.utf8),
            durable: false
        )
    }

    /// SHA-256 hex of the installed release's signed header (what fleet reports name).
    public var installedDigest: String? {
        store.currentHeader.map { SHA256Hash(bytes: Array(SHA256.hash(data: $0.headerBytes)))!.hex }
    }

    /// Returns the root to the release installed before the current one, from the backups the
    /// last transaction kept, under this session's lock. The report names what the session's
    /// own recovery did, if anything.
    public func rollback() throws -> InstallReport {
        try Installer.rollback(root: tree, store: store, recovered: recovered)
    }

    /// An installed release on probation: it must be confirmed (`upgrade confirm`) before
    /// `deadline`, or the next run rolls it back.
    public struct Probation: Sendable {
        public let stateID: String
        public let version: String
        public let headerSHA256: String
        /// Seconds since the epoch.
        public let deadline: Int64
    }

    static let probationFile = "probation"

    /// The probation of the installed release, if any (one left from an earlier state is ignored).
    public var probation: Probation? {
        guard let text = value(Self.probationFile) else { return nil }
        let parts = text.split(separator: "\t").map(String.init)
        guard parts.count == 4, let deadline = Int64(parts[3]), parts[0] == store.currentID else { return nil }
        return Probation(stateID: parts[0], version: parts[1], headerSHA256: parts[2], deadline: deadline)
    }

    /// Puts the installed release on probation until `deadline`.
    public func startProbation(deadline: Int64) throws {
        guard let id = store.currentID, let installed, let digest = installedDigest else { return }
        try setValue(
            Self.probationFile,
            [id, installed.header.version, digest, String(deadline)].joined(separator: "\t")
        )
    }

    /// Ends the probation (the release is confirmed, or was rolled back).
    public func endProbation() throws {
        if store.tree.exists(Self.probationFile) { try store.tree.unlink(Self.probationFile) }
    }

    /// The tree as it is now (stat cache in the state directory). Async, so the walk has every
    /// thread of the pool: a caller on the pool that blocked while waiting for it would take
    /// one of them away (on two cores, half the walk).
    public func scan(options: ScanOptions = ScanOptions()) async throws -> Manifest {
        var options = Installer.scanOptions(options, store: store)
        // A seal is worth taking while the installed release has none (docs/design.md, "No-op at scale").
        options.takeSeal = store.currentID != nil && recordedSeal == nil
        let result = try await TreeSource.scan(root, options: options, cache: .file(store.path + "/statcache"))
        lastSeal = result.seal
        return result.manifest
    }

    /// The seal of the last ``scan(options:)``, for ``recordSeal()``.
    private var lastSeal: TreeSeal?

    static let sealFile = "seal"
    static let sealFormat = "upgrade-seal-1 "

    /// The ``TreeSeal`` recorded for the installed release: the tree as `stat` saw it when a
    /// scan found it equal to the installed manifest.
    var recordedSeal: TreeSeal? {
        guard let id = store.currentID, let bytes = store.read("state/\(id)/\(Self.sealFile)") else { return nil }
        let text = String(decoding: bytes, as: UTF8.self)
        guard text.hasPrefix(Self.sealFormat) else { return nil }
        return TreeSeal(String(text.dropFirst(Self.sealFormat.count)))
    }

    /// True when a seal is recorded for the installed release: ``sealHolds()`` can tell a tree
    /// unchanged since without a scan.
    public var hasSeal: Bool { recordedSeal != nil }

    /// Whether the tree is still the one sealed: a walk that stats every path and reads no file
    /// and no stat cache (``Scanner/seal(root:)``). False when no seal is recorded, the walk
    /// differs or the walk fails (a full scan then says why). A seal that no longer holds is
    /// removed, so the next scan may take a new one.
    public func sealHolds() async -> Bool {
        guard let id = store.currentID, let recorded = recordedSeal else { return false }
        let options = Installer.scanOptions(ScanOptions(), store: store)
        if let now = try? await Scanner(options: options).seal(root: root), now == recorded { return true }
        try? store.tree.unlink("state/\(id)/\(Self.sealFile)")
        return false
    }

    /// Records the last scan's seal beside the installed release, once the caller found the
    /// scanned tree equal to the installed manifest. A cache, as the fingerprint: whoever can
    /// rewrite it can rewrite the installed manifest; a failure to write it costs the next run
    /// a full scan.
    public func recordSeal() {
        guard let id = store.currentID, let seal = lastSeal else { return }
        try? store.write(
            "state/\(id)/\(Self.sealFile)",
            Array((Self.sealFormat + seal.description).utf8),
            durable: false
        )
        lastSeal = nil
    }

    /// Installs under this session's lock (docs/design.md, "Apply engine"). A request that
    /// differs from the last one checked (a dry run first, then the install) only in
    /// `dryRun` and its payload source is not verified again: same header, manifest, plan and
    /// scanned tree, under the same lock.
    public func install(_ request: InstallRequest) throws -> InstallReport {
        var request = request
        request.root = root
        let reuse = lastChecked.flatMap { previous in previous.matches(request) ? previous.checked : nil }
        let (report, checked) = try Installer.install(
            request,
            root: tree,
            store: store,
            recovered: recovered,
            checked: reuse
        )
        lastChecked = request.dryRun && request.scanned != nil ? CheckedRequest(request, checked) : nil
        return report
    }

    /// The last dry-run check, for the install that follows it.
    private var lastChecked: CheckedRequest?

    /// The plan the last dry run verified, with the release's path policy and the request's
    /// `keep` patterns applied: what an install of the same request carries out.
    public var checkedPlan: Plan? { lastChecked?.checked.plan }

    private struct CheckedRequest {
        let headerBytes: [UInt8]
        let manifestBytes: [UInt8]
        let plan: Plan
        let scanned: Manifest
        let allowDowngrade: Bool
        let now: Int64
        let keep: [Glob]
        let checked: Installer.Checked

        init(_ request: InstallRequest, _ checked: Installer.Checked) {
            headerBytes = request.headerBytes
            manifestBytes = request.manifestBytes
            plan = request.plan
            scanned = request.scanned!
            allowDowngrade = request.allowDowngrade
            now = request.now
            keep = request.keep
            self.checked = checked
        }

        func matches(_ request: InstallRequest) -> Bool {
            guard let scanned = request.scanned else { return false }
            return request.headerBytes == headerBytes && request.manifestBytes == manifestBytes
                && request.plan == plan && scanned == self.scanned
                && request.allowDowngrade == allowDowngrade && request.now == now && request.keep == keep
        }
    }

    /// A small named value kept in the state directory (e.g. the last channel sequence seen).
    public func value(_ name: String) -> String? {
        store.read(name).map { String(decoding: $0, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) }
    }

    /// Stores a small named value durably.
    public func setValue(_ name: String, _ value: String) throws {
        let bytes = Array((value + "\n").utf8)
        // A cron run that changes nothing writes nothing (and waits for no fsync).
        if store.read(name) == bytes { return }
        try store.write(name, bytes)
    }

    /// Throws ``ApplyError/noSpace(needed:available:path:)`` unless the state directory's
    /// filesystem (the root's: they are checked to be one) has `bytes` free for this user.
    public func requireFreeSpace(_ bytes: UInt64) throws {
        var vfs = statvfs()
        guard fstatvfs(store.tree.fd, &vfs) == 0 else { return }
        let available = UInt64(vfs.f_bavail) * UInt64(vfs.f_frsize)
        if bytes > available { throw ApplyError.noSpace(needed: bytes, available: available, path: store.path) }
    }

    /// A directory inside the state directory (created when missing), e.g. for downloads.
    public func directory(_ name: String) throws -> String {
        _ = try store.tree.subdirectory(name, create: true)
        return store.path + "/" + name
    }
}

/// The door to the apply engine: opens `root` (creating it and its state directory unless
/// `create` is false), takes its lock, finishes or undoes any interrupted transaction, runs `body`
/// with the session and releases the lock when `body` returns or throws. With `create` false, a
/// root that holds no release throws ``ApplyError/notARoot(path:_:)`` and is left as it was.
public func withRootSession<Result>(
    root: String,
    stateDirectoryName: String = TreeSource.stateDirectoryName,
    lockTimeout: Double = 60,
    observer: any MutationObserver = NoObserver(),
    create: Bool = true,
    _ body: (RootSession) throws -> Result
) throws -> Result {
    let session = try RootSession(
        existing: root,
        stateDirectoryName: stateDirectoryName,
        lockTimeout: lockTimeout,
        observer: observer,
        create: create
    )
    return try withExtendedLifetime(session) { try body(session) }
}

/// ``withRootSession(root:stateDirectoryName:lockTimeout:observer:create:_:)`` for an async body
/// (a scan, a download).
public func withRootSession<Result>(
    root: String,
    stateDirectoryName: String = TreeSource.stateDirectoryName,
    lockTimeout: Double = 60,
    observer: any MutationObserver = NoObserver(),
    create: Bool = true,
    _ body: (RootSession) async throws -> Result
) async throws -> Result {
    let session = try RootSession(
        existing: root,
        stateDirectoryName: stateDirectoryName,
        lockTimeout: lockTimeout,
        observer: observer,
        create: create
    )
    // The lock lives as long as the session: until the body has returned or thrown.
    defer { withExtendedLifetime(session) {} }
    return try await body(session)
}
