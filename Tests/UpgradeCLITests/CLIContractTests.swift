import Crypto
import Foundation
import Testing
import UpgradeTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The command-line contract scripts rely on: exit codes, error messages, the `--json`
/// documents, the config file, proxies, progress, help and the README, installation.
@Suite("CLI contract", .serialized)
struct CLIContractTests {
    /// The JSON document a command printed.
    static func document(_ result: CommandResult) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: result.stdout) as? [String: Any], "\(result.text)")
    }

    /// Every entry under `path` with its size and modification time: what "writes nothing" compares.
    static func snapshot(_ path: String) throws -> [String: String] {
        var entries = [String: String]()
        let enumerator = FileManager.default.enumerator(atPath: path)
        while let name = enumerator?.nextObject() as? String {
            var info = stat()
            lstat(path + "/" + name, &info)
            entries[name] = "\(info.st_size) \(info.st_mtim.tv_sec).\(info.st_mtim.tv_nsec) \(info.st_ino)"
        }
        return entries
    }

    @Test("a typo or a missing argument is exit 2 and publishes nothing")
    func usageErrors() throws {
        let fixture = try ApplyFixture()
        let tree = "\(PublishedRepository.examples)/myapp-1.0"
        let typo = try Upgrade.run([
            "publish", "--repo", fixture.repo, "--product", "app", "--version", "1.0", "--kee", fixture.key, tree,
        ])
        #expect(typo.status == 2, "\(typo.stderr)")
        #expect(typo.stderr.contains("upgrade publish --help"), "\(typo.stderr)")
        let noDirectory = try Upgrade.run([
            "publish", "--repo", fixture.repo, "--product", "app", "--version", "1.4.0", "--key", fixture.key,
        ])
        #expect(noDirectory.status == 2, "\(noDirectory.stderr)")
        #expect(!noDirectory.text.contains("0.1.0"))
        #expect(!FileManager.default.fileExists(atPath: fixture.repo))
        // --json callers get the error document for usage errors too.
        let json = try Upgrade.run(["status", "--json", "--bogus"])
        #expect(json.status == 2)
        let document = try Self.document(json)
        #expect(document["ok"] as? Bool == false)
        #expect(document["exitCode"] as? Int == 2)
        #expect((document["error"] as? [String: Any])?["code"] as? String == "usage")
    }

    @Test("no error echoes a file's contents: a private key given as --trust is named by path, never printed")
    func noSecretsInErrors() throws {
        let fixture = try ApplyFixture()
        let secret = try String(contentsOfFile: fixture.key, encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let base64 = String(secret.split(separator: ":").last ?? "")
        let root = fixture.work.path("root")
        let result = try Upgrade.run([
            "sync", "--server", "http://127.0.0.1:9", "--product", "app", "--root", root, "--trust", fixture.key,
            "--json",
        ])
        #expect(result.status == 3, "\(result.stderr)")
        #expect(!result.stderr.contains(base64) && !result.text.contains(base64), "the private key leaked")
        #expect(result.stderr.contains(fixture.key + ":1"), "\(result.stderr)")
        #expect(result.stderr.contains(".pub"), "\(result.stderr)")
        #expect(!FileManager.default.fileExists(atPath: root), "a refused run created the root")
    }

    @Test("unusable URLs are exit 2 at once, with the hint; the root is not touched")
    func badURLs() throws {
        let fixture = try ApplyFixture()
        let root = fixture.work.path("root")
        for (url, hint) in [("ftp://127.0.0.1:1", "http:// and https://"), ("127.0.0.1:1", "http://127.0.0.1:1")] {
            let result = try Upgrade.run([
                "sync", "--server", url, "--product", "app", "--root", root, "--trust", fixture.pub,
            ])
            #expect(result.status == 2, "\(url): \(result.stderr)")
            #expect(result.stderr.contains(url) && result.stderr.contains(hint), "\(result.stderr)")
            #expect(!result.stderr.contains("attempts"), "retried: \(result.stderr)")
        }
        let mirror = try Upgrade.run([
            "sync", "--server", "http://127.0.0.1:9", "--mirror", "cdn.example", "--product", "app", "--root", root,
            "--trust", fixture.pub,
        ])
        #expect(mirror.status == 2 && mirror.stderr.contains("--mirror"), "\(mirror.stderr)")
        let caCert = try Upgrade.run([
            "sync", "--server", "https://127.0.0.1:9", "--product", "app", "--root", root, "--trust", fixture.pub,
            "--ca-cert", fixture.work.path("missing.pem"),
        ])
        #expect(caCert.status == 2, "\(caCert.stderr)")
        #expect(caCert.stderr.contains(fixture.work.path("missing.pem")), "\(caCert.stderr)")
        #expect(!FileManager.default.fileExists(atPath: root))
    }

    @Test("an unknown product or channel is exit 11, not retried; the JSON error document says not-found")
    func notFound() throws {
        let sync = try SyncFixture(releases: 1)
        let server = try ServerProcess(repo: sync.repo)
        let root = sync.fixture.work.path("root")
        let product = try Upgrade.run([
            "sync", "--server", server.url, "--product", "nosuch", "--root", root, "--trust", sync.fixture.pub,
            "--json",
        ])
        #expect(product.status == 11, "\(product.stderr)")
        #expect(product.stderr.contains("nosuch") && !product.stderr.contains("attempts"), "\(product.stderr)")
        let document = try Self.document(product)
        #expect(document["format"] as? String == "upgrade-output/1")
        #expect(document["command"] as? String == "sync")
        #expect((document["error"] as? [String: Any])?["code"] as? String == "not-found")
        let channel = try sync.sync(server, root: root, ["--channel", "beta"])
        #expect(channel.status == 11 && channel.stderr.contains("beta"), "\(channel.stderr)")
    }

    @Test("TLS: an untrusted certificate fails at once with the --ca-cert hint; https:// to plain HTTP hints http://")
    func tlsHints() throws {
        let sync = try SyncFixture(releases: 1)
        let work = sync.fixture.work
        let made = try runProgram(
            "/usr/bin/openssl",
            [
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", work.path("key.pem"), "-out",
                work.path("cert.pem"),
            ]
        )
        #expect(made.status == 0, "\(made.stderr)")
        let tls = try ServerProcess(
            repo: sync.repo,
            extra: ["--tls-cert", work.path("cert.pem"), "--tls-key", work.path("key.pem")]
        )
        let untrusted = try sync.sync(tls, root: work.path("a"))
        #expect(untrusted.status == 10, "\(untrusted.stderr)")
        #expect(untrusted.stderr.contains("--ca-cert") && !untrusted.stderr.contains("attempts"), "\(untrusted.stderr)")
        let plain = try ServerProcess(repo: sync.repo)
        let mismatch = try Upgrade.run([
            "sync", "--server", plain.url.replacingOccurrences(of: "http://", with: "https://"), "--product",
            sync.fixture.product, "--root", work.path("b"), "--trust", sync.fixture.pub,
        ])
        #expect(mismatch.status == 10, "\(mismatch.stderr)")
        #expect(mismatch.stderr.contains("try http://") && !mismatch.stderr.contains("attempts"), "\(mismatch.stderr)")
        // serve names the file it cannot load and the address it cannot bind.
        let badCert = try Upgrade.run([
            "serve", "--repo", sync.repo, "--listen", "127.0.0.1:0", "--tls-cert", work.path("nope.pem"), "--tls-key",
            work.path("key.pem"),
        ])
        #expect(badCert.status == 2 && badCert.stderr.contains(work.path("nope.pem")), "\(badCert.stderr)")
        let taken = String(plain.url.dropFirst("http://".count))
        let busy = try Upgrade.run(["serve", "--repo", sync.repo, "--listen", taken])
        #expect(busy.status == 1, "\(busy.stderr)")
        #expect(busy.stderr.contains(taken) && busy.stderr.contains("already in use"), "\(busy.stderr)")
    }

    @Test("exit codes: root a file 3, downgrade 5, a bundle applied twice 0, verify of an empty root 3 writing nothing")
    func exitCodes() async throws {
        let fixture = try ApplyFixture()
        try fixture.publish("1.0", "\(PublishedRepository.examples)/myapp-1.0")
        try fixture.publish("1.1", "\(PublishedRepository.examples)/myapp-1.1")
        let file = fixture.work.path("plain-file")
        try Data("x".utf8).write(to: URL(fileURLWithPath: file))
        let onFile = try fixture.apply(try fixture.bundle(from: nil, to: "1.0"), root: file)
        #expect(onFile.status == 3, "\(onFile.stderr)")
        #expect(onFile.stderr.contains("not a directory"), "\(onFile.stderr)")

        let root = fixture.work.path("root")
        let full = try fixture.bundle(from: nil, to: "1.1")
        #expect(try fixture.apply(full, root: root).status == 0)
        let again = try fixture.apply(full, root: root, extra: ["--json"])
        #expect(again.status == 0, "\(again.stderr)")
        #expect(try Self.document(again)["result"] as? String == "nothing-to-do")
        let older = try fixture.apply(try fixture.bundle(from: "1.1", to: "1.0"), root: root)
        #expect(older.status == 5, "\(older.stderr)")
        #expect(older.stderr.contains("--allow-downgrade"), "\(older.stderr)")
        // The error document names both releases by version and signed sequence.
        let olderJSON = try fixture.apply(try fixture.bundle(from: "1.1", to: "1.0"), root: root, extra: ["--json"])
        #expect(olderJSON.status == 5)
        let downgrade = try #require(try Self.document(olderJSON)["downgrade"] as? [String: Any])
        #expect((downgrade["offered"] as? [String: Any])?["version"] as? String == "1.0", "\(downgrade)")
        #expect((downgrade["offered"] as? [String: Any])?["sequence"] as? Int == 1, "\(downgrade)")
        #expect((downgrade["installed"] as? [String: Any])?["version"] as? String == "1.1", "\(downgrade)")
        #expect((downgrade["installed"] as? [String: Any])?["sequence"] as? Int == 2, "\(downgrade)")

        let empty = fixture.work.path("empty")
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        let verify = try Upgrade.run(["verify", "--root", empty])
        #expect(verify.status == 3, "\(verify.stderr)")
        #expect(verify.stderr.contains("nothing is installed") && !verify.stderr.contains("roll"), "\(verify.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: empty).isEmpty, "verify wrote into the root")
    }

    @Test("status and verify write nothing into a root; status shows the lock holder's pid")
    func readOnlyCommands() async throws {
        let fixture = try ApplyFixture()
        try fixture.publish("1.0", "\(PublishedRepository.examples)/myapp-1.0")
        let root = fixture.work.path("root")
        #expect(try fixture.apply(try fixture.bundle(from: nil, to: "1.0"), root: root).status == 0)
        try Data("local edit\n".utf8).write(to: URL(fileURLWithPath: root + "/etc/myapp.toml"))
        try FileManager.default.removeItem(atPath: root + "/.upgrade/lock")
        let before = try Self.snapshot(root)
        #expect(try Upgrade.run(["status", "--root", root]).status == 0)
        #expect(try Upgrade.run(["status", "--root", root, "--json"]).status == 0)
        let verify = try Upgrade.run(["verify", "--root", root, "--json"])
        #expect(verify.status == 4)
        let differences = try #require(try Self.document(verify)["differences"] as? [[String: String]])
        #expect(differences == [["path": "etc/myapp.toml", "kind": "content"]], "\(differences)")
        #expect(try Self.snapshot(root) == before, "a read-only command changed the root")

        // A holder of the lock shows up in status, with its pid.
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/bin/sh")
        holder.arguments = ["-c", "echo $$ > \"$0\"/.upgrade/lock; exec flock \"$0\"/.upgrade/lock sleep 30", root]
        try holder.run()
        defer {
            _ = try? runProgram("/usr/bin/pkill", ["-KILL", "-P", "\(holder.processIdentifier)"])
            holder.terminate()
            holder.waitUntilExit()
        }
        var lock = [String: Any]()
        for _ in 0..<100 {
            lock =
                try Self.document(try Upgrade.run(["status", "--root", root, "--json"]))["lock"] as? [String: Any]
                ?? [:]
            if lock["held"] as? Bool == true { break }
            usleep(50_000)
        }
        #expect(lock["held"] as? Bool == true, "\(lock)")
        #expect(lock["pid"] as? Int == Int(holder.processIdentifier), "\(lock)")
        #expect(
            try Upgrade.run(["status", "--root", root]).text.contains("locked by: pid \(holder.processIdentifier)")
        )
    }

    @Test("--json documents are typed and versioned: status, sync (dry run and install), failures")
    func jsonContract() async throws {
        let sync = try SyncFixture(releases: 2)
        let server = try ServerProcess(repo: sync.repo)
        let root = sync.fixture.work.path("root")
        #expect(try sync.sync(server, root: root, ["--channel", "stable"]).status == 0)
        let failed = try sync.sync(server, root: root, ["--channel", "nosuch"])
        #expect(failed.status == 11)
        try sync.publish(3)
        let dry = try Self.document(try sync.sync(server, root: root, ["--dry-run", "--json"]))
        #expect(dry["result"] as? String == "dry-run")
        let operations = try #require(dry["operations"] as? [[String: Any]])
        #expect(operations.contains { $0["op"] as? String == "add" && $0["path"] as? String == "share/v3.txt" })
        let installed = try Self.document(try sync.sync(server, root: root, ["--json"]))
        #expect(installed["ok"] as? Bool == true && installed["exitCode"] as? Int == 0)
        #expect(installed["result"] as? String == "installed")
        #expect(installed["toVersion"] as? String == "3.0")
        #expect(installed["bytesDownloaded"] is Int)
        let upToDate = try Self.document(try sync.sync(server, root: root, ["--json"]))
        #expect(upToDate["result"] as? String == "up-to-date")

        let status = try Self.document(try Upgrade.run(["status", "--root", root, "--json"]))
        #expect(status["format"] as? String == "upgrade-output/1")
        let release = try #require(status["installed"] as? [String: Any])
        #expect(release["version"] as? String == "3.0")
        #expect(release["sequence"] as? Int == 3)
        #expect(status["rollbackAvailable"] as? Bool == true)
        #expect(status["channel"] as? String == "stable")
        #expect((status["lastResult"] as? [String: Any])?["result"] as? String == "installed")
        let attempt = try #require(status["lastAttempt"] as? [String: Any])
        let success = try #require(status["lastSuccess"] as? [String: Any])
        #expect(attempt["command"] as? String == "sync" && attempt["exitCode"] as? Int == 0)
        #expect(success["version"] as? String == "3.0")
        #expect((attempt["at"] as? String)?.hasSuffix("Z") == true)

        // A failed attempt is recorded beside the last success.
        #expect(try sync.sync(server, root: root, ["--channel", "nosuch"]).status == 11)
        let after = try Self.document(try Upgrade.run(["status", "--root", root, "--json"]))
        #expect((after["lastAttempt"] as? [String: Any])?["exitCode"] as? Int == 11)
        #expect((after["lastAttempt"] as? [String: Any])?["channel"] as? String == "nosuch")
        #expect((after["lastSuccess"] as? [String: Any])?["version"] as? String == "3.0")
        let text = try Upgrade.run(["status", "--root", root]).text
        #expect(text.contains("last attempt:") && text.contains("exit 11"), "\(text)")
    }

    @Test("the config file is TOML: a multi-line trust array works; a type error names the line")
    func tomlConfig() async throws {
        let sync = try SyncFixture(releases: 1)
        let server = try ServerProcess(repo: sync.repo)
        let root = sync.fixture.work.path("root")
        let config = sync.fixture.work.path("sync.toml")
        try """
        # a real TOML file
        server = "\(server.url)"
        product = 'app'
        root = "\(root)"
        trust = [
            "\(sync.fixture.pub)",  # the publisher
        ]
        parallel = 2
        """.write(toFile: config, atomically: true, encoding: .utf8)
        let result = try Upgrade.run(["sync", "--config", config])
        #expect(result.status == 0, "\(result.stderr)")
        try await sync.expect(root, equals: 1, "toml config")

        try
            "server = \"\(server.url)\"\nproduct = \"app\"\nparallel = \"four\"\nroot = \"\(root)\"\ntrust = \"\(sync.fixture.pub)\"\n"
            .write(toFile: config, atomically: true, encoding: .utf8)
        let wrong = try Upgrade.run(["sync", "--config", config])
        #expect(wrong.status == 2)
        #expect(wrong.stderr.contains("\(config):3: parallel must be a number, not a string"), "\(wrong.stderr)")
        try "server = \"unterminated\nproduct = \"app\"\n".write(toFile: config, atomically: true, encoding: .utf8)
        let syntax = try Upgrade.run(["sync", "--config", config])
        #expect(syntax.status == 2 && syntax.stderr.contains("\(config):1:"), "\(syntax.stderr)")
    }

    @Test("http_proxy is honoured (CONNECT through a loopback proxy), no_proxy bypasses it, a bad one is exit 2")
    func proxies() async throws {
        let sync = try SyncFixture(releases: 1)
        let server = try ServerProcess(repo: sync.repo)
        let port = Int(server.url.split(separator: ":").last!)!
        let proxy = try ConnectProxy(upstream: port)
        defer { proxy.stop() }
        // The server listens on 127.0.0.1 only: 127.0.0.2 (loopback too) refuses a direct
        // connection, and the proxy tunnels it to the server.
        let viaName = "http://127.0.0.2:\(port)"
        func run(_ root: String, _ environment: [String: String]) throws -> CommandResult {
            try Upgrade.run(
                ["sync", "--server", viaName, "--product", "app", "--root", root, "--trust", sync.fixture.pub],
                environment: ["https_proxy": "", "HTTP_PROXY": "", "HTTPS_PROXY": "", "no_proxy": "", "NO_PROXY": ""]
                    .merging(environment) { $1 }
            )
        }
        let root = sync.fixture.work.path("root")
        let viaProxy = try run(root, ["http_proxy": proxy.url])
        #expect(viaProxy.status == 0, "\(viaProxy.stderr)")
        try await sync.expect(root, equals: 1, "through the proxy")
        #expect(proxy.targets.contains("127.0.0.2:\(port)"), "\(proxy.targets)")

        let tunnels = proxy.targets.count
        let direct = try run(sync.fixture.work.path("direct"), ["http_proxy": proxy.url, "no_proxy": "127.0.0.2"])
        #expect(direct.status == 10, "\(direct.stderr)")
        #expect(proxy.targets.count == tunnels, "no_proxy still went through the proxy")

        let bad = try run(sync.fixture.work.path("bad"), ["http_proxy": "socks5://user:secret@127.0.0.1:1"])
        #expect(bad.status == 2 && bad.stderr.contains("$http_proxy"), "\(bad.stderr)")
        #expect(!bad.stderr.contains("secret"), "the proxy password leaked: \(bad.stderr)")
    }
}
