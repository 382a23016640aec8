import Foundation
import Synchronization
import Testing
import UpgradeSystem
import UpgradeTestSupport

#if canImport(Glibc)
import Glibc
#endif

@Suite("File-system floor")
struct FloorTests {
    @Test("a listing yields every name but . and .. as raw bytes, non-UTF-8 and 255-byte names included")
    func listing() throws {
        let tree = try TemporaryTree()
        let long = String(repeating: "n", count: 255)
        for name in ["a", "b.txt", long] { try tree.file(name, "x") }
        try FileManager.default.createDirectory(atPath: tree.path("sub"), withIntermediateDirectories: false)
        let raw: [UInt8] = Array("bad-".utf8) + [0xff, 0xfe]
        let path = Array(tree.root.utf8) + [UInt8(ascii: "/")] + raw + [0]
        let fd = path.withUnsafeBytes {
            open($0.baseAddress!.assumingMemoryBound(to: CChar.self), O_CREAT | O_WRONLY, 0o644)
        }
        #expect(fd >= 0)
        close(fd)
        let directory = try Posix.openAt(AT_FDCWD, tree.root, O_RDONLY | O_DIRECTORY)
        defer { close(directory) }
        var names = [[UInt8]]()
        try Posix.forEachName(directory) { names.append(Array($0)) }
        let expected: [[UInt8]] = [Array("a".utf8), Array("b.txt".utf8), Array(long.utf8), Array("sub".utf8), raw]
        #expect(
            names.sorted { $0.lexicographicallyPrecedes($1) } == expected.sorted { $0.lexicographicallyPrecedes($1) }
        )
        // The caller's descriptor stays open and listable again.
        var again = 0
        try Posix.forEachName(directory) { _ in again += 1 }
        #expect(again == 5)
    }

    @Test("an exclusive lock makes a second one wait and then fail naming our pid; released, it can be taken again")
    func exclusiveLock() throws {
        let tree = try TemporaryTree()
        let path = tree.path("lock")
        do {
            let first = try FileLock(path, mode: .exclusive, timeout: 1)
            #expect(FileLock.holder(path) == (held: true, pid: getpid()))
            let started = Date()
            do {
                _ = try FileLock(path, mode: .exclusive, timeout: 0.3)
                Issue.record("a second exclusive lock was granted")
            } catch let busy as FileLock.Busy {
                #expect(busy.pid == getpid())
                #expect(busy.waited == 0.3)
                #expect(Date().timeIntervalSince(started) >= 0.3)
            }
            do {
                _ = try FileLock(path, mode: .shared, timeout: 0.1)
                Issue.record("a shared lock was granted beside an exclusive one")
            } catch is FileLock.Busy {}
            withExtendedLifetime(first) {}
        }
        #expect(FileLock.holder(path).held == false)
        let again = try FileLock(path, mode: .exclusive, timeout: 0)
        withExtendedLifetime(again) {}
    }

    @Test("shared locks coexist and keep a writer out; a shared lock never creates the file")
    func sharedLocks() throws {
        let tree = try TemporaryTree()
        let path = tree.path("lock")
        do {
            _ = try FileLock(path, mode: .shared, timeout: 0)
            Issue.record("a shared lock created a missing lock file")
        } catch let error as SystemCallError {
            #expect(error.code == ENOENT)
            #expect(error.description.contains(path))
        }
        #expect(!FileSystem.exists(path))
        try tree.file("lock", [])
        let one = try FileLock(path, mode: .shared, timeout: 0)
        let two = try FileLock(path, mode: .shared, timeout: 0)
        #expect(throws: FileLock.Busy.self) { try FileLock(path, mode: .exclusive, timeout: 0.1) }
        withExtendedLifetime((one, two)) {}
    }

    @Test("a lock held by another process is waited for until that process lets go")
    func lockAcrossProcesses() throws {
        let tree = try TemporaryTree()
        let path = tree.path("lock")
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/usr/bin/flock")
        holder.arguments = ["--exclusive", path, "/bin/sleep", "1"]
        try holder.run()
        defer { holder.waitUntilExit() }
        // Wait until flock(1) holds it.
        let deadline = Date().addingTimeInterval(10)
        while !FileLock.holder(path).held && Date() < deadline { usleep(10_000) }
        #expect(FileLock.holder(path).held)
        let started = Date()
        let lock = try FileLock(path, mode: .exclusive, timeout: 20)
        #expect(Date().timeIntervalSince(started) > 0.2)
        #expect(FileLock.holder(path).pid == getpid())
        withExtendedLifetime(lock) {}
    }

    @Test("readChunks delivers every byte in order, from the position or from an offset with pread")
    func readChunks() throws {
        let tree = try TemporaryTree()
        let bytes = (0..<100_003).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        let path = try tree.file("data", bytes)
        let fd = try Posix.openAt(AT_FDCWD, path, O_RDONLY)
        defer { close(fd) }
        var seen = [UInt8]()
        var chunks = 0
        let count = try Posix.readChunks(fd, chunkSize: 4_096, what: path) { chunk in
            seen += chunk
            chunks += 1
        }
        #expect(count == UInt64(bytes.count))
        #expect(seen == bytes)
        #expect(chunks == 25)
        // pread from an offset leaves the position (now at the end) alone.
        var tail = [UInt8]()
        try Posix.readChunks(fd, from: 100_000, chunkSize: 2, what: path) { tail += $0 }
        #expect(tail == Array(bytes[100_000...]))
        #expect(lseek(fd, 0, SEEK_CUR) == off_t(bytes.count))
        // readFully past the end is short, not an error.
        var buffer = [UInt8](repeating: 0, count: 10)
        #expect(try Posix.readFully(fd, into: &buffer, at: 99_998, what: path) == 5)
        #expect(Array(buffer[..<5]) == Array(bytes[99_998...]))
    }

    @Test("writeAll through a pipe smaller than the data survives short writes; readAll gets it all")
    func shortWrites() throws {
        var ends: [Int32] = [0, 0]
        #expect(pipe(&ends) == 0)
        let readEnd = ends[0]
        let bytes = (0..<1_000_000).map { UInt8(truncatingIfNeeded: $0 % 251) }
        let received = Mutex<[UInt8]>([])
        let reader = Thread {
            let all = (try? Posix.readAll(readEnd, what: "pipe")) ?? []
            received.withLock { $0 = all }
        }
        reader.start()
        try Posix.writeAll(ends[1], bytes, what: "pipe")
        close(ends[1])
        let deadline = Date().addingTimeInterval(20)
        while received.withLock({ $0.isEmpty }) && Date() < deadline { usleep(10_000) }
        close(ends[0])
        #expect(received.withLock { $0 } == bytes)
    }

    @Test("a read interrupted by a signal (no SA_RESTART) is retried, not reported as an error")
    func interruptedRead() throws {
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in }
        action.sa_flags = 0  // no SA_RESTART: read(2) returns EINTR
        sigemptyset(&action.sa_mask)
        var previous = sigaction()
        #expect(sigaction(SIGUSR2, &action, &previous) == 0)
        defer { sigaction(SIGUSR2, &previous, nil) }
        var ends: [Int32] = [0, 0]
        #expect(pipe(&ends) == 0)
        let readEnd = ends[0]
        defer {
            close(ends[0])
            close(ends[1])
        }
        let thread = Mutex<pthread_t?>(nil)
        let outcome = Mutex<String?>(nil)
        let reader = Thread {
            // The mask is inherited from the thread that made this one; let SIGUSR2 in.
            var set = sigset_t()
            sigemptyset(&set)
            sigaddset(&set, SIGUSR2)
            pthread_sigmask(SIG_UNBLOCK, &set, nil)
            thread.withLock { $0 = pthread_self() }
            var buffer = [UInt8](repeating: 0, count: 16)
            do {
                let count = try Posix.read(readEnd, into: &buffer, what: "pipe")
                outcome.withLock { $0 = String(decoding: buffer[..<count], as: UTF8.self) }
            } catch {
                outcome.withLock { $0 = "error: \(error)" }
            }
        }
        reader.start()
        while thread.withLock({ $0 }) == nil { usleep(1_000) }
        usleep(100_000)  // the reader is blocked in read(2) by now
        for _ in 0..<3 {
            pthread_kill(thread.withLock { $0 }!, SIGUSR2)
            usleep(20_000)
        }
        #expect(outcome.withLock { $0 } == nil)
        try Posix.writeAll(ends[1], Array("hello".utf8), what: "pipe")
        let deadline = Date().addingTimeInterval(10)
        while outcome.withLock({ $0 }) == nil && Date() < deadline { usleep(5_000) }
        #expect(outcome.withLock { $0 } == "hello")
    }

    @Test("AtomicFile.write replaces the file with the mode asked for and leaves no temporary file")
    func atomicWrite() throws {
        let tree = try TemporaryTree()
        let path = tree.path("config")
        try tree.file("config", "old")
        try AtomicFile.write(Array("new content".utf8), to: path, mode: 0o600)
        #expect(try AtomicFile.read(path) == Array("new content".utf8))
        #expect(try Posix.statAt(AT_FDCWD, path).st_mode & 0o7777 == 0o600)
        #expect(FileSystem.list(tree.root) == ["config"])
        #expect(throws: SystemCallError.self) { try AtomicFile.write([1], to: tree.path("missing/dir/file")) }
        #expect(FileSystem.list(tree.root) == ["config"])
        try FileSystem.makeDirectories(tree.path("a/b/c"))
        #expect(FileSystem.isDirectory(tree.path("a/b/c")))
    }
}
