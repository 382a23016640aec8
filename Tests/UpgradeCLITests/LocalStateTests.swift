import Foundation
import Testing
import UpgradeCore
import UpgradeTestSupport
import UpgradeTrust

#if canImport(Glibc)
import Glibc
#endif

/// What a sync must respect on the machine: its platform, (later) config files, unmanaged paths
/// and file metadata.
@Suite("Local state", .serialized)
struct LocalStateTests {
    /// A platform that is not this machine's.
    static var otherPlatform: String {
        ReleaseHeader.hostPlatform == "linux-aarch64" ? "linux-x86_64" : "linux-aarch64"
    }

    @Test("a release for another platform is refused (exit 5) by sync, dry run and apply, naming both platforms")
    func foreignPlatform() async throws {
        let sync = try SyncFixture(releases: 1)
        try sync.fixture.publish("2.0", sync.trees[1].root, extra: ["--platform", Self.otherPlatform])
        let server = try ServerProcess(repo: sync.repo)
        let root = sync.fixture.work.path("root")
        let bundle = try sync.fixture.bundle(from: nil, to: "1.0")
        #expect(try sync.fixture.apply(bundle, root: root).status == 0)

        for extra in [[], ["--dry-run"], ["--json"]] {
            let refused = try sync.sync(server, root: root, extra)
            #expect(refused.status == 5, "\(extra): \(refused.stderr)")
            let said = refused.stderr + String(decoding: refused.stdout, as: UTF8.self)
            #expect(said.contains(Self.otherPlatform) && said.contains(ReleaseHeader.hostPlatform), "\(said)")
            try await sync.expect(root, equals: 1, "after \(extra)")
            guard extra == ["--json"] else { continue }
            // The error document carries both platforms as fields.
            let document = try JSONSerialization.jsonObject(with: refused.stdout) as? [String: Any]
            let platform = try #require(document?["platform"] as? [String: Any], "\(said)")
            #expect(platform["platform"] as? String == Self.otherPlatform)
            #expect(platform["host"] as? String == ReleaseHeader.hostPlatform)
            #expect(platform["version"] as? String == "2.0")
        }

        let foreign = try sync.fixture.bundle(from: "1.0", to: "2.0")
        let applied = try sync.fixture.apply(foreign, root: root)
        #expect(applied.status == 5, "\(applied.stderr)")
        #expect(applied.stderr.contains(Self.otherPlatform), "\(applied.stderr)")
        try await sync.expect(root, equals: 1, "after apply")

        // A release published for any platform installs everywhere.
        try sync.fixture.publish("3.0", sync.trees[2].root, extra: ["--platform", ReleaseHeader.anyPlatform])
        let any = try sync.sync(server, root: root)
        #expect(any.status == 0, "\(any.stderr)")
        try await sync.expect(root, equals: 3, "platform any")
    }

    static func text(_ path: String) -> String? {
        (try? Data(contentsOf: URL(fileURLWithPath: path))).map { String(decoding: $0, as: UTF8.self) }
    }

