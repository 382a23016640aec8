import Foundation
import Testing
import UpgradeCore
import UpgradeTestSupport

/// What a sync costs on the wire: the manifest as a patch or compressed, the plan compressed
/// and inline.
@Suite("Wire cost", .serialized)
struct WireCostTests {
    static func report(_ result: CommandResult) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: result.stdout) as? [String: Any], "\(result.stderr)")
    }

    @Test(
        "the manifest comes as a patch from the installed one; a bad patch falls back to manifest.zst, then the plain file"
    )
    func manifestForms() async throws {
        let sync = try SyncFixture(releases: 3)
        let server = try ServerProcess(repo: sync.repo)
        let release3 = sync.repo + "/releases/app/3.0"
        let compressed = try #require(
            FileManager.default.attributesOfItem(atPath: release3 + "/manifest.zst")[.size] as? Int
        )
        let plain = try #require(FileManager.default.attributesOfItem(atPath: release3 + "/manifest")[.size] as? Int)
        #expect(compressed < plain)
        let patches = try FileManager.default.contentsOfDirectory(atPath: release3 + "/manifest-from")
        #expect(!patches.isEmpty, "publish wrote no manifest patch")

        func installAt(_ version: Int, _ root: String) throws {
            let bundle = sync.fixture.work.path("b\(version)")
            if !FileManager.default.fileExists(atPath: bundle) {
                let made = try Upgrade.run([
                    "bundle", "--repo", sync.repo, "--product", "app", "--to", "\(version).0", "--output", bundle,
                ])
                #expect(made.status == 0, "\(made.stderr)")
            }
            #expect(try sync.fixture.apply(bundle, root: root).status == 0)
        }

        let a = sync.fixture.work.path("a")
        try installAt(2, a)
        let patched = try Self.report(try sync.sync(server, root: a, ["--json"]))
        #expect(patched["manifestForm"] as? String == "patch")
        #expect((patched["manifestBytes"] as? Int ?? .max) < compressed, "\(patched)")
        try await sync.expect(a, equals: 3, "patched manifest")

        // A patch that does not decode to the signed manifest is not trusted: the compressed form is.
        for name in patches {
            try Data(repeating: 0x55, count: 64).write(to: URL(fileURLWithPath: release3 + "/manifest-from/" + name))
        }
        let b = sync.fixture.work.path("b")
        try installAt(2, b)
        let fallback = try Self.report(try sync.sync(server, root: b, ["--json"]))
        #expect(fallback["manifestForm"] as? String == "compressed", "\(fallback)")
        try await sync.expect(b, equals: 3, "compressed manifest")

        // A repository from before either form: the plain manifest.
        try FileManager.default.removeItem(atPath: release3 + "/manifest-from")
        try FileManager.default.removeItem(atPath: release3 + "/manifest.zst")
        let c = sync.fixture.work.path("c")
        try installAt(1, c)
        let old = try Self.report(try sync.sync(server, root: c, ["--json"]))
        #expect(old["manifestForm"] as? String == "plain", "\(old)")
        try await sync.expect(c, equals: 3, "plain manifest")
    }

    @Test("plan responses are zstd on the wire when accepted, and carry the plan inline (no base64)")
    func compressedPlan() throws {
        let sync = try SyncFixture(releases: 1)
        let server = try ServerProcess(repo: sync.repo)
        let empty = try Manifest(entries: [], hooks: Hooks())
        let body = """
            {"product":"app","channel":"stable","device":{"os":"linux","arch":"x86_64","id":"wire-test"},\
            "manifest":"\(Data(empty.canonicalEncoding()).base64EncodedString())","accepts":["inline-plan"]}
            """
        let work = sync.fixture.work
        try body.write(toFile: work.path("request.json"), atomically: true, encoding: .utf8)
        let zstd = try runProgram(
            "/usr/bin/curl",
            [
                "-s", "-D", work.path("headers"), "-o", work.path("plan.zst"), "-H", "Content-Type: application/json",
                "-H", "Accept-Encoding: zstd", "--data-binary", "@" + work.path("request.json"),
                server.url + "/v1/plan",
            ]
        )
        #expect(zstd.status == 0, "\(zstd.stderr)")
        let headers = try String(contentsOfFile: work.path("headers"), encoding: .utf8).lowercased()
        #expect(headers.contains("content-encoding: zstd"), "\(headers)")
        let decoded = try runProgram(
            "/usr/bin/zstd",
            ["-d", "-q", "-f", work.path("plan.zst"), "-o", work.path("plan.json")]
        )
        #expect(decoded.status == 0, "\(decoded.stderr)")
        let document = try #require(
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: work.path("plan.json"))))
                as? [String: Any]
        )
        #expect(document["plan"] as? String == "")
        let plan = try #require(document["planJSON"] as? [String: Any])
        #expect(plan["format"] as? String == "upgrade-plan/1")
        #expect((plan["operations"] as? [Any])?.isEmpty == false)
        let wire = try #require(FileManager.default.attributesOfItem(atPath: work.path("plan.zst"))[.size] as? Int)
        let json = try #require(FileManager.default.attributesOfItem(atPath: work.path("plan.json"))[.size] as? Int)
        #expect(wire < json, "compressed \(wire) vs \(json)")

        // Without Accept-Encoding: zstd the answer is plain JSON.
        let plain = try runProgram(
            "/usr/bin/curl",
            [
                "-s", "-D", work.path("headers2"), "-H", "Content-Type: application/json",
                "--data-binary", "@" + work.path("request.json"), server.url + "/v1/plan",
            ]
        )
        #expect(
            !(try String(contentsOfFile: work.path("headers2"), encoding: .utf8)).lowercased().contains(
                "content-encoding"
            )
        )
        #expect((try JSONSerialization.jsonObject(with: plain.stdout) as? [String: Any])?["planJSON"] != nil)
    }

    @Test(
        "a first install gets no plan on the wire; small payloads travel in packs: 60 new files cost a handful of requests, each object still verified"
    )
    func packs() async throws {
        let fixture = try ApplyFixture()
        let tree = try TemporaryTree()
        for i in 0..<60 {
            try tree.file("share/many/f\(i).txt", Array("small file number \(i)\n".utf8) + noise(300, seed: UInt64(i)))
        }
        fixture.product = "many"
        try fixture.publish("1.0", tree.root)
        let server = try ServerProcess(repo: fixture.repo)
        func requests() throws -> Int {
            let metrics = try runProgram("/usr/bin/curl", ["-s", server.url + "/metrics"]).text
            return metrics.split(separator: "\n").filter { $0.hasPrefix("upgrade_http_requests_total{") }
                .compactMap { $0.split(separator: " ").last.flatMap { Int($0) } }.reduce(0, +)
        }
        let before = try requests()
        let root = fixture.work.path("root")
        let result = try Upgrade.run([
            "sync", "--server", server.url, "--product", "many", "--root", root, "--trust", fixture.pub, "--json",
        ])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(try await ApplyFixture.scan(root) == (try await ApplyFixture.scan(tree.root)))
        let report = try Self.report(result)
        #expect(report["objectsDownloaded"] as? Int == 60, "\(report)")
        // A first install: no plan on the wire, the client plans from the signed manifest.
        #expect((report["planBytes"] as? Int ?? .max) < 2048, "\(report)")
        // roots probe, plan, manifest, one pack, report; metrics requests are counted too.
        let used = try requests() - before - 1
        #expect(used < 10, "\(used) requests for 60 files")

        // A corrupt object in a pack is not installed: it is fetched again alone, and checked again.
        let object = try #require(
            FileManager.default.enumerator(atPath: fixture.repo + "/objects")?.allObjects.compactMap { $0 as? String }
                .first { $0.count > 3 }
        )
        let path = fixture.repo + "/objects/" + object
        let original = try Data(contentsOf: URL(fileURLWithPath: path))
        var corrupt = original
        corrupt[corrupt.count / 2] ^= 0xff
        try corrupt.write(to: URL(fileURLWithPath: path))
        let again = try Upgrade.run([
            "sync", "--server", server.url, "--product", "many", "--root", fixture.work.path("second"), "--trust",
            fixture.pub,
        ])
        #expect(again.status == 4, "a corrupt object was accepted: \(again.stderr)")
        #expect(!FileManager.default.fileExists(atPath: fixture.work.path("second/share/many")))
    }
}
