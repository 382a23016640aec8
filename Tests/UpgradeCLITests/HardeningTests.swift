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
        // Objects are asked for only once every delta is in and verified: then the kill.
        let deadline = Date().addingTimeInterval(60)
        while !mirror.requested.contains(where: { $0.hasPrefix("/objects/") }) && Date() < deadline {
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

    /// Runs `upgrade ARGS` under /usr/bin/time; returns the result and the peak RSS in kB.
    static func measured(_ arguments: [String]) throws -> (CommandResult, Int) {
        let rssFile = NSTemporaryDirectory() + "/upgrade-rss-\(UInt64.random(in: 0...UInt64.max))"
        defer { unlink(rssFile) }
        let result = try runProgram("/usr/bin/time", ["-f", "%M", "-o", rssFile, Upgrade.binary] + arguments)
        let text = (try? String(contentsOfFile: rssFile, encoding: .utf8)) ?? ""
        let rss = Int(text.split(separator: "\n").last.map(String.init) ?? "") ?? 0
        return (result, rss)
    }

    @Test("an endless manifest from a mirror is cut off at its signed length; the server's copy is used")
    func endlessManifest() async throws {
        let (sync, server, root) = try Self.atVersion1()
        let mirror = try HostileMirror(directory: sync.repo, [("/releases/", .endless)])
        defer { mirror.stop() }
        let (result, rss) = try Self.measured([
            "sync", "--server", server.url, "--mirror", mirror.url, "--product", sync.fixture.product, "--root", root,
            "--trust", sync.fixture.pub,
        ])
        #expect(result.status == 0, "\(result.stderr)")
        try await sync.expect(root, equals: 2, "after the endless manifest")
        #expect(mirror.requested.contains { $0.hasPrefix("/releases/") })
        print("endless manifest: client peak RSS \(rss) kB")
        // Before, the client read up to 1 GiB of it.
        #expect(rss > 0 && rss < 200 * 1024, "client peak RSS \(rss) kB")
    }

    @Test("a plan response padded without end is cut off at the bound its signed header gives: exit 4, tree unchanged")
    func endlessPlan() async throws {
        let (sync, _, root) = try Self.atVersion1()
        let lying = try ServerProcess(repo: sync.repo, extra: ["--fault", "padded-plan"])
        let before = try await ApplyFixture.scan(root)
        let (result, rss) = try Self.measured([
            "sync", "--server", lying.url, "--product", sync.fixture.product, "--root", root, "--trust",
            sync.fixture.pub,
        ])
        #expect(result.status == 4, "\(result.stderr)")
        #expect(result.stderr.contains("larger than"), "\(result.stderr)")
        #expect(try await ApplyFixture.scan(root) == before)
        print("endless plan: client peak RSS \(rss) kB")
        // Before, the client read 256 MiB of it before giving up.
        #expect(rss > 0 && rss < 150 * 1024, "client peak RSS \(rss) kB")
    }

    @Test("an installed release the server no longer has: the client sends its whole manifest and upgrades")
    func unknownInstalledRelease() async throws {
        let (sync, _, root) = try Self.atVersion1()
        try FileManager.default.removeItem(atPath: sync.repo + "/releases/app/1.0")
        // A server started after the release was pruned (one that served it may still cache it).
        let server = try ServerProcess(repo: sync.repo)
        let result = try sync.sync(server, root: root, ["--json"])
        #expect(result.status == 0, "\(result.stderr)")
        try await sync.expect(root, equals: 2, "after the fallback")
    }

    /// A 2.0 whose health check starts a background child (its pid written to `pidFile`) and
    /// then waits a minute, so a test can stop the sync while the hook runs.
    static func slowHealthCheck(_ sync: SyncFixture, pidFile: String) throws {
        let tree = try TemporaryTree()
        try ApplyFixture.copy(sync.trees[1].root + "/.", tree.root)
        try tree.file(
            "hooks/health.sh",
            "#!/bin/sh\nsleep 300 &\necho $! > \(pidFile)\nsleep 60\n",
            mode: 0o755
        )
        try sync.fixture.publish("2.0", tree.root, extra: ["--health-check", "hooks/health.sh"])
    }

    @Test("SIGTERM during the health check: the hook's process group is killed, the tree rolled back, exit 143")
    func sigtermDuringHealthCheck() async throws {
        let sync = try SyncFixture(releases: 1)
        let server = try ServerProcess(repo: sync.repo)
        let root = sync.fixture.work.path("root")
        #expect(try sync.sync(server, root: root).status == 0)
        let pidFile = sync.fixture.work.path("hook-child.pid")
        try Self.slowHealthCheck(sync, pidFile: pidFile)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Upgrade.binary)
        process.arguments = [
            "sync", "--server", server.url, "--product", sync.fixture.product, "--root", root, "--trust",
            sync.fixture.pub,
        ]
        let errors = Pipe()
        process.standardOutput = FileHandle.nullDevice
        process.standardError = errors
        try process.run()
        let deadline = Date().addingTimeInterval(60)
        while !FileManager.default.fileExists(atPath: pidFile) && Date() < deadline { usleep(50_000) }
        usleep(200_000)
        let child = try #require(
            Int32(
                (try? String(contentsOfFile: pidFile, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
                    ?? ""
            )
        )
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
        let stderr = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(process.terminationStatus == 143, "\(stderr)")
        #expect(stderr.contains("interrupted by SIGTERM") && stderr.contains("rolled back to 1.0"), "\(stderr)")
        try await sync.expect(root, equals: 1, "after SIGTERM")
        usleep(200_000)
        let state = (try? String(contentsOfFile: "/proc/\(child)/stat", encoding: .utf8)) ?? ""
        let alive = !state.isEmpty && !state.contains(") Z ")
        #expect(!alive, "the health check's child \(child) outlived the run: \(state)")
        if alive { kill(child, SIGKILL) }
        // The lock is free and no journal is left: the next run proceeds (and hits the hook again).
        let status = try Upgrade.run(["status", "--root", root])
        #expect(status.status == 0, "\(status.stderr)")
        #expect(!FileManager.default.fileExists(atPath: root + "/.upgrade/journal"))
    }

    @Test("SIGTERM while downloading: exit 143 at once, nothing changed, the lock released")
    func sigtermWhileDownloading() async throws {
        let (sync, server, root) = try Self.atVersion1()
        let mirror = try HostileMirror(directory: sync.repo, [("/objects/", .stall), ("/deltas/", .stall)])
        defer { mirror.stop() }
        let before = try await ApplyFixture.scan(root)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Upgrade.binary)
        process.arguments = [
            "sync", "--server", server.url, "--mirror", mirror.url, "--product", sync.fixture.product, "--root", root,
            "--trust", sync.fixture.pub,
        ]
        let errors = Pipe()
        process.standardOutput = FileHandle.nullDevice
        process.standardError = errors
        try process.run()
        let deadline = Date().addingTimeInterval(30)
        while !mirror.requested.contains(where: { $0.hasPrefix("/objects/") || $0.hasPrefix("/deltas/") })
            && Date() < deadline
        {
            usleep(50_000)
        }
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
        let stderr = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(process.terminationStatus == 143, "\(stderr)")
        #expect(stderr.contains("interrupted by SIGTERM; nothing was changed"), "\(stderr)")
        #expect(try await ApplyFixture.scan(root) == before)
        let next = try sync.sync(server, root: root, ["--lock-timeout", "1"])
        #expect(next.status == 0, "\(next.stderr)")
        try await sync.expect(root, equals: 2, "after the interrupted run")
    }
}
