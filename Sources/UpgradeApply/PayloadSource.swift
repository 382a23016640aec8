import Crypto
import Foundation
import Synchronization
import UpgradeBundle
public import UpgradeCore
import UpgradeSystem
import UpgradeZstd

#if canImport(Glibc)
import Glibc
#endif

/// Where the bytes of a file come from: a bundle's compressed objects, the backups of an earlier
/// transaction, later the network. Every byte is checked against the signed SHA-256 and size as
/// it is written into staging, so what is installed is what was verified.
public protocol PayloadSource: Sendable {
    /// Streams the content `content` names into `sink`, uncompressed, in chunks.
    func stream(_ content: FileContent, into sink: (UnsafeRawBufferPointer) throws -> Void) throws
}

/// Payloads from an offline bundle.
public struct BundlePayloads: PayloadSource {
    let bundle: BundleReader
    /// The root deltas apply to (their bases are files of it, read before the commit).
    let root: String

    public init(bundle: BundleReader, root: String) {
        self.bundle = bundle
        self.root = root
    }

    public func stream(_ content: FileContent, into sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        if let sha = content.sha256, let delta = bundle.deltas[sha] {
            let bytes = try bundle.read(delta.entry, from: 0, count: Int(delta.entry.length))
            let baseBytes = try DeltaBase.read(root: root, path: delta.base)
            let result: [UInt8]
            do {
                result = try ZstdDelta.decode(bytes, base: baseBytes, maxSize: Int(content.size))
            } catch {
                throw ApplyError.verification(
                    "the bundle holds \(sha.hex.prefix(12)) as a delta from \(delta.base), which here is not the file the bundle starts from (modified locally?); a full bundle (`upgrade bundle` without --from) installs over local changes"
                )
            }
            try result.withUnsafeBytes { try sink($0) }
            return
        }
        guard let sha = content.sha256, let entry = bundle.objects[sha] else {
            throw ApplyError.verification("the bundle lacks the payload \(content.sha256?.hex ?? "(no SHA-256)")")
        }
        let decompressor = try ZstdDecompressor(limit: content.size)
        var offset: UInt64 = 0
        while offset < entry.length {
            let count = Int(min(1 << 20, entry.length - offset))
            let chunk = try bundle.read(entry, from: offset, count: count)
            try chunk.withUnsafeBytes { try decompressor.decompress($0, into: sink) }
            offset += UInt64(count)
        }
        guard decompressor.finished else { throw ApplyError.verification("payload \(sha.hex) is truncated") }
    }
}

