import Foundation
public import Hummingbird
public import Logging
public import ServiceLifecycle
import Synchronization
import UpgradeApply
import UpgradeCore
import UpgradeSystem
import UpgradeTrust

#if canImport(Glibc)
import Glibc
#endif

/// How `upgrade share` runs.
public struct ShareConfiguration: Sendable {
    public var root: String
    public var stateDirectoryName = ".upgrade"
    public var host = "0.0.0.0"
    /// 0 picks a free port.
    public var port = PeerWire.defaultPort
    /// Also serve the previous release's files that the last upgrade replaced.
    public var servePrevious = true
    /// Ways to misbehave, for tests of the client's defences only (hidden `--fault`), applied
    /// by a middleware outside the handlers.
    public var faults: Set<PeerFault> = []

    public init(root: String) {
        self.root = root
    }
}

/// The peer server of `upgrade share`: the installed release's signed header and manifest, and
/// its files by SHA-256 — only files whose content was verified against the signed manifest
/// (and verified again when they changed since), looked up by hash, never by a client's path.
public final class ShareService: Sendable {
    /// A file known to hold a content, and the identity it had when it was hashed.
    struct VerifiedFile: Sendable {
        let path: String
        let size: UInt64
        var identity: FileIdentity
    }

    struct State: Sendable {
        var stateID: String?
        var releases: [String: HeldRelease] = [:]
        var verified: [SHA256Hash: VerifiedFile] = [:]
        var current: HeldRelease?
        var previous: HeldRelease?
        var complete = false
        var port = 0
    }

    public let configuration: ShareConfiguration
    let logger: Logger
    let state = Mutex(State())
    private let servedBytes = Atomic<Int>(0)

    public init(configuration: ShareConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    /// The bound port, once the server runs.
    public func setPort(_ port: Int) { state.withLock { $0.port = port } }

    /// True once an installed release was read.
    public var holdsRelease: Bool { state.withLock { $0.current != nil } }

    /// Bytes of files served so far.
    public var bytesServed: Int { servedBytes.load(ordering: .relaxed) }

    /// What to announce; nil while nothing is installed.
    public func announcement() -> PeerAnnouncement? {
        state.withLock { state -> PeerAnnouncement? in
            guard let current = state.current, state.port > 0 else { return nil }
            var announcement = PeerAnnouncement(
                product: current.header.product,
                version: current.header.version,
                sequence: current.header.sequence,
                header: current.headerSHA256.hex,
                complete: state.complete,
                port: state.port
            )
            if let previous = state.previous, !previous.files.isEmpty {
                announcement.previous = HeldSummary(
                    version: previous.header.version,
                    sequence: previous.header.sequence,
                    header: previous.headerSHA256.hex
                )
            }
            return announcement
        }
    }

    /// Re-reads what the root holds when its installed state changed, and verifies every file
    /// of it by SHA-256. Skipped while a transaction is in progress (the tree is half-way);
    /// files that change later are verified again before they are served. Returns true when
    /// something changed.
    @discardableResult
    public func refresh() throws -> Bool {
        let root = configuration.root
        if FileManager.default.fileExists(atPath: root + "/" + configuration.stateDirectoryName + "/journal") {
            return false
        }
        // Every interval costs one small read; the manifest is read only when the release changed.
        let installed = HeldReleases.installedStateID(root: root, stateDirectoryName: configuration.stateDirectoryName)
        if installed == state.withLock({ $0.stateID }) { return false }
        guard let held = try HeldReleases.read(root: root, stateDirectoryName: configuration.stateDirectoryName)
        else {
            state.withLock { $0 = State(port: $0.port) }
            return false
        }
        var verified = [SHA256Hash: VerifiedFile]()
        var missing = 0
        var releases = [held.current]
        if configuration.servePrevious, let previous = held.previous { releases.append(previous) }
        for release in releases {
            for (sha, location) in release.files where verified[sha] == nil {
                if let identity = Self.verify(root: root, location: location, sha: sha) {
                    verified[sha] = VerifiedFile(path: location.path, size: location.size, identity: identity)
                } else if release.covering {
                    missing += 1
                }
            }
        }
        state.withLock { state in
            state.stateID = held.stateID
            state.current = held.current
            state.previous = configuration.servePrevious ? held.previous : nil
            state.releases = [held.current.headerSHA256.hex: held.current]
            if let previous = state.previous { state.releases[previous.headerSHA256.hex] = previous }
            state.verified = verified
            state.complete = missing == 0
        }
        logger.info(
            "sharing \(held.current.header.product) \(held.current.header.version)",
            metadata: [
                "verified": "\(verified.count)", "unverified": "\(missing)",
                "previous": "\(configuration.servePrevious ? held.previous?.header.version ?? "none" : "not shared")",
            ]
        )
        return true
    }

    /// The identity of the file at `location` if it holds exactly `sha`.
    static func verify(root: String, location: FileLocation, sha: SHA256Hash) -> FileIdentity? {
        guard let fd = openRegularFile(root: root, path: location.path) else { return nil }
        defer { close(fd) }
        return verify(fd: fd, size: location.size, sha: sha)
    }

    static func verify(fd: Int32, size: UInt64, sha: SHA256Hash) -> FileIdentity? {
        var info = stat()
        guard fstat(fd, &info) == 0, UInt64(info.st_size) == size,
            let (actual, count) = try? sha256(of: fd, what: "shared file"), count == size, actual == sha
        else { return nil }
        var after = stat()
        guard fstat(fd, &after) == 0 else { return nil }
        let identity = FileIdentity(after)
        return identity == FileIdentity(info) ? identity : nil
    }

    // MARK: Routes

    func addRoutes(to router: Router<BasicRequestContext>) {
        router.get(.init(PeerWire.announcementPath)) { _, _ -> Response in
            guard let announcement = self.announcement() else { throw HTTPError(.notFound) }
            return Response(
                status: .ok,
                headers: [.contentType: "application/json", .cacheControl: "no-cache"],
                body: .init(byteBuffer: ByteBuffer(bytes: announcement.encoded()))
            )
        }
        router.get("/v1/peer/roots/:file") { _, context -> Response in
            // The roots this machine verified: a neighbour walks the same chain (it verifies
            // every root itself; the file is only read, never trusted here).
            guard let file = context.parameters.get("file"), file.hasSuffix(".json"),
                let version = UInt64(file.dropLast(5)),
                let bytes = self.readStateFile("roots/\(version).json", limit: RootSession.maxRootBytes)
            else { throw HTTPError(.notFound) }
            return Response(
                status: .ok,
                headers: [.contentType: "application/json"],
                body: .init(byteBuffer: ByteBuffer(bytes: bytes))
            )
        }
        router.get("/v1/peer/releases/:header/:file") { _, context -> Response in
            guard let header = context.parameters.get("header"), let file = context.parameters.get("file"),
                let release = self.state.withLock({ $0.releases[header] })
            else { throw HTTPError(.notFound) }
            let bytes: [UInt8]
            switch file {
            case "header": bytes = release.headerBytes
            case "manifest": bytes = release.manifestBytes
            default: throw HTTPError(.notFound)
            }
            return Response(
                status: .ok,
                headers: [.contentType: "application/octet-stream"],
                body: .init(byteBuffer: ByteBuffer(bytes: bytes))
            )
        }
        router.get("/v1/peer/objects/:sha") { _, context -> Response in
            guard let name = context.parameters.get("sha"), let sha = SHA256Hash(hex: name), sha.hex == name else {
                throw HTTPError(.notFound)
            }
            return try self.object(sha)
        }
    }

    /// A verified file's bytes. A file that changed since it was hashed is hashed again first; one
    /// that no longer holds its content is forgotten and answers 404.
    func object(_ sha: SHA256Hash) throws -> Response {
        guard let file = state.withLock({ $0.verified[sha] }) else { throw HTTPError(.notFound) }
        guard let fd = openRegularFile(root: configuration.root, path: file.path) else {
            forget(sha)
            throw HTTPError(.notFound)
        }
        let handle = Descriptor(fd)
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw HTTPError(.notFound) }
        if FileIdentity(info) != file.identity {
            guard let identity = Self.verify(fd: fd, size: file.size, sha: sha) else {
                forget(sha)
                throw HTTPError(.notFound)
            }
            state.withLock { $0.verified[sha]?.identity = identity }
        }
        let size = Int(file.size)
        servedBytes.add(size, ordering: .relaxed)
        return Response(
            status: .ok,
            headers: [.contentType: "application/octet-stream", .eTag: "\"\(sha.hex)\""],
            body: ResponseBody(contentLength: size) { writer in
                var offset = 0
                var buffer = [UInt8](repeating: 0, count: 256 << 10)
                while offset < size {
                    let wanted = min(buffer.count, size - offset)
                    let n =
                        (try? Posix.read(handle.fd, into: &buffer, count: wanted, at: UInt64(offset), what: "")) ?? 0
                    guard n > 0 else { throw HTTPError(.internalServerError) }
                    try await writer.write(ByteBuffer(bytes: buffer[..<n]))
                    offset += n
                }
                try await writer.finish(nil)
            }
        )
    }

