import Synchronization
import UpgradeCore
internal import UpgradeHash
import UpgradeSystem

#if canImport(Glibc)
import Glibc
#endif

/// Hashes the large files the walk left behind on `concurrency` tasks that pull work from a
/// shared counter, each with its own read buffer and hasher. Reads are blocking syscalls on
/// purpose: with a warm page cache the work is CPU-bound, and one task per core keeps every core
/// busy without oversubscribing.
struct ParallelHasher: Sendable {
    let rootFD: Int32
    let options: ScanOptions

    /// Digests in the order of `jobs`.
    func hash(_ jobs: [HashJob]) async throws -> [FileHashing.Digest] {
        guard !jobs.isEmpty else { return [] }
        let next = WorkCounter()
        let workers = max(1, min(options.concurrency, jobs.count))
        return try await withThrowingTaskGroup(of: [(Int, FileHashing.Digest)].self) { group in
            for _ in 0..<workers {
                group.addTask {
                    var buffer = [UInt8](repeating: 0, count: options.readBufferSize)
                    var hasher = XXH128Hasher()
                    var done = [(Int, FileHashing.Digest)]()
                    while true {
                        let index = next.take()
                        guard index < jobs.count else { break }
                        try Task.checkCancellation()
                        let job = jobs[index]
                        let digest = try FileHashing.hash(
                            directoryFD: rootFD,
                            name: job.path,
                            path: job.path,
                            expected: job.identity,
                            buffer: &buffer,
                            hasher: &hasher
                        )
                        done.append((index, digest))
                    }
                    return done
                }
            }
            var results = [FileHashing.Digest?](repeating: nil, count: jobs.count)
            for try await batch in group {
                for (index, digest) in batch { results[index] = digest }
            }
            return results.map { $0! }
        }
    }
}

/// Reading and hashing one file.
enum FileHashing {
    /// A file's digest and the identity of the file actually read.
    struct Digest: Sendable {
        var xxh128: XXH128Digest
        var identity: FileIdentity
    }

    /// Opens `name` relative to `directoryFD` without following a final symlink, checks it is
    /// the inode the walk saw, and hashes it: in one shot when it fits `buffer`, streaming
    /// otherwise (which needs `hasher`).
    static func hash(
        directoryFD: Int32,
        name: String,
        path: String,
        expected: FileIdentity,
        buffer: inout [UInt8],
        hasher: UnsafeMutablePointer<XXH128Hasher>?
    ) throws(ScanError) -> Digest {
        let fd: Int32
        do {
            fd = try Posix.openAt(directoryFD, name, O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK)
        } catch {
            if error.code == ELOOP || error.code == ENOENT { throw .changedDuringScan(path: path) }
            throw .unreadable(path: path, error)
        }
        defer { close(fd) }
        let info: stat
        do {
            info = try Posix.stat(fd)
        } catch {
            throw .unreadable(path: path, error)
        }
        // The walk saw this inode; anything else means the tree moved under us.
        let identity = FileIdentity(info)
        guard info.fileType == S_IFREG, identity.inode == expected.inode, identity.device == expected.device else {
            throw .changedDuringScan(path: path)
        }
        let size = Int(identity.size)
        if size < buffer.count {
            // Fits: one read, one-shot hash. A file that grows after the fstat is seen by its
            // new mtime on the next scan; one that shrinks fails the length check.
            var count = 0
            do throws(SystemCallError) {
                while count < size {
                    let read = try Posix.read(fd, into: &buffer, from: count, what: "")
                    if read == 0 { break }
                    count += read
                }
            } catch {
                throw .unreadable(path: path, error)
            }
            guard count == size else { throw .changedDuringScan(path: path) }
            let digest = buffer.withUnsafeBytes {
                XXH128Hasher.hash(bufferPointer: UnsafeRawBufferPointer(rebasing: $0[..<count]))
            }
            return Digest(xxh128: digest, identity: identity)
        }
        guard let hasher else { preconditionFailure("streaming hash of \(path) without a hasher") }
        _ = posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL)
        hasher.pointee.reset()
        var total = 0
        do throws(SystemCallError) {
            while true {
                let read = try Posix.read(fd, into: &buffer, what: "")
                if read == 0 { break }
                buffer.withUnsafeBytes {
                    hasher.pointee.update(bufferPointer: UnsafeRawBufferPointer(rebasing: $0[..<read]))
                }
                total += read
            }
        } catch {
            throw .unreadable(path: path, error)
        }
        guard total == size else { throw .changedDuringScan(path: path) }
        return Digest(xxh128: hasher.pointee.finalize(), identity: identity)
    }

    /// The streaming variant with an inout hasher.
    static func hash(
        directoryFD: Int32,
        name: String,
        path: String,
        expected: FileIdentity,
        buffer: inout [UInt8],
        hasher: inout XXH128Hasher
    ) throws(ScanError) -> Digest {
        try withUnsafeMutablePointer(to: &hasher) { pointer throws(ScanError) in
            try hash(
                directoryFD: directoryFD,
                name: name,
                path: path,
                expected: expected,
                buffer: &buffer,
                hasher: pointer
            )
        }
    }
}

/// Hands out job indices to worker tasks.
final class WorkCounter: Sendable {
    private let value = Atomic<Int>(0)

    func take() -> Int {
        value.add(1, ordering: .relaxed).oldValue
    }
}
