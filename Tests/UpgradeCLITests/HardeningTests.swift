import Foundation
import Testing
import UpgradeTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// A hostile or broken mirror, a full disk, a held lock, planted links: each costs bounded
/// memory, time and disk, ends with a documented exit code, and leaves the tree as it was.
@Suite("Hardening: hostile mirrors, full disks, planted links", .serialized)
struct HardeningTests {
    /// v1 installed at `root` from an honest server; v2 published (its deltas precomputed).
    static func atVersion1() throws -> (SyncFixture, ServerProcess, String) {
        let sync = try SyncFixture(releases: 1)
        let server = try ServerProcess(repo: sync.repo)
        let root = sync.fixture.work.path("root")
        let first = try sync.sync(server, root: root)
        #expect(first.status == 0, "\(first.stderr)")
        try sync.publish(2)
        return (sync, server, root)
    }

    static func report(_ result: CommandResult) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: result.stdout) as? [String: Any], "\(result.stderr)")
    }

    /// Files in the root's downloads directory.
    static func downloads(_ root: String) -> [String] {
        (try? FileManager.default.contentsOfDirectory(atPath: root + "/.upgrade/downloads")) ?? []
    }

    @Test("a delta that expands past the file's signed size is cut off there and the file comes whole")
    func deltaBomb() async throws {
        let (sync, _, root) = try Self.atVersion1()
        // The server has no deltas, so the mirror's is the only one offered.
        let server = try ServerProcess(repo: sync.repo, extra: ["--fault", "missing-delta"])
        // 16 MiB of zeros in a few hundred bytes of zstd: far more than lib/core.so's signed 20.5 KB.
        let bomb = try runProgram("/bin/sh", ["-c", "head -c 16777216 /dev/zero | zstd -19 -q -c"])
        try #require(bomb.status == 0 && !bomb.stdout.isEmpty, "zstd: \(bomb.stderr)")
        let mirror = try HostileMirror(directory: sync.repo, [("/deltas/", .replace(bomb.stdout))])
        defer { mirror.stop() }
        let result = try sync.sync(server, root: root, ["--mirror", mirror.url, "--json"])
        #expect(result.status == 0, "\(result.stderr)")
        try await sync.expect(root, equals: 2, "after the bomb")
        let fallbacks = try Self.report(result)["fallbacks"] as? [String] ?? []
        // The decoder stopped at the signed size; before, it expanded the whole bomb and only the
        // SHA-256 comparison caught it.
        #expect(
            fallbacks.contains { $0.contains("lib/core.so") && $0.contains("signed size is 20500 bytes") },
            "\(fallbacks)"
        )
        #expect(mirror.requested.contains { $0.hasPrefix("/deltas/") })
    }

    @Test(
        "a mirror trickling 1 byte per 0.2 s is abandoned under --min-rate; the server delivers",
        .timeLimit(.minutes(2))
    )
    func tricklingMirror() async throws {
        let (sync, server, root) = try Self.atVersion1()
        let mirror = try HostileMirror(directory: sync.repo, [("/objects/", .trickle(interval: 0.2))])
        defer { mirror.stop() }
        let result = try sync.sync(
            server,
            root: root,
            ["--mirror", mirror.url, "--min-rate", "100", "--rate-window", "2"]
        )
        #expect(result.status == 0, "\(result.stderr)")
        try await sync.expect(root, equals: 2, "after the trickle")
        #expect(mirror.requested.contains { $0.hasPrefix("/objects/") }, "the mirror was asked first")
    }

    @Test(
        "--timeout ends a run that a trickling source would hold for hours: exit 10, lock released, tree unchanged",
        .timeLimit(.minutes(2))
    )
    func runTimeout() async throws {
        let (sync, _, root) = try Self.atVersion1()
        // The plan server itself trickles its objects; --min-rate 0 turns the rate check off.
        let server = try ServerProcess(repo: sync.repo)
        let mirror = try HostileMirror(directory: sync.repo, [("/objects/", .trickle(interval: 0.5))])
        defer { mirror.stop() }
        let result = try Upgrade.run([
            "sync", "--server", server.url, "--mirror", mirror.url, "--product", sync.fixture.product, "--root", root,
            "--trust", sync.fixture.pub, "--min-rate", "0", "--timeout", "4", "--delta-timeout", "30",
        ])
        #expect(result.status == 10, "\(result.stderr)")
        #expect(result.stderr.contains("--timeout"), "\(result.stderr)")
        try await sync.expect(root, equals: 1, "after the timeout")
        // The lock is free again: a status call does not wait.
        #expect(try Upgrade.run(["verify", "--root", root, "--lock-timeout", "1"]).status == 0)
    }

    @Test(
        "a mirror that stalls every delta costs one --delta-timeout; the deltas come from the server",
        .timeLimit(.minutes(2))
    )
    func stallingDeltas() async throws {
        let (sync, server, root) = try Self.atVersion1()
        let mirror = try HostileMirror(directory: sync.repo, [("/deltas/", .stall)])
        defer { mirror.stop() }
        let result = try sync.sync(server, root: root, ["--mirror", mirror.url, "--delta-timeout", "2", "--json"])
        #expect(result.status == 0, "\(result.stderr)")
        try await sync.expect(root, equals: 2, "after the stalled deltas")
        let report = try Self.report(result)
        #expect((report["deltasUsed"] as? Int ?? 0) >= 1, "the server's delta was used: \(report)")
    }

    @Test("deltas finished before a SIGKILL are kept and not fetched again", .timeLimit(.minutes(2)))
    func deltasSurviveKill() async throws {
        let (sync, server, root) = try Self.atVersion1()
        // Objects stall, so the run waits after its deltas arrived; it is killed there.
        let mirror = try HostileMirror(directory: sync.repo, [("/objects/", .stall)])
        defer { mirror.stop() }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Upgrade.binary)
        process.arguments = [
            "sync", "--server", server.url, "--mirror", mirror.url, "--product", sync.fixture.product, "--root", root,
            "--trust", sync.fixture.pub,
        ]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(60)
        while !Self.downloads(root).contains(where: { $0.hasSuffix(".delta") }) && Date() < deadline {
            usleep(50_000)
        }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        let kept = Self.downloads(root).filter { $0.hasSuffix(".delta") }
        #expect(!kept.isEmpty, "a verified delta is on disk before the kill: \(Self.downloads(root))")

        let again = try sync.sync(server, root: root, ["--json"])
        #expect(again.status == 0, "\(again.stderr)")
        try await sync.expect(root, equals: 2, "after the kill")
        let report = try Self.report(again)
        let files = report["files"] as? [[String: Any]] ?? []
        let viaDelta = files.filter { ($0["transfer"] as? String)?.hasPrefix("delta") == true }
        #expect(!viaDelta.isEmpty)
        // Only the whole files travelled again.
        let whole = files.filter { ($0["transfer"] as? String)?.hasPrefix("whole") == true }
            .reduce(0) { $0 + ($1["bytes"] as? Int ?? 0) }
        #expect((report["bytesDownloaded"] as? Int ?? .max) <= whole, "\(report)")
    }

    @Test(
        "not enough space for the plan: exit 7 before any payload request, nothing downloaded, tree unchanged",
        .enabled(if: Prerequisites.tmpfsUnavailable == nil, "a tmpfs cannot be mounted here")
    )
    func noSpaceBeforeDownload() async throws {
        let fixture = try ApplyFixture()
        let small = try TemporaryTree()
        let big = try TemporaryTree()
        try small.file("data", noise(100_000, seed: 1))
        try big.file("data", noise(100_000, seed: 1))
        try big.file("huge", noise(4 << 20, seed: 2))
        try fixture.publish("1.0", small.root)
        try fixture.publish("2.0", big.root)
        let mountPoint = fixture.work.path("tmpfs")
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        let mounted = try runProgram("/bin/mount", ["-t", "tmpfs", "-o", "size=3m", "tmpfs", mountPoint])
        try #require(mounted.status == 0, "\(mounted.stderr)")
        defer { _ = try? runProgram("/bin/umount", [mountPoint]) }
        let root = mountPoint + "/root"
        // 1.0 goes in through a bundle; the server offers 2.0.
        #expect(try fixture.apply(try fixture.bundle(from: nil, to: "1.0"), root: root).status == 0)
        let before = try await ApplyFixture.scan(root)
        let server = try ServerProcess(repo: fixture.repo)
        let result = try Upgrade.run([
            "sync", "--server", server.url, "--product", fixture.product, "--root", root, "--trust", fixture.pub,
        ])
        #expect(result.status == 7, "\(result.stderr)")
        #expect(result.stderr.contains("not enough space"), "\(result.stderr)")
        #expect(try await ApplyFixture.scan(root) == before)
        #expect(Self.downloads(root).isEmpty, "\(Self.downloads(root))")
    }

    @Test(
        "the disk fills while downloading (tmpfs out of inodes): exit 7, partial downloads removed, tree unchanged",
        .enabled(if: Prerequisites.tmpfsUnavailable == nil, "a tmpfs cannot be mounted here")
    )
    func noSpaceWhileDownloading() async throws {
        let sync = try SyncFixture(releases: 1)
        let mountPoint = sync.fixture.work.path("tmpfs")
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        let mounted = try runProgram("/bin/mount", ["-t", "tmpfs", "-o", "size=64m", "tmpfs", mountPoint])
        try #require(mounted.status == 0, "\(mounted.stderr)")
        defer { _ = try? runProgram("/bin/umount", [mountPoint]) }
        let root = mountPoint + "/root"
        let server = try ServerProcess(repo: sync.repo)
        #expect(try sync.sync(server, root: root).status == 0)
        try sync.publish(2)
        let before = try await ApplyFixture.scan(root)
        // Plenty of bytes free (the preflight passes) but only one more inode: the second
        // download cannot be created.
        var vfs = statvfs()
        try #require(statvfs(mountPoint, &vfs) == 0)
        let used = Int(vfs.f_files - vfs.f_ffree)
        let remounted = try runProgram(
            "/bin/mount",
            ["-o", "remount,size=64m,nr_inodes=\(used + 1)", mountPoint]
        )
        try #require(remounted.status == 0, "\(remounted.stderr)")
        let result = try sync.sync(server, root: root, ["--parallel", "1"])
        #expect(result.status == 7, "\(result.stderr)")
        #expect(result.stderr.contains("not enough space"), "\(result.stderr)")
        #expect(try await ApplyFixture.scan(root) == before)
        #expect(!Self.downloads(root).contains { $0.hasSuffix(".part") }, "\(Self.downloads(root))")
        // With room again, the next run completes.
        _ = try runProgram("/bin/mount", ["-o", "remount,size=64m,nr_inodes=10000", mountPoint])
        let next = try sync.sync(server, root: root)
        #expect(next.status == 0, "\(next.stderr)")
        try await sync.expect(root, equals: 2, "after space was freed")
    }

    @Test("verify honours --lock-timeout: exit 75 after 1 s when another process holds the lock")
    func verifyLockTimeout() async throws {
        let (sync, _, root) = try Self.atVersion1()
        defer { withExtendedLifetime(sync) {} }
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/usr/bin/flock")
        holder.arguments = [root + "/.upgrade/lock", "sleep", "30"]
        try holder.run()
        defer {
            // flock's child (sleep) holds the lock too.
            _ = try? runProgram("/usr/bin/pkill", ["-KILL", "-P", "\(holder.processIdentifier)"])
            holder.terminate()
            holder.waitUntilExit()
        }
        usleep(300_000)
        let result = try Upgrade.run(["verify", "--root", root, "--lock-timeout", "1"])
        #expect(result.status == 75, "\(result.stderr)")
        #expect(result.stderr.contains("after waiting 1 s"), "\(result.stderr)")
    }

    @Test("a mode change never reaches an inode outside the root through a planted hard link")
    func chmodThroughHardLink() async throws {
        let fixture = try ApplyFixture()
        let old = try TemporaryTree()
        let new = try TemporaryTree()
        try old.file("bin/tool", "#!/bin/sh\necho tool\n", mode: 0o644)
        try new.file("bin/tool", "#!/bin/sh\necho tool\n", mode: 0o755)
        try fixture.publish("1.0", old.root)
        try fixture.publish("2.0", new.root)
        let root = fixture.work.path("root")
        #expect(try fixture.apply(try fixture.bundle(from: nil, to: "1.0"), root: root).status == 0)
        // Someone with write access to the root swaps the file for a link to an outside file
        // with the same content and mode.
        let outside = try fixture.work.file("outside/secret-tool", Array("#!/bin/sh\necho tool\n".utf8), mode: 0o644)
        try FileManager.default.removeItem(atPath: root + "/bin/tool")
        try #require(link(outside, root + "/bin/tool") == 0)
        let result = try fixture.apply(try fixture.bundle(from: "1.0", to: "2.0"), root: root)
        #expect(result.status == 0, "\(result.stderr)")
        var info = stat()
        try #require(stat(outside, &info) == 0)
        #expect(info.st_mode & 0o7777 == 0o644, "the outside file kept its mode")
        #expect(info.st_nlink == 1, "the root no longer shares its inode")
        try #require(stat(root + "/bin/tool", &info) == 0)
        #expect(info.st_mode & 0o7777 == 0o755)
        #expect(try await ApplyFixture.scan(root) == (try await ApplyFixture.scan(new.root)))
    }

    @Test(
        "bundle --output never writes through a symlink planted at its temporary name",
        .enabled(
            if: getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/unshare"),
            "needs root and unshare"
        )
    )
    func bundleTemporaryName() async throws {
        let fixture = try ApplyFixture()
        let tree = try TemporaryTree()
        try tree.file("a", "content")
        try fixture.publish("1.0", tree.root)
        let victim = try fixture.work.file("victim", Array("precious".utf8))
        let output = fixture.work.path("out.bundle")
        // In a new PID namespace `upgrade` is PID 1: the old temporary name was OUTPUT.tmp-PID.
        #expect(symlink(victim, output + ".tmp-1") == 0)
        let result = try runProgram(
            "/usr/bin/unshare",
            [
                "--pid", "--fork", Upgrade.binary, "bundle", "--repo", fixture.repo, "--product", fixture.product,
                "--to", "1.0", "--output", output,
            ]
        )
        #expect(result.status == 0, "\(result.stderr)")
        #expect(try String(contentsOfFile: victim, encoding: .utf8) == "precious")
        #expect(FileManager.default.fileExists(atPath: output))
    }
}
