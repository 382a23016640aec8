import Foundation
import Testing
import UpgradeCore
import UpgradeHash
import UpgradeScan
import UpgradeTestSupport

#if canImport(Glibc)
import Glibc
#endif

@Suite("Scanner")
struct ScannerTests {
    /// Options for tests: no racy window, so a tree written a moment ago is cached at once.
    static var quick: ScanOptions {
        var options = ScanOptions()
        options.racyWindowNanoseconds = 0
        return options
    }

    @Test("records kind, mode, size, target and hash of every entry; excludes the state directory")
    func recordsEverything() async throws {
        let tree = try TemporaryTree()
        try tree.file("bin/tool", "#!/bin/sh\necho hi\n", mode: 0o755)
        try tree.file("empty", [])
        try tree.file("名前 with space.txt", "unicode")
        try tree.directory("emptydir", mode: 0o700)
        try tree.symlink("link", to: "bin/tool")
        try tree.symlink("dangling", to: "/does/not/exist")
        try tree.file(".upgrade/statcache", "not part of the tree")

        let result = try await Scanner(options: Self.quick).scan(root: tree.root)
        let index = result.manifest.index()
        #expect(
            result.manifest.entries.map(\.path) == [
                "bin", "bin/tool", "dangling", "empty", "emptydir", "link", "名前 with space.txt",
            ]
        )
        #expect(index["bin/tool"]?.mode == 0o755)
        #expect(index["bin/tool"]?.file?.size == 18)
        #expect(index["bin/tool"]?.file?.xxh128 == XXH128Hasher.hash(data: Array("#!/bin/sh\necho hi\n".utf8)))
        #expect(index["empty"]?.file?.size == 0)
        #expect(index["emptydir"] == .directory("emptydir", mode: 0o700))
        #expect(index["link"] == .symlink("link", target: "bin/tool"))
        #expect(index["dangling"] == .symlink("dangling", target: "/does/not/exist"))
        #expect(result.statistics.filesHashed == 3)
    }

    @Test(
        "streaming and one-shot hashing agree across the read-buffer boundary",
        arguments: [0, 1, 240, 4095, 4096, 4097, 65_537]
    )
    func bufferBoundaries(size: Int) async throws {
        let tree = try TemporaryTree()
        let bytes = noise(size, seed: UInt64(size))
        try tree.file("f", bytes)
        var options = Self.quick
        options.readBufferSize = 4096
        let result = try await Scanner(options: options).scan(root: tree.root)
        #expect(result.manifest.entries.first?.file?.xxh128 == XXH128Hasher.hash(data: bytes))
        var hasher = XXH128Hasher()
        for chunk in stride(from: 0, to: bytes.count, by: 1000) {
            hasher.update(data: bytes[chunk..<min(bytes.count, chunk + 1000)])
        }
        #expect(hasher.finalize() == XXH128Hasher.hash(data: bytes))
    }

    @Test("a FIFO or socket is an error naming the path, or a warning with skip")
    func specialFiles() async throws {
        let tree = try TemporaryTree()
        try tree.file("ok", "fine")
        try tree.directory("run")
        #expect(mkfifo(tree.path("run/pipe"), 0o644) == 0)

        await #expect(throws: ScanError.specialFile(path: "run/pipe", kind: "FIFO")) {
            try await Scanner(options: Self.quick).scan(root: tree.root)
        }
        var options = Self.quick
        options.specialFiles = .skip
        let result = try await Scanner(options: options).scan(root: tree.root)
        #expect(result.warnings == [ScanWarning(path: "run/pipe", reason: "it is a FIFO")])
        #expect(result.manifest.entries.map(\.path) == ["ok", "run"])

        let socketTree = try TemporaryTree()
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let socketPath = socketTree.path("sock")
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, byte) in socketPath.utf8.enumerated() where i < raw.count - 1 { raw[i] = byte }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        #expect(bound == 0)
        await #expect(throws: ScanError.specialFile(path: "sock", kind: "socket")) {
            try await Scanner(options: Self.quick).scan(root: socketTree.root)
        }
    }

    @Test("a name that is not UTF-8 is an error, not a silent drop")
    func invalidNames() async throws {
        let tree = try TemporaryTree()
        let name = tree.root + "/bad\u{FF}"
        // Write a file whose name holds the raw byte 0xFF.
        var raw = Array(tree.root.utf8) + Array("/bad".utf8) + [0xff, 0]
        let fd = raw.withUnsafeMutableBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { open($0.baseAddress!, O_CREAT | O_WRONLY, 0o644) }
        }
        #expect(fd >= 0)
        close(fd)
        _ = name
        await #expect(throws: ScanError.self) { try await Scanner(options: Self.quick).scan(root: tree.root) }
    }

    @Test("a rescan of an unchanged tree hashes nothing; a change is seen even with mtime restored")
    func statCache() async throws {
        let tree = try TemporaryTree()
        for i in 0..<50 { try tree.file("d\(i % 5)/f\(i)", noise(100 + i, seed: UInt64(i))) }
        let scanner = Scanner(options: Self.quick)
        let cold = try await scanner.scan(root: tree.root)
        #expect(cold.statistics.filesHashed == 50)

        let warm = try await scanner.scan(root: tree.root, cache: StatCache(encoded: cold.statCache.encoded())!)
        #expect(warm.statistics.filesHashed == 0)
        #expect(warm.statistics.cacheHits == 50)
        #expect(warm.manifest == cold.manifest)

        // Same size, mtime put back: ctime still moves, so the cache must not vouch for it.
        let path = tree.path("d3/f8")
        var before = stat()
        stat(path, &before)
        try tree.file("d3/f8", noise(108, seed: 999))
        var times = [before.st_atim, before.st_mtim]
        #expect(utimensat(AT_FDCWD, path, &times, 0) == 0)
        let changed = try await scanner.scan(root: tree.root, cache: warm.statCache)
        #expect(changed.statistics.filesHashed == 1)
        #expect(changed.manifest.index()["d3/f8"]?.file?.xxh128 == XXH128Hasher.hash(data: noise(108, seed: 999)))
    }

    @Test("files changed just before the scan are not cached (racy window)")
    func racyWindow() async throws {
        let tree = try TemporaryTree()
        try tree.file("fresh", "just written")
        let result = try await Scanner().scan(root: tree.root)
        #expect(result.statCache.count == 0)
    }

    @Test("the stat cache is keyed by inode: renamed, linked and copied files hash right, hard links share a record")
    func cacheByInode() async throws {
        let tree = try TemporaryTree()
        for i in 0..<4 { try tree.file("d/f\(i)", noise(300 + i, seed: UInt64(i))) }
        let scanner = Scanner(options: Self.quick)
        let cold = try await scanner.scan(root: tree.root)
        #expect(cold.statistics.filesHashed == 4)
        #expect(cold.statCache.count == 4)

        #expect(rename(tree.path("d/f0"), tree.path("d/moved")) == 0)
        #expect(link(tree.path("d/f1"), tree.path("d/linked")) == 0)
        try FileManager.default.copyItem(atPath: tree.path("d/f2"), toPath: tree.path("d/copied"))
        let warm = try await scanner.scan(root: tree.root, cache: StatCache(encoded: cold.statCache.encoded())!)
        // Rename and link move the inode's ctime, so those are hashed again, like the copy.
        #expect(warm.statistics.filesHashed >= 1)
        #expect(warm.statistics.cacheHits + warm.statistics.filesHashed == 6)
        let index = warm.manifest.index()
        #expect(index["d/moved"]?.file?.xxh128 == XXH128Hasher.hash(data: noise(300, seed: 0)))
        #expect(index["d/linked"]?.file == index["d/f1"]?.file)
        #expect(index["d/copied"]?.file == index["d/f2"]?.file)
        // Hard-linked paths share one record.
        #expect(warm.statCache.count == 5)
        let again = try await scanner.scan(root: tree.root, cache: warm.statCache)
        #expect(again.statistics.filesHashed == 0)
        #expect(again.statistics.cacheHits == 6)
        #expect(again.manifest == warm.manifest)
    }

    @Test("a stat cache with two records for one inode, or of the older path-keyed format, reads as empty")
    func ambiguousCache() async throws {
        let tree = try TemporaryTree()
        try tree.file("a", "first")
        try tree.file("b", "second")
        var bytes = try await Scanner(options: Self.quick).scan(root: tree.root).statCache.encoded()
        #expect(StatCache(encoded: bytes)?.count == 2)
        // Record 2's inode (header 24 bytes, records 56) set to record 1's, checksum redone.
        for offset in 0..<8 { bytes[24 + 56 + offset] = bytes[24 + offset] }
        let body = bytes.count - 16
        let check = bytes.withUnsafeBytes {
            XXH128Hasher.hash(bufferPointer: UnsafeRawBufferPointer(rebasing: $0[..<body]))
        }
        withUnsafeBytes(of: check.high.bigEndian) { bytes.replaceSubrange(body..<body + 8, with: $0) }
        withUnsafeBytes(of: check.low.bigEndian) { bytes.replaceSubrange(body + 8..<body + 16, with: $0) }
        #expect(StatCache(encoded: bytes) == nil)

        var older = Array("UPGSTC".utf8) + [0x00, 0x01] + [UInt8](repeating: 0, count: 8)
        let olderCheck = older.withUnsafeBytes { XXH128Hasher.hash(bufferPointer: $0) }
        withUnsafeBytes(of: olderCheck.high.bigEndian) { older += $0 }
        withUnsafeBytes(of: olderCheck.low.bigEndian) { older += $0 }
        #expect(StatCache(encoded: older) == nil)
    }

    @Test("a walk whose order is not canonical (a.b before a/'s subtree) yields the validated, sorted manifest")
    func walkOrder() async throws {
        let tree = try TemporaryTree()
        try tree.file("a/x", "in a")
        try tree.file("a.b", "dot")
        try tree.file("a-c", "dash")
        try tree.file("a/big", noise(200_000, seed: 3))
        let scanned = try await Scanner(options: Self.quick).scan(root: tree.root).manifest
        #expect(scanned.entries.map(\.path) == ["a", "a-c", "a.b", "a/big", "a/x"])
        // The same entries through the validating initializer: same tree.
        #expect(try Manifest(entries: scanned.entries.reversed()) == scanned)
        #expect(scanned.entry(at: "a/big")?.file?.xxh128 == XXH128Hasher.hash(data: noise(200_000, seed: 3)))
    }

    @Test("a damaged stat cache reads as empty")
    func damagedCache() async throws {
        let tree = try TemporaryTree()
        try tree.file("a", "x")
        var bytes = try await Scanner(options: Self.quick).scan(root: tree.root).statCache.encoded()
        #expect(StatCache(encoded: bytes) != nil)
        bytes[bytes.count / 2] ^= 0x40
        #expect(StatCache(encoded: bytes) == nil)
        #expect(StatCache(encoded: Array(bytes.prefix(10))) == nil)
    }

    @Test("a missing root is an error naming it")
    func missingRoot() async throws {
        let error = await #expect(throws: ScanError.self) {
            try await Scanner().scan(root: "/nonexistent/upgrade-root")
        }
        #expect("\(error!)".contains("/nonexistent/upgrade-root"))
    }
}
