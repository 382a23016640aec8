#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import UpgradeCore
internal import UpgradeHash

/// Hashes files on `concurrency` tasks that pull work from a shared counter, each with its own
/// read buffer. Reads are blocking syscalls on purpose: with a warm page cache the work is
/// CPU-bound, and one task per core is what keeps both cores busy without oversubscribing.
struct ParallelHasher: Sendable {
    let rootFD: Int32
    let options: ScanOptions

    /// A file's digest and the identity of the file actually read.
    struct Digest: Sendable {
        var xxh128: XXH128Digest
        var identity: FileIdentity
    }

    /// Digests in the order of `jobs`.
    func hash(_ jobs: [HashJob]) async throws(ScanError) -> [Digest] {
        guard !jobs.isEmpty else { return [] }
        let next = WorkCounter()
        let workers = max(1, min(options.concurrency, jobs.count))
        do {
            return try await withThrowingTaskGroup(of: [(Int, Digest)].self) { group in
                for _ in 0..<workers {
                    group.addTask {
                        var buffer = [UInt8](repeating: 0, count: options.readBufferSize)
                        var hasher = XXH128Hasher()
                        var done = [(Int, Digest)]()
                        while true {
                            let index = next.take()
                            guard index < jobs.count else { break }
                            try Task.checkCancellation()
                            done.append((index, try hashFile(jobs[index], buffer: &buffer, hasher: &hasher)))
                        }
                        return done
                    }
                }
                var results = [Digest?](repeating: nil, count: jobs.count)
                for try await batch in group {
                    for (index, digest) in batch { results[index] = digest }
                }
                return results.map { $0! }
            }
        } catch let error as ScanError {
            throw error
        } catch {
            throw .changedDuringScan(path: "(cancelled)")
        }
    }

    private func hashFile(_ job: HashJob, buffer: inout [UInt8], hasher: inout XXH128Hasher) throws(ScanError) -> Digest {
        let fd: Int32
        do {
            fd = try Posix.openAt(rootFD, job.path, O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK)
        } catch {
            if error.code == ELOOP || error.code == ENOENT { throw .changedDuringScan(path: job.path) }
            throw .unreadable(path: job.path, error)
        }
        defer { close(fd) }
        let info: stat
        do {
            info = try Posix.stat(fd)
        } catch {
            throw .unreadable(path: job.path, error)
        }
        // The walk saw this inode; anything else means the tree moved under us.
        let identity = FileIdentity(info)
        guard info.fileType == S_IFREG, identity.inode == job.identity.inode, identity.device == job.identity.device else {
            throw .changedDuringScan(path: job.path)
        }
        let expected = Int(identity.size)
        if expected >= options.readBufferSize {
            _ = posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL)
        }

        hasher.reset()
        var total = 0
        var oneShot: XXH128Digest?
        let result: Int32 = buffer.withUnsafeMutableBytes { raw in
            while true {
                let count = read(fd, raw.baseAddress, raw.count)
                if count < 0 {
                    if errno == EINTR { continue }
                    return errno
                }
                if count == 0 { return 0 }
                // A file that fits the buffer in one read: hash it in one shot, cheaper than streaming.
                if total == 0 && count == expected && count < raw.count {
                    oneShot = XXH128Hasher.hash(bufferPointer: UnsafeRawBufferPointer(rebasing: raw[..<count]))
                    total = count
                    continue
                }
                // More bytes after a one-shot read: the file grew after fstat; the size check fails below.
                if oneShot != nil {
                    total += count
                    continue
                }
                hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: raw[..<count]))
                total += count
            }
        }
        if result != 0 { throw .unreadable(path: job.path, SystemCallError(call: "read", code: result)) }
        guard total == expected else { throw .changedDuringScan(path: job.path) }
        return Digest(xxh128: oneShot ?? hasher.finalize(), identity: identity)
    }
}

/// Hands out job indices to worker tasks.
final class WorkCounter: Sendable {
    private let value = Atomic<Int>(0)

    func take() -> Int {
        value.add(1, ordering: .relaxed).oldValue
    }
}