    /// A small file of the state directory, opened without following a symlink at the last
    /// component; nil when missing or larger than `limit`.
    func readStateFile(_ name: String, limit: Int) -> [UInt8]? {
        let path = configuration.root + "/" + configuration.stateDirectoryName + "/" + name
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes = [UInt8]()
        let read = try? Posix.readChunks(fd, from: 0, what: path) { chunk in
            guard bytes.count + chunk.count <= limit else { throw HTTPError(.notFound) }
            bytes += chunk
        }
        return read == nil ? nil : bytes
    }

    private func forget(_ sha: SHA256Hash) {
        state.withLock { state in
            state.verified[sha] = nil
            state.complete = false
        }
        logger.warning("a shared file no longer holds its content; not serving it", metadata: ["sha256": "\(sha.hex)"])
    }
}

/// A descriptor closed when the response body that reads it is gone.
final class Descriptor: Sendable {
    let fd: Int32
    init(_ fd: Int32) { self.fd = fd }
    deinit { close(fd) }
}

/// Builds the peer server of `upgrade share` (on loopback in tests, port 0).
public func buildShareApplication(
    _ service: ShareService,
    logger: Logger,
    services: [any Service] = [],
    onServerRunning: @escaping @Sendable (Int) async -> Void = { _ in }
) -> some ApplicationProtocol {
    let router = Router()
    if !service.configuration.faults.isEmpty {
        router.add(middleware: PeerFaultMiddleware(faults: service.configuration.faults))
    }
    service.addRoutes(to: router)
    return Application(
        router: router,
        server: .http1(),
        configuration: .init(
            address: .hostname(service.configuration.host, port: service.configuration.port),
            serverName: "upgrade-share"
        ),
        services: services,
        onServerRunning: { channel in
            let port = channel.localAddress?.port ?? service.configuration.port
            service.setPort(port)
            await onServerRunning(port)
        },
        logger: logger
    )
}