    static func changes(_ result: CommandResult) throws -> [String: String] {
        let document = try #require(
            try JSONSerialization.jsonObject(with: result.stdout) as? [String: Any],
            "\(result.stderr)"
        )
        var found = [String: String]()
        for change in document["localChanges"] as? [[String: Any]] ?? [] {
            found[change["path"] as? String ?? "?"] = change["action"] as? String
        }
        return found
    }

    @Test(
        "config files merge 3-way (.upgrade-new on conflict), unmanaged and keep paths stay, reverts and deletes are listed and rolled back"
    )
    func configAndUnmanaged() async throws {
        let fixture = try ApplyFixture()
        let policy = ["--config", "etc/*.toml", "--unmanaged", "var/log"]
        let one = try TemporaryTree()
        try one.file("bin/app", "#!/bin/sh\necho 1\n", mode: 0o755)
        try one.file("etc/myapp.toml", "a = 1\n")
        try one.file("etc/other.toml", "x = 1\n")
        try one.file("share/myapp/data.txt", "data 1\n")
        try one.file("var/log/publisher.log", "not published\n")
        try fixture.publish("1.0", one.root, extra: policy)
        let two = try TemporaryTree()
        try two.file("bin/app", "#!/bin/sh\necho 2\n", mode: 0o755)
        try two.file("etc/myapp.toml", "a = 2\n")
        try two.file("etc/other.toml", "x = 1\n")
        try two.file("share/myapp/data.txt", "data 2\n")
        try fixture.publish("2.0", two.root, extra: policy)
        let server = try ServerProcess(repo: fixture.repo)
        let root = fixture.work.path("root")
        func sync(_ extra: [String]) throws -> CommandResult {
            try Upgrade.run(
                ["sync", "--server", server.url, "--product", "app", "--root", root, "--trust", fixture.pub] + extra
            )
        }
        let first = try fixture.bundle(from: nil, to: "1.0")
        #expect(try fixture.apply(first, root: root).status == 0)
        #expect(!FileManager.default.fileExists(atPath: root + "/var/log/publisher.log"), "unmanaged path published")

        // The operator's changes.
        try "a = local\n".write(toFile: root + "/etc/myapp.toml", atomically: true, encoding: .utf8)
        try "x = local\n".write(toFile: root + "/etc/other.toml", atomically: true, encoding: .utf8)
        try "#!/bin/sh\necho patched\n".write(toFile: root + "/bin/app", atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: root + "/var/log", withIntermediateDirectories: true)
        try "log line\n".write(toFile: root + "/var/log/app.log", atomically: true, encoding: .utf8)
        try "stray\n".write(toFile: root + "/share/myapp/stray.txt", atomically: true, encoding: .utf8)
        try "mine\n".write(toFile: root + "/share/myapp/mine.txt", atomically: true, encoding: .utf8)

        let dry = try sync(["--dry-run", "--keep", "share/myapp/mine.txt"])
        #expect(dry.status == 0, "\(dry.stderr)")
        let said = String(decoding: dry.stdout, as: UTF8.self)
        #expect(said.contains("conflict etc/myapp.toml"), "\(said)")
        #expect(said.contains("deleted share/myapp/stray.txt"), "\(said)")
        #expect(said.contains("reverted bin/app"), "\(said)")
        #expect(!said.contains("var/log"), "\(said)")
        #expect(Self.text(root + "/share/myapp/stray.txt") == "stray\n", "dry run changed the tree")

        let synced = try sync(["--json", "--keep", "share/myapp/mine.txt"])
        #expect(synced.status == 0, "\(synced.stderr)")
        let changes = try Self.changes(synced)
        #expect(changes["etc/myapp.toml"] == "conflict", "\(changes)")
        #expect(changes["etc/other.toml"] == "kept", "\(changes)")
        #expect(changes["share/myapp/stray.txt"] == "deleted", "\(changes)")
        #expect(changes["bin/app"] == "reverted", "\(changes)")
        #expect(changes.keys.allSatisfy { !$0.hasPrefix("var/log") }, "\(changes)")
        #expect(Self.text(root + "/etc/myapp.toml") == "a = local\n")
        #expect(Self.text(root + "/etc/myapp.toml.upgrade-new") == "a = 2\n")
        #expect(Self.text(root + "/etc/other.toml") == "x = local\n")
        #expect(Self.text(root + "/var/log/app.log") == "log line\n")
        #expect(Self.text(root + "/share/myapp/mine.txt") == "mine\n")
        #expect(Self.text(root + "/share/myapp/stray.txt") == nil)
        #expect(Self.text(root + "/share/myapp/data.txt") == "data 2\n")
        #expect(Self.text(root + "/bin/app") == "#!/bin/sh\necho 2\n")

        // Again: nothing to do, nothing printed, the kept files stay.
        let again = try sync(["--keep", "share/myapp/mine.txt"])
        #expect(
            again.status == 0 && again.stdout.isEmpty,
            "\(again.stderr) \(String(decoding: again.stdout, as: UTF8.self))"
        )
        #expect(Self.text(root + "/etc/myapp.toml.upgrade-new") == "a = 2\n")
        #expect(Self.text(root + "/var/log/app.log") == "log line\n")

        // Rollback brings back the tree as it was, local edits and the stray file included;
        // unmanaged paths stay as they are now.
        try "written since\n".write(toFile: root + "/var/log/new.log", atomically: true, encoding: .utf8)
        let back = try Upgrade.run(["rollback", "--root", root])
        #expect(back.status == 0, "\(back.stderr)")
        #expect(Self.text(root + "/share/myapp/stray.txt") == "stray\n")
        #expect(Self.text(root + "/bin/app") == "#!/bin/sh\necho patched\n")
        #expect(Self.text(root + "/etc/myapp.toml") == "a = local\n")
        #expect(Self.text(root + "/etc/myapp.toml.upgrade-new") == nil)
        #expect(Self.text(root + "/var/log/app.log") == "log line\n")
        #expect(Self.text(root + "/var/log/new.log") == "written since\n")
        let status = try Upgrade.run(["verify", "--root", root])
        #expect(status.status == 4, "local edits are differences from 1.0: \(status.stderr)")

        // A delta bundle cannot rebuild a file from a locally edited base, and says so.
        let deltas = try fixture.bundle(from: "1.0", to: "2.0")
        let refused = try fixture.apply(deltas, root: root)
        #expect(refused.status == 4 && refused.stderr.contains("full bundle"), "\(refused.stderr)")
        #expect(Self.text(root + "/share/myapp/stray.txt") == "stray\n")

        // The same decisions through a full bundle.
        let bundle = try fixture.bundle(from: nil, to: "2.0")
        let applied = try fixture.apply(bundle, root: root, extra: ["--json", "--keep", "share/myapp/mine.txt"])
        #expect(applied.status == 0, "\(applied.stderr)")
        let viaBundle = try Self.changes(applied)
        #expect(
            viaBundle["etc/myapp.toml"] == "conflict" && viaBundle["share/myapp/stray.txt"] == "deleted",
            "\(viaBundle)"
        )
        #expect(Self.text(root + "/etc/myapp.toml") == "a = local\n")
        #expect(Self.text(root + "/etc/myapp.toml.upgrade-new") == "a = 2\n")
        #expect(Self.text(root + "/share/myapp/mine.txt") == "mine\n")
        #expect(Self.text(root + "/var/log/new.log") == "written since\n")
    }

    static func info(_ path: String) -> stat? {
        var info = stat()
        return lstat(path, &info) == 0 ? info : nil
    }

    static func shell(_ command: String) throws -> CommandResult {
        try runProgram("/bin/sh", ["-c", command])
    }

    @Test(
        "owners, security.capability, hard links and sparse files come out as published; an ownership-only release downloads nothing; verify names the kind",
        .enabled(if: Prerequisites.rootWithSetcap, "needs root and setcap (make deps installs libcap2-bin)")
    )
    func metadata() async throws {
        let fixture = try ApplyFixture()
        let one = try TemporaryTree()
        try one.file("bin/server", "#!/bin/sh\necho serving\n", mode: 0o755)
        try one.file("lib/a.so", noise(40_000, seed: 3))
        try one.file("share/doc.txt", "documentation\n")
        #expect(link(one.path("lib/a.so"), one.path("lib/b.so")) == 0)
        #expect(chown(one.path("bin/server"), 1000, 1000) == 0)
        let setcap = try Self.shell("setcap cap_net_bind_service=ep '\(one.path("bin/server"))'")
        try #require(setcap.status == 0, "setcap: \(setcap.stderr)")
        let sparse = one.path("data/sparse.img")
        try FileManager.default.createDirectory(atPath: one.path("data"), withIntermediateDirectories: true)
        #expect(FileManager.default.createFile(atPath: sparse, contents: nil))
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: sparse))
        try handle.truncate(atOffset: 64 << 20)
        try handle.seek(toOffset: 32 << 20)
        try handle.write(contentsOf: Data("x".utf8))
        try handle.close()
        try fixture.publish("1.0", one.root)
        let server = try ServerProcess(repo: fixture.repo)
        let root = fixture.work.path("root")
        func sync(_ extra: [String] = []) throws -> CommandResult {
            try Upgrade.run(
                ["sync", "--server", server.url, "--product", "app", "--root", root, "--trust", fixture.pub] + extra
            )
        }
        let installed = try sync()
        #expect(installed.status == 0, "\(installed.stderr)")

        let binary = try #require(Self.info(root + "/bin/server"))
        #expect(binary.st_uid == 1000 && binary.st_gid == 1000, "owner \(binary.st_uid):\(binary.st_gid)")
        #expect(binary.st_mode & 0o7777 == 0o755)
        let caps = try Self.shell("getcap '\(root)/bin/server'")
        #expect(String(decoding: caps.stdout, as: UTF8.self).contains("cap_net_bind_service"), "\(caps.stderr)")
        let a = try #require(Self.info(root + "/lib/a.so"))
        let b = try #require(Self.info(root + "/lib/b.so"))
        #expect(a.st_ino == b.st_ino && a.st_nlink == 2, "the hard-linked pair became two files")
        let image = try #require(Self.info(root + "/data/sparse.img"))
        #expect(image.st_size == 64 << 20)
        #expect(Int(image.st_blocks) * 512 < 1 << 20, "sparse file takes \(image.st_blocks * 512) bytes")
        #expect(try Upgrade.run(["verify", "--root", root]).status == 0)

        // 1.1 changes only the owner of one file: nothing to download.
        #expect(chown(one.path("share/doc.txt"), 1000, 1000) == 0)
        try fixture.publish("1.1", one.root)
        let owners = try sync(["--json"])
        #expect(owners.status == 0, "\(owners.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: owners.stdout) as? [String: Any])
        #expect(report["bytesDownloaded"] as? Int == 0, "\(report)")
        #expect(report["toVersion"] as? String == "1.1")
        #expect(Self.info(root + "/share/doc.txt")?.st_uid == 1000)

        // Local drift is reported by kind.
        #expect(chown(root + "/bin/server", 0, 0) == 0)
        #expect(
            try Self.shell("cp '\(root)/lib/b.so' '\(root)/b.tmp' && mv '\(root)/b.tmp' '\(root)/lib/b.so'").status == 0
        )
        let verify = try Upgrade.run(["verify", "--root", root, "--json"])
        #expect(verify.status == 4)
        let said = String(decoding: verify.stdout, as: UTF8.self)
        #expect(said.contains("\"owner\"") && said.contains("bin/server"), "\(said)")
        #expect(said.contains("\"link\"") && said.contains("lib/b.so"), "\(said)")

        // Rollback to 1.0 takes the new owner back.
        let back = try Upgrade.run(["rollback", "--root", root])
        #expect(back.status == 0, "\(back.stderr)")
        #expect(Self.info(root + "/share/doc.txt")?.st_uid == 0)
        #expect(Self.info(root + "/bin/server")?.st_uid == 1000, "rollback restores the recorded owner")
        let restored = try Self.shell("getcap '\(root)/bin/server'")
        #expect(String(decoding: restored.stdout, as: UTF8.self).contains("cap_net_bind_service"))

        // 1.2 revokes the capability (same bytes): it goes, with nothing downloaded.
        #expect(try Self.shell("setcap -r '\(one.path("bin/server"))'").status == 0)
        try fixture.publish("1.2", one.root)
        let revoked = try sync(["--json"])
        #expect(revoked.status == 0, "\(revoked.stderr)")
        let after = try Self.shell("getcap '\(root)/bin/server'")
        #expect(!String(decoding: after.stdout, as: UTF8.self).contains("cap_net_bind_service"), "capability kept")
        #expect(Self.info(root + "/bin/server")?.st_uid == 1000)
        #expect(try Upgrade.run(["verify", "--root", root]).status == 0)
    }

    @Test("the path policy holds offline too: a peer's release keeps a local config edit and writes .upgrade-new")
    func policyOffline() async throws {
        let fixture = try ApplyFixture()
        for version in 1...2 {
            let tree = try TemporaryTree()
            try tree.file("bin/app", "#!/bin/sh\necho \(version)\n", mode: 0o755)
            try tree.file("etc/app.toml", "level = \(version)\n")
            try fixture.publish("\(version).0", tree.root, extra: ["--config", "etc/*.toml"])
        }
        let holder = fixture.work.path("holder")
        #expect(try fixture.apply(try fixture.bundle(from: nil, to: "2.0"), root: holder).status == 0)
        let share = try ListeningProcess([
            Upgrade.binary, "share", "--root", holder, "--listen", "127.0.0.1:0", "--announce", "off", "--log-level",
            "warning",
        ])
        defer { share.stop() }
        let root = fixture.work.path("root")
        #expect(try fixture.apply(try fixture.bundle(from: nil, to: "1.0"), root: root).status == 0)
        try "level = local\n".write(toFile: root + "/etc/app.toml", atomically: true, encoding: .utf8)
        let address = String(share.url.dropFirst("http://".count))
        let offline = try Upgrade.run([
            "sync", "--offline", "--peers", address, "--product", "app", "--root", root, "--trust", fixture.pub,
            "--json",
        ])
        #expect(offline.status == 0, "\(offline.stderr)")
        #expect(try Self.changes(offline)["etc/app.toml"] == "conflict")
        #expect(Self.text(root + "/etc/app.toml") == "level = local\n")
        #expect(Self.text(root + "/etc/app.toml.upgrade-new") == "level = 2\n")
        #expect(Self.text(root + "/bin/app") == "#!/bin/sh\necho 2\n")
    }
}
