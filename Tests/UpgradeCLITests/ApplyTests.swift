import Foundation
import Testing
import UpgradeBundle
import UpgradeCore
import UpgradeScan
import UpgradeTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// True while `pid` is a live process (a zombie waiting for a reaper counts as dead).
func isAlive(_ pid: Int32) -> Bool {
    guard kill(pid, 0) == 0, let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else {
        return false
    }
    return !status.contains("State:\tZ")
}

@Suite("upgrade apply", .serialized)
struct ApplyTests {
    @Test(
        "round trip over edge cases: full install, upgrade, rollback; each time the tree equals the release",
        arguments: [false, true]
    )
    func roundTrip(reversed: Bool) async throws {
        let fixture = try ApplyFixture()
        let a = try TemporaryTree()
        let b = try TemporaryTree()
        try EdgeTrees.old(reversed ? b : a)
        try EdgeTrees.new(reversed ? a : b)
        try fixture.publish("1.0", a.root)
        try fixture.publish("2.0", b.root)
        let root = fixture.work.path("root")

        let install = try fixture.apply(try fixture.bundle(from: nil, to: "1.0"), root: root)
        #expect(install.status == 0, "\(install.stderr)")
        #expect(try await ApplyFixture.scan(root) == (try await ApplyFixture.scan(a.root)))

        let bundle = try fixture.bundle(from: "1.0", to: "2.0")
        // Files with a similar old version travel as deltas inside the bundle.
        #expect(!(try BundleReader(path: bundle)).deltas.isEmpty)
        let upgrade = try fixture.apply(bundle, root: root)
        #expect(upgrade.status == 0, "\(upgrade.stderr)")
        #expect(try await ApplyFixture.scan(root) == (try await ApplyFixture.scan(b.root)))
        #expect(try Upgrade.run(["verify", "--root", root]).status == 0)

        let rollback = try Upgrade.run(["rollback", "--root", root])
        #expect(rollback.status == 0, "\(rollback.stderr)")
        #expect(try await ApplyFixture.scan(root) == (try await ApplyFixture.scan(a.root)))
        let document = try StatusDocument(root: root)
        #expect(document.json["format"] as? String == "upgrade-output/1")
        #expect(document.version == "1.0")
        #expect(document.pendingJournal == nil)
    }

