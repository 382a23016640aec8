import Crypto
import UpgradeCore
import UpgradeSystem
import UpgradeZstd

#if canImport(Glibc)
import Glibc
#endif

/// Content-addressed, zstd-compressed objects: one per distinct file content, named by the
/// SHA-256 of the uncompressed bytes.
struct ObjectStore: Sendable {
    let layout: RepositoryLayout
    let level: Int32

    /// What storing a file did.
    struct Stored: Sendable {
        var sha256: SHA256Hash
        /// False when the object was already in the repository.
        var written: Bool
        var compressedSize: UInt64
    }

    /// Stores the file at `path` (absolute) whose scan said `size` bytes: computes its SHA-256,
    /// and unless the object exists, compresses it into a temporary file, fsyncs it and renames
    /// it into place. The fan-out directory still needs an fsync (see ``syncDirectories(_:)``).
    func store(path: String, size: UInt64) throws -> Stored {
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw SystemCallError(call: "open \(path)", code: errno) }
        defer { close(fd) }
        // Pass 1: the SHA-256 names the object; existing content costs one read, no compression.
        var hasher = SHA256()
        let total = try Posix.readChunks(fd, what: path) { hasher.update(bufferPointer: $0) }
        guard total == size else { throw PublishError.changedDuringPublish(path: path) }
        let sha = SHA256Hash(bytes: Array(hasher.finalize()))!
        let target = layout.object(sha)
        if let existing = FileSystem.size(target) {
            return Stored(sha256: sha, written: false, compressedSize: existing)
        }

        // Pass 2: compress while hashing again, so the stored bytes are the bytes named.
        try FileSystem.makeDirectories(layout.objectDirectory(sha))
        // Unique per writer: two tasks storing the same content race harmlessly, each renaming
        // identical bytes into place.
        let temporary = "\(target).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let out = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o644)
        guard out >= 0 else { throw SystemCallError(call: "open \(temporary)", code: errno) }
        var written: UInt64 = 0
        do {
            defer { close(out) }
            guard lseek(fd, 0, SEEK_SET) == 0 else { throw SystemCallError(call: "lseek \(path)", code: errno) }
            let compressor = try ZstdCompressor(level: level)
            compressor.setPledgedSize(size)
            var again = SHA256()
            let sink: ([UInt8]) throws -> Void = { chunk in
                try Posix.writeAll(out, chunk, what: temporary)
                written += UInt64(chunk.count)
            }
            let count = try Posix.readChunks(fd, what: path) { chunk in
                again.update(bufferPointer: chunk)
                try compressor.compress(chunk, end: false, sink: sink)
            }
            try compressor.compress(UnsafeRawBufferPointer(start: nil, count: 0), end: true, sink: sink)
            guard count == size, SHA256Hash(bytes: Array(again.finalize())) == sha else {
                throw PublishError.changedDuringPublish(path: path)
            }
            guard fsync(out) == 0 else { throw SystemCallError(call: "fsync \(temporary)", code: errno) }
        } catch {
            unlink(temporary)
            throw error
        }
        guard rename(temporary, target) == 0 else {
            let code = errno
            unlink(temporary)
            throw SystemCallError(call: "rename \(temporary)", code: code)
        }
        return Stored(sha256: sha, written: true, compressedSize: written)
    }

    /// Makes the renames of new objects durable.
    func syncDirectories(_ shas: some Sequence<SHA256Hash>) throws {
        for directory in Set(shas.map(layout.objectDirectory)).sorted() {
            try AtomicFile.syncDirectory(directory)
        }
        if FileSystem.isDirectory(layout.objects) { try AtomicFile.syncDirectory(layout.objects) }
    }

    /// Decompresses the object `sha` (at most `size` bytes) and checks its SHA-256 and size.
    func verify(_ sha: SHA256Hash, size: UInt64) -> String? {
        let path = layout.object(sha)
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return "missing (\(String(cString: strerror(errno))))" }
        defer { close(fd) }
        do {
            let decompressor = try ZstdDecompressor(limit: size)
            var hasher = SHA256()
            try Posix.readChunks(fd, what: path) { chunk in
                try decompressor.decompress(chunk) { hasher.update(bufferPointer: $0) }
            }
            guard decompressor.finished else { return "truncated zstd data" }
            guard decompressor.produced == size else {
                return "decompresses to \(decompressor.produced) bytes, expected \(size)"
            }
            let actual = SHA256Hash(bytes: Array(hasher.finalize()))!
            guard actual == sha else { return "content SHA-256 is \(actual.hex)" }
            return nil
        } catch {
            return "\(error)"
        }
    }
}
