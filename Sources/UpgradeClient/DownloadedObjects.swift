import Crypto
import Foundation
import Synchronization
import UpgradeApply
import UpgradeCore
import UpgradeProtocol
import UpgradeSystem
import UpgradeZstd

#if canImport(Glibc)
import Glibc
#endif

/// Shared state of the download tasks.
final class DownloadCounters: Sendable {
    struct State {
        var bytes: UInt64 = 0
        var objects = 0
        var resumed = 0
        var done = 0
    }

    let state = Mutex(State())
    private let index = Atomic<Int>(0)

    func takeIndex() -> Int { index.add(1, ordering: .relaxed).oldValue }

    /// Applies `update` and returns the progress it leaves: objects done and bytes so far.
    func advance(objectsTotal: Int, bytesTotal: UInt64, _ update: (inout State) -> Void) -> SyncProgress {
        state.withLock { counts in
            update(&counts)
            return SyncProgress(
                objectsDone: counts.done,
                objectsTotal: objectsTotal,
                bytesDone: counts.bytes,
                bytesTotal: bytesTotal
            )
        }
    }
}

/// Small payloads that arrived in packs, checked and uncompressed, held in memory until this
/// run's install (64 MiB in all by default). Each one spares the downloads directory a file
/// written, read back and unlinked: on a 1,533-file change those files were 1,533 inode
/// creations contending for one directory's lock. What does not fit is kept as a file, as a
/// single download is; a killed run fetches the held ones again (a pack is one round trip).
final class HeldPayloads: Sendable {
    /// Bytes held at most.
    let budget: Int

    private struct State {
        var bytes = 0
        var contents = [SHA256Hash: [UInt8]]()
    }

    private let state = Mutex(State())

    init(budget: Int = 64 << 20) { self.budget = budget }

    /// Holds `bytes` as the content `sha`; false when the budget is spent (keep a file instead).
    func hold(_ bytes: [UInt8], as sha: SHA256Hash) -> Bool {
        state.withLock { state in
            if state.contents[sha] != nil { return true }
            guard state.bytes + bytes.count <= budget else { return false }
            state.bytes += bytes.count
            state.contents[sha] = bytes
            return true
        }
    }

    func bytes(_ sha: SHA256Hash) -> [UInt8]? { state.withLock { $0.contents[sha] } }

    func holds(_ sha: SHA256Hash) -> Bool { state.withLock { $0.contents[sha] != nil } }
}

/// The payloads of one run: those held in memory (``HeldPayloads``), and those downloaded into
/// the state directory: zstd objects named by SHA-256, or deltas (`<sha>.delta`) applied to a
/// base file of the root. Either way verified again by the engine as they are staged (before
/// the commit, so every base is still the old content).
struct DownloadedObjects: PayloadSource {
    let directory: String
    let root: String
    /// Target SHA-256 → base path, for the contents that came as deltas.
    var deltaBases: [SHA256Hash: String] = [:]
    var held = HeldPayloads()

    func stream(_ content: FileContent, into sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        if let sha = content.sha256, let bytes = held.bytes(sha) {
            try bytes.withUnsafeBytes { try sink($0) }
            return
        }
        if let sha = content.sha256 {
            // From a peer, uncompressed (checked on arrival, and again by the engine as it stages).
            let fd = open(directory + "/" + sha.hex + ".raw", O_RDONLY | O_CLOEXEC)
            if fd >= 0 {
                defer { close(fd) }
                try Posix.readChunks(fd, from: 0, what: "payload \(sha.hex)", sink)
                return
            }
        }
        if let sha = content.sha256, let base = deltaBases[sha],
            let delta = FileManager.default.contents(atPath: directory + "/" + sha.hex + ".delta")
        {
            let bytes = try ZstdDelta.decode(
                [UInt8](delta),
                base: try DeltaBase.read(root: root, path: base),
                maxSize: Int(content.size)
            )
            try bytes.withUnsafeBytes { try sink($0) }
            return
        }
        guard let sha = content.sha256, let data = FileManager.default.contents(atPath: directory + "/" + sha.hex)
        else {
            throw ApplyError.verification("payload \(content.sha256?.hex ?? "?") was not downloaded")
        }
        let decompressor = try ZstdDecompressor(limit: content.size)
        try data.withUnsafeBytes { raw in try decompressor.decompress(raw, sink: sink) }
        guard decompressor.finished else { throw ApplyError.verification("payload \(sha.hex) is truncated") }
    }
}

/// A placeholder until the payloads are known.
struct NoPayloads: PayloadSource {
    func stream(_ content: FileContent, into sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        throw ApplyError.verification("no payload source")
    }
}

extension PlanRequest.Device {
    static var hostArchitecture: String {
        #if arch(x86_64)
        "x86_64"
        #elseif arch(arm64)
        "aarch64"
        #else
        "unknown"
        #endif
    }

    /// A stable id that does not reveal the machine id: SHA-256 of /etc/machine-id, 16 hex digits.
    static func localID() -> String {
        let raw = (try? String(contentsOfFile: "/etc/machine-id", encoding: .utf8)) ?? ProcessInfo.processInfo.hostName
        return String(SHA256Hash(bytes: Array(SHA256.hash(data: Array(("upgrade:" + raw).utf8))))!.hex.prefix(16))
    }
}

extension String {
    func trimmingSuffix(_ suffix: String) -> String {
        var result = self
        while result.hasSuffix(suffix) { result.removeLast(suffix.count) }
        return result
    }
}

extension DownloadedObjects {
    /// Writes a payload that arrived in a pack to `path`, without fsync: downloads are a cache
    /// that the engine verifies again when it stages them, so a file a crash cut short is
    /// refused and fetched again, never installed (Foundation's `createFile` fsyncs each file:
    /// 1,533 fsyncs, 0.6 s of a 1,533-file sync here). False when it cannot be written.
    static func keep(_ bytes: ArraySlice<UInt8>, at path: String) -> Bool {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        do {
            try bytes.withUnsafeBytes { try Posix.writeAll(fd, $0, what: path) }
            return true
        } catch {
            return false
        }
    }
}