/// The file a binary delta starts from: a file of the root, read before the commit (so it still
/// holds the old content), opened without following a final symlink. The delta's result is
/// checked against the signed SHA-256, so a wrong base can only fail, never install.
public enum DeltaBase {
    public static func read(root: String, path: String) throws -> [UInt8] {
        try PathRules.validate(path)
        let fd = open(root + "/" + path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else {
            throw ApplyError.verification("delta base \(path) cannot be opened: \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var bytes = [UInt8]()
        try Posix.readChunks(fd, from: 0, what: path) { bytes += $0 }
        return bytes
    }
}

/// Payloads from plain files, by SHA-256 (the backups kept for `upgrade rollback`).
struct FilePayloads: PayloadSource {
    let tree: SafeTree
    let files: [SHA256Hash: String]

    func stream(_ content: FileContent, into sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        guard let sha = content.sha256, let name = files[sha] else {
            throw ApplyError.nothingToRollBack("the backup of content \(content.sha256?.hex ?? "?") is missing")
        }
        try tree.withParent(name) { parentFD, last in
            let fd = openat(parentFD, last, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
            guard fd >= 0 else { throw SystemCallError(call: "open \(tree.display)/\(name)", code: errno) }
            defer { close(fd) }
            try Posix.readChunks(fd, from: 0, what: "\(tree.display)/\(name)", sink)
        }
    }
}

extension ZstdDecompressor {
    func decompress(_ input: UnsafeRawBufferPointer, into sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        try decompress(input, sink: sink)
    }
}

/// Writes one payload into the staging directory while hashing it; refuses any byte past the
/// signed size and any content whose SHA-256 differs.
enum Stager {
    /// One file to stage: its signed content and mode, and its name in the staging directory.
    struct Job: Sendable {
        let content: FileContent
        let mode: UInt32
        let name: String
    }

    /// Files from this size on are staged beside the small ones (``stage(_:in:from:)``).
    static let largeFile: UInt64 = 64 << 10

    /// Stages `jobs`. Large files (``largeFile`` and up) are staged on other threads (one per
    /// core, at most 3) while the calling thread stages the small ones in plan order, then
    /// helps with the large. A large file's time goes to copying into the page cache and SHA-256,
    /// which another core can do; a small file's goes to creating its inode, and creations in
    /// one directory serialize on its lock, so small files staged on two threads at once were
    /// no faster than on one, and more system time (the 100,000-file pair's 1,533). The first
    /// failure stops the others and is thrown; what was staged stays for the caller's cleanup,
    /// as with one thread. Under a fault-injecting observer every file is staged in plan order
    /// on the calling thread, so the k-th change is the same one in every run of a crash sweep.
    static func stage(_ jobs: [Job], in staging: SafeTree, from source: any PayloadSource) throws {
        let small = jobs.filter { $0.content.size < largeFile }
        let large = jobs.filter { $0.content.size >= largeFile }
        let helpers = min(3, ProcessInfo.processInfo.activeProcessorCount - 1, large.count)
        guard helpers > 0, staging.observer is NoObserver else {
            for job in jobs { try stage(job, in: staging, from: source) }
            return
        }
        let shared = Mutex<(next: Int, failure: (any Error)?)>((0, nil))
        @Sendable func fail(_ error: any Error) {
            shared.withLock { state in if state.failure == nil { state.failure = error } }
        }
        @Sendable func stageLarge() {
            while true {
                let index = shared.withLock { state -> Int? in
                    guard state.failure == nil, state.next < large.count else { return nil }
                    defer { state.next += 1 }
                    return state.next
                }
                guard let index else { return }
                do {
                    try stage(large[index], in: staging, from: source)
                } catch {
                    return fail(error)
                }
            }
        }
        DispatchQueue.concurrentPerform(iterations: helpers + 1) { worker in
            guard worker == 0 else { return stageLarge() }
            for job in small {
                guard shared.withLock({ $0.failure == nil }) else { return }
                do {
                    try stage(job, in: staging, from: source)
                } catch {
                    return fail(error)
                }
            }
            stageLarge()
        }
        if let failure = shared.withLock({ $0.failure }) { throw failure }
    }

    /// Stages one file.
    static func stage(_ job: Job, in staging: SafeTree, from source: any PayloadSource) throws {
        let (content, mode, name) = (job.content, job.mode, job.name)
        guard let expected = content.sha256 else { throw ApplyError.unsafePlan("no SHA-256 for staged file \(name)") }
        try staging.observer.willMutate("stage \(name)")
        let fd = openat(staging.fd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SystemCallError(call: "create \(staging.display)/\(name)", code: errno) }
        defer { close(fd) }
        var hasher = SHA256()
        var written: UInt64 = 0
        try source.stream(content) { chunk in
            written += UInt64(chunk.count)
            guard written <= content.size else {
                throw ApplyError.verification("payload for \(expected.hex) runs past its signed size \(content.size)")
            }
            hasher.update(bufferPointer: chunk)
            try Posix.writeAll(fd, chunk, what: "\(staging.display)/\(name)")
        }
        let actual = SHA256Hash(bytes: Array(hasher.finalize()))!
        guard written == content.size, actual == expected else {
            throw ApplyError.verification(
                "payload \(expected.hex) has SHA-256 \(actual.hex) and \(written) bytes (expected \(content.size))"
            )
        }
        guard fchmod(fd, mode_t(mode)) == 0 else {
            throw SystemCallError(call: "chmod \(staging.display)/\(name)", code: errno)
        }
    }
}