    @Test(
        "staging many files at once: one that fails to stage stops the install before any change and leaves no staged file; a full bundle then installs over the earlier release and the local edit"
    )
    func manyFilesStaged() async throws {
        let fixture = try ApplyFixture()
        let a = try TemporaryTree()
        let b = try TemporaryTree()
        // 240 files, each edited in 2.0 (so each travels as a delta), and 40 added; every fourth
        // is 80 KiB, which is staged beside the small ones on another thread.
        var seed: UInt64 = 0x57a6
        func text(_ count: Int) -> String {
            var bytes = [UInt8](repeating: 0, count: count)
            for j in 0..<count {
                seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
                bytes[j] = UInt8(97 + (seed >> 33) % 26)
            }
            return String(decoding: bytes, as: UTF8.self)
        }
        for i in 0..<240 {
            let body = text(i % 4 == 0 ? 80 << 10 : 6 << 10)
            try a.file("d\(i % 8)/f\(i).txt", body)
            try b.file("d\(i % 8)/f\(i).txt", "2.0 edit \(i)\n" + body)
        }
        for i in 0..<40 { try b.file("new/n\(i).txt", text(i % 4 == 0 ? 80 << 10 : 2000)) }
        try fixture.publish("1.0", a.root)
        try fixture.publish("2.0", b.root)
        let root = fixture.work.path("root")
        #expect(try fixture.apply(try fixture.bundle(from: nil, to: "1.0"), root: root).status == 0)

        // One large base edited locally: its delta cannot be rebuilt, the other files' can.
        let edited = root + "/d4/f132.txt"
        try "edited here\n".write(toFile: edited, atomically: false, encoding: .utf8)
        let before = try await ApplyFixture.scan(root)
        let deltas = try fixture.bundle(from: "1.0", to: "2.0")
        #expect((try BundleReader(path: deltas)).deltas.count >= 200)
        let refused = try fixture.apply(deltas, root: root)
        #expect(refused.status == 4 && refused.stderr.contains("d4/f132.txt"), "\(refused.stderr)")
        #expect(try await ApplyFixture.scan(root) == before)
        let staging = root + "/.upgrade/staging"
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: staging)) ?? []).isEmpty)

        // The same release from a full bundle: all 280 files staged together, the tree is 2.0
        // but for the edited file, which the install replaces with the signed one.
        let full = try fixture.apply(try fixture.bundle(from: nil, to: "2.0"), root: root)
        #expect(full.status == 0, "\(full.stderr)")
        #expect(try await ApplyFixture.scan(root) == (try await ApplyFixture.scan(b.root)))
        #expect(try Upgrade.run(["verify", "--root", root]).status == 0)
    }

    @Test(
        "rollback and recover in a directory where nothing is installed: rollback exit 5, recover prints nothing; neither writes a file"
    )
    func nothingInstalled() throws {
        let tree = try TemporaryTree()
        try tree.file("data", "operator's file")
        let before = try FileManager.default.subpathsOfDirectory(atPath: tree.root).sorted()
        let rollback = try Upgrade.run(["rollback", "--root", tree.root])
        #expect(rollback.status == 5, "\(rollback.stderr)")
        #expect(rollback.stderr.contains("no release is installed"), "\(rollback.stderr)")
        let recover = try Upgrade.run(["recover", "--root", tree.root])
        #expect(recover.status == 0, "\(recover.stderr)")
        #expect(recover.text.isEmpty, "\(recover.text)")
        let confirm = try Upgrade.run(["confirm", "--root", tree.root])
        #expect(confirm.status == 3, "\(confirm.stderr)")
        #expect(confirm.stderr.contains("nothing is installed here"), "\(confirm.stderr)")
        #expect(try FileManager.default.subpathsOfDirectory(atPath: tree.root).sorted() == before)
    }

    @Test("dry run and --json change nothing and describe the plan")
    func dryRun() async throws {
        let fixture = try ApplyFixture()
        try fixture.publish("1.0", "\(PublishedRepository.examples)/myapp-1.0")
        try fixture.publish("1.1", "\(PublishedRepository.examples)/myapp-1.1")
        let root = fixture.work.path("root")
        #expect(try fixture.apply(try fixture.bundle(from: nil, to: "1.0"), root: root).status == 0)
        let before = try await ApplyFixture.scan(root)
        let dry = try fixture.apply(
            try fixture.bundle(from: "1.0", to: "1.1"),
            root: root,
            extra: ["--dry-run", "--json"]
        )
        #expect(dry.status == 0)
        let report = try #require(try JSONSerialization.jsonObject(with: dry.stdout) as? [String: Any])
        #expect(report["result"] as? String == "dry-run")
        let operations = try #require(report["operations"] as? [[String: Any]])
        #expect(
            operations.contains { $0["op"] as? String == "add" && $0["path"] as? String == "lib/libmyapp.so.1.1" },
            "\(operations)"
        )
        #expect(try await ApplyFixture.scan(root) == before)
        // A second apply of an already-installed release does nothing and prints nothing.
        let again = try fixture.apply(try fixture.bundle(from: nil, to: "1.0"), root: fixture.work.path("other"))
        #expect(again.status == 0)
    }

    @Test(
        "a failing or hanging hook or health check rolls back (exit 8); hook children do not outlive it",
        arguments: ["pre-install", "post-install", "health-check", "hang"]
    )
    func hooks(kind: String) async throws {
        let fixture = try ApplyFixture()
        let old = try TemporaryTree()
        let new = try TemporaryTree()
        try old.file("app.conf", "v1")
        try new.file("app.conf", "v2")
        let pidFile = fixture.work.path("child.pid")
        let script: String
        switch kind {
        case "hang": script = "#!/bin/sh\nsleep 300 &\necho $! > \(pidFile)\nexec sleep 300\n"
        default:
            script =
                "#!/bin/sh\nsleep 300 &\necho $! > \(pidFile)\nhead -c 100000 /dev/zero | tr '\\\\0' x\necho\necho hook ran in $UPGRADE_PHASE for $UPGRADE_TO_VERSION\nexit 3\n"
        }
        try new.file("hooks/h", script, mode: 0o755)
        try fixture.publish("1.0", old.root)
        try fixture.publish("2.0", new.root, extra: ["--\(kind == "hang" ? "post-install" : kind)", "hooks/h"])
        let root = fixture.work.path("root")
        #expect(try fixture.apply(try fixture.bundle(from: nil, to: "1.0"), root: root).status == 0)

        let started = Date()
        let result = try fixture.apply(
            try fixture.bundle(from: "1.0", to: "2.0"),
            root: root,
            extra: ["--hook-timeout", "2"]
        )
        #expect(result.status == 8, "\(result.stderr)")
        #expect(Date().timeIntervalSince(started) < 30)
        #expect(result.stderr.contains("rolled back"))
        if kind != "hang" {
            #expect(result.stderr.contains("hook ran in \(kind) for 2.0"), "\(result.stderr.suffix(300))")
            #expect(result.stderr.utf8.count < 40_000)
        } else {
            #expect(result.stderr.contains("timed out"))
        }
        #expect(try await ApplyFixture.scan(root) == (try await ApplyFixture.scan(old.root)))
        let pid =
            Int32(
                (try? String(contentsOfFile: pidFile, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
                    ?? ""
            ) ?? 0
        #expect(pid > 0)
        usleep(200_000)
        #expect(!isAlive(pid), "the hook's child \(pid) outlived it")
    }

    @Test(
        "hostile bundles are rejected before any change, writing nothing outside the root",
        arguments: [
            "dotdot", "absolute", "planted symlink", "symlink then write beneath", "tampered payload", "tampered plan",
            "other product", "older release",
        ]
    )
    func hostileBundles(kind: String) async throws {
        let fixture = try ApplyFixture()
        try fixture.publish("1.0", "\(PublishedRepository.examples)/myapp-1.0")
        try fixture.publish("1.1", "\(PublishedRepository.examples)/myapp-1.1")
        let root = fixture.work.path("root")
        let outside = fixture.work.path("outside")
        try FileManager.default.createDirectory(atPath: outside, withIntermediateDirectories: true)
        #expect(try fixture.apply(try fixture.bundle(from: nil, to: "1.0"), root: root).status == 0)
        let good = try fixture.bundle(from: "1.0", to: "1.1")
        let reader = try BundleReader(path: good)
        let header = try #require(try reader.section(.header))
        let manifest = try #require(try reader.section(.manifest))
        var planText = String(decoding: try #require(try reader.section(.plan)), as: UTF8.self)
        // A delta bundle names the manifest its plan starts from; without it the plan would be
        // a full bundle's, which apply replaces with one made from the tree.
        let base = try #require(try reader.section(.baseManifest))
        let firstObject = try #require(reader.entries.first { $0.kind == .object })
        var objects = try reader.entries.filter { $0.kind == .object }.map {
            ($0.name, try reader.read($0, from: 0, count: Int($0.length)))
        }
        var expected: Int32 = 6
        var bundlePath = fixture.work.path("hostile")

        func rewrite() throws {
            var writer = BundleWriter()
            writer.add(.header, .bytes(header))
            writer.add(.manifest, .bytes(manifest))
            writer.add(.plan, .bytes(Array(planText.utf8)))
            writer.add(.baseManifest, .bytes(base))
            for (name, bytes) in objects { writer.add(.object, name: name, .bytes(bytes)) }
            try writer.write(to: bundlePath)
        }
        switch kind {
        case "dotdot":
            planText = planText.replacingOccurrences(
                of: #""path" : "share/myapp/templates/report.html""#,
                with: #""path" : "../outside/report.html""#
            )
            try rewrite()
        case "absolute":
            planText = planText.replacingOccurrences(
                of: #""path" : "share/myapp/templates/report.html""#,
                with: "\"path\" : \"\(outside)/report.html\""
            )
            try rewrite()
        case "planted symlink":
            try FileManager.default.removeItem(atPath: root + "/share/myapp/templates")
            try FileManager.default.createSymbolicLink(
                atPath: root + "/share/myapp/templates",
                withDestinationPath: outside
            )
            bundlePath = good
        case "symlink then write beneath":
            var document = try #require(try JSONSerialization.jsonObject(with: Data(planText.utf8)) as? [String: Any])
            let injected: [[String: Any]] = [
                ["op": "symlink", "path": "evil", "target": outside],
                ["op": "mkdir", "path": "evil/x", "mode": "0755"],
            ]
            document["operations"] = injected + (document["operations"] as? [[String: Any]] ?? [])
            planText = String(decoding: try JSONSerialization.data(withJSONObject: document), as: UTF8.self)
            try rewrite()
        case "tampered payload":
            expected = 4
            let index = try #require(objects.firstIndex { $0.0 == firstObject.name })
            objects[index].1[objects[index].1.count / 2] ^= 0x20
            try rewrite()
        case "tampered plan":
            expected = 4
            planText = planText.replacingOccurrences(of: #""mode" : "0755""#, with: #""mode" : "0777""#)
            try rewrite()
        case "other product":
            expected = 4
            try fixture.publish("9.0", "\(PublishedRepository.examples)/myapp-1.1", product: "otherapp")
            bundlePath = try fixture.bundle(from: nil, to: "9.0", product: "otherapp")
            try FileManager.default.removeItem(atPath: root + "/lib/libmyapp.so")
        default:
            expected = 5
            #expect(try fixture.apply(good, root: root).status == 0)
            bundlePath = try fixture.bundle(from: "1.1", to: "1.0")
        }
        let before = try await ApplyFixture.scan(root)
        let result = try fixture.apply(bundlePath, root: root)
        #expect(result.status == expected, "\(kind): \(result.stderr)")
        #expect(result.stderr.contains("nothing was changed"), "\(result.stderr)")
        #expect(try await ApplyFixture.scan(root) == before)
        #expect(try FileManager.default.contentsOfDirectory(atPath: outside).isEmpty)
    }

    @Test("two concurrent applies: the second waits, then exits 75 naming the holder; the tree is never mixed")
    func concurrentApplies() async throws {
        let fixture = try ApplyFixture()
        let old = try TemporaryTree()
        let new = try TemporaryTree()
        try old.file("a", "1")
        try new.file("a", "2")
        try new.file("slow", "#!/bin/sh\nsleep 3\n", mode: 0o755)
        try fixture.publish("1.0", old.root)
        try fixture.publish("2.0", new.root, extra: ["--pre-install", "slow"])
        let root = fixture.work.path("root")
        #expect(try fixture.apply(try fixture.bundle(from: nil, to: "1.0"), root: root).status == 0)
        let bundle = try fixture.bundle(from: "1.0", to: "2.0")

        let first = Process()
        first.executableURL = URL(fileURLWithPath: Upgrade.binary)
        first.arguments = ["apply", "--root", root, "--trust", fixture.pub, bundle]
        first.standardOutput = FileHandle.nullDevice
        try first.run()
        usleep(1_000_000)
        let second = try fixture.apply(bundle, root: root, extra: ["--lock-timeout", "0.5"])
        #expect(second.status == 75, "\(second.stderr)")
        #expect(second.stderr.contains("pid \(first.processIdentifier)"))
        first.waitUntilExit()
        #expect(first.terminationStatus == 0)
        #expect(try await ApplyFixture.scan(root) == (try await ApplyFixture.scan(new.root)))
    }

    @Test(
        "injected faults (EIO on fsync, EPERM on link, ENOSPC on write) abort cleanly with the tree unchanged",
        .enabled(if: Prerequisites.strace, "strace is not installed (make deps installs it)"),
        arguments: [
            "fsync:error=EIO:when=3", "linkat:error=EPERM:when=1", "rename,renameat,renameat2:error=EPERM:when=5",
            "write:error=ENOSPC:when=4",
        ]
    )
    func injectedFaults(injection: String) async throws {
        let fixture = try ApplyFixture()
        try fixture.publish("1.0", "\(PublishedRepository.examples)/myapp-1.0")
        try fixture.publish("1.1", "\(PublishedRepository.examples)/myapp-1.1")
        let root = fixture.work.path("root")
        #expect(try fixture.apply(try fixture.bundle(from: nil, to: "1.0"), root: root).status == 0)
        let bundle = try fixture.bundle(from: "1.0", to: "1.1")
        let before = try await ApplyFixture.scan(root)
        let result = try runProgram(
            "/usr/bin/strace",
            [
                "-f", "-o", "/dev/null", "-e", "inject=\(injection)", Upgrade.binary, "apply", "--root", root,
                "--trust", fixture.pub, bundle,
            ]
        )
        #expect(result.status != 0, "\(injection): the fault was not hit")
        #expect(result.stderr.contains("upgrade: "), "\(result.stderr)")
        #expect(try await ApplyFixture.scan(root) == before)
        // The next run recovers whatever was left and then succeeds.
        let next = try fixture.apply(bundle, root: root)
        #expect(next.status == 0, "\(next.stderr)")
        #expect(
            try await ApplyFixture.scan(root)
                == (try await ApplyFixture.scan("\(PublishedRepository.examples)/myapp-1.1"))
        )
    }

    @Test(
        "a full filesystem (a 3 MiB tmpfs the test mounts) is refused with exit 7 before any change",
        .enabled(if: Prerequisites.tmpfsUnavailable == nil, "a tmpfs cannot be mounted here (not root?)")
    )
    func noSpaceOnTmpfs() async throws {
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
        try #require(mounted.status == 0, "mount -t tmpfs: \(mounted.stderr)")
        defer { _ = try? runProgram("/bin/umount", [mountPoint]) }
        let root = mountPoint + "/root"
        #expect(try fixture.apply(try fixture.bundle(from: nil, to: "1.0"), root: root).status == 0)
        let before = try await ApplyFixture.scan(root)
        let result = try fixture.apply(try fixture.bundle(from: "1.0", to: "2.0"), root: root)
        #expect(result.status == 7, "\(result.stderr)")
        #expect(result.stderr.contains("not enough space"))
        #expect(try await ApplyFixture.scan(root) == before)
        #expect(try StatusDocument(root: root).version == "1.0")

        // A state directory on another filesystem than the root is refused: renames would copy.
        let other = fixture.work.path("other-root")
        try FileManager.default.createDirectory(atPath: other + "/.upgrade", withIntermediateDirectories: true)
        _ = try runProgram("/bin/mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", other + "/.upgrade"])
        defer { _ = try? runProgram("/bin/umount", [other + "/.upgrade"]) }
        let cross = try fixture.apply(try fixture.bundle(from: nil, to: "1.0"), root: other)
        #expect(cross.status == 3, "\(cross.stderr)")
        #expect(cross.stderr.contains("is not on the filesystem"))
    }
}

@Suite("Stat cache after an install")
struct InstallStatCacheTests {
    @Test("files an install placed are in the stat cache (the next scan hashes none), except one a hook rewrote")
    func placedFilesCached() async throws {
        let fixture = try ApplyFixture()
        let tree = try TemporaryTree()
        for i in 0..<50 { try tree.file("share/f\(i).txt", "file \(i)\n") }
        try tree.file("etc/app.conf", "as published\n")
        try tree.file("hooks/post.sh", "#!/bin/sh\necho 'edited by the hook' >> etc/app.conf\n", mode: 0o755)
        try fixture.publish("1.0", tree.root, extra: ["--post-install", "hooks/post.sh"])
        let root = fixture.work.path("root")
        let installed = try fixture.apply(try fixture.bundle(from: nil, to: "1.0"), root: root)
        #expect(installed.status == 0, "\(installed.stderr)")
        let scan = try await TreeSource.scan(root, cache: .readOnly(root + "/.upgrade/statcache"))
        #expect(scan.statistics.filesHashed == 1, "\(scan.statistics)")
        #expect(scan.statistics.cacheHits == 51, "\(scan.statistics)")
        let conf = try #require(scan.manifest.entry(at: "etc/app.conf")?.file)
        let published = try await ApplyFixture.scan(tree.root)
        #expect(conf.xxh128 != published.entry(at: "etc/app.conf")?.file?.xxh128, "the hook's edit was not seen")
        #expect(try Upgrade.run(["verify", "--root", root]).status == 4, "verify misses the hook's edit")
    }
}
