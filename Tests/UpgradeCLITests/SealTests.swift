import Foundation
import Testing
import UpgradeTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The cron no-op by seal (docs/design.md, "No-op at scale"): a tree found equal to the
/// installed release is sealed, and a later run with the same seal reads no stat cache and no
/// manifest; anything a scan would see still breaks it.
@Suite("sync: the sealed no-op", .serialized)
struct SealTests {
    /// `sync` under strace: the result and the files it opened.
    static func tracedSync(
        _ sync: SyncFixture,
        _ server: ServerProcess,
        root: String
    ) throws -> (
        CommandResult, [String]
    ) {
        let trace = sync.fixture.work.path("sync.strace")
        let result = try runProgram(
            "/usr/bin/strace",
            [
                "-f", "-qq", "-e", "trace=open,openat", "-o", trace, Upgrade.binary, "sync", "--server", server.url,
                "--product", sync.fixture.product, "--root", root, "--trust", sync.fixture.pub,
            ]
        )
        let opened = try String(contentsOfFile: trace, encoding: .utf8).split(separator: "\n").compactMap { line in
            line.split(separator: "\"", maxSplits: 2).dropFirst().first.map(String.init)
        }
        return (result, opened)
    }

    /// The seal file of the installed release, if any.
    static func sealFile(_ root: String) throws -> String {
        let current = try String(contentsOfFile: root + "/.upgrade/current", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        return root + "/.upgrade/state/\(current)/seal"
    }

    @Test(
        "a no-op seals the tree; the sealed no-op opens neither stat cache nor manifest; a hidden rewrite, a chmod and a new release still land",
        .enabled(if: Prerequisites.strace, "strace is not installed (make deps installs it)")
    )
    func sealedNoOp() async throws {
        let sync = try SyncFixture(releases: 1)
        let server = try ServerProcess(repo: sync.repo)
        let root = sync.fixture.work.path("root")
        #expect(try sync.sync(server, root: root).status == 0)
        // Freshly installed files are inside the racy window: no seal yet.
        #expect(try sync.sync(server, root: root).status == 0)
        #expect(!FileManager.default.fileExists(atPath: try Self.sealFile(root)))
        try await Task.sleep(for: .seconds(2))
        let sealing = try sync.sync(server, root: root)
        #expect(sealing.status == 0 && sealing.text.isEmpty, "\(sealing.stderr)")
        #expect(FileManager.default.fileExists(atPath: try Self.sealFile(root)))

        let (sealed, opened) = try Self.tracedSync(sync, server, root: root)
        #expect(sealed.status == 0 && sealed.text.isEmpty && sealed.stderr.isEmpty, "\(sealed.stderr)")
        // The state store opens its files by name, one component at a time.
        let names = opened.map { $0.split(separator: "/").last.map(String.init) ?? $0 }
        #expect(names.contains("seal"), "\(names)")
        #expect(names.contains("header"), "\(names)")
        #expect(!names.contains("statcache") && !names.contains("manifest"), "\(names)")
        #expect(!opened.contains { $0.hasSuffix("common.txt") }, "a file was read")

        // Same size, old mtime put back: only the ctime tells; the next run repairs it.
        let common = root + "/share/common.txt"
        var info = stat()
        #expect(stat(common, &info) == 0)
        try "SHARED BY EVERY RELEASE".write(toFile: common, atomically: false, encoding: .utf8)
        var times = [info.st_atim, info.st_mtim]
        #expect(utimensat(AT_FDCWD, common, &times, 0) == 0)
        let dry = try sync.sync(server, root: root, ["--dry-run", "--json"])
        #expect(dry.status == 0)
        #expect(dry.text.contains("share/common.txt"), "\(dry.text)")
        #expect(try String(contentsOfFile: common, encoding: .utf8) == "SHARED BY EVERY RELEASE")
        let repair = try sync.sync(server, root: root)
        #expect(repair.status == 0, "\(repair.stderr)")
        try await sync.expect(root, equals: 1, "hidden rewrite")

        // A chmod after the tree is sealed again.
        try await Task.sleep(for: .seconds(2))
        #expect(try sync.sync(server, root: root).status == 0)
        #expect(FileManager.default.fileExists(atPath: try Self.sealFile(root)))
        #expect(chmod(root + "/bin/app", 0o700) == 0)
        #expect(try sync.sync(server, root: root).status == 0)
        try await sync.expect(root, equals: 1, "chmod")

        // A new release reaches a sealed tree.
        try await Task.sleep(for: .seconds(2))
        #expect(try sync.sync(server, root: root).status == 0)
        #expect(FileManager.default.fileExists(atPath: try Self.sealFile(root)))
        try sync.publish(2)
        let upgrade = try sync.sync(server, root: root)
        #expect(upgrade.status == 0, "\(upgrade.stderr)")
        try await sync.expect(root, equals: 2, "sealed tree upgraded")
    }
}
