import Foundation
import Testing
import UpgradeTestSupport

@Suite("Binary deltas over sync", .serialized)
struct DeltaSyncTests {
    /// v1 installed; v2 published with a changed library, a renamed versioned file and a new file.
    static func scenario() throws -> (SyncFixture, ServerProcess?, String) {
        let sync = try SyncFixture(releases: 1)
        return (sync, nil, sync.fixture.work.path("root"))
    }

    @Test(
        "deltas round trip: v1 -> v2 travels mostly as deltas and ends exactly at v2",
        arguments: ["none", "corrupt-delta", "missing-delta", "stale-base"]
    )
    func deltas(fault: String) async throws {
        let sync = try SyncFixture(releases: 1)
        let root = sync.fixture.work.path("root")
        let honest = try ServerProcess(repo: sync.repo)
        #expect(try sync.sync(honest, root: root).status == 0)
        try sync.publish(2)
        // Publishing 2.0 precomputed the deltas from 1.0.
        let precomputed =
            (try? FileManager.default.subpathsOfDirectory(atPath: sync.repo + "/deltas").filter { $0.contains("-") })
            ?? []
        #expect(!precomputed.isEmpty)
        let reports = sync.fixture.work.path("reports.jsonl")
        let server =
            fault == "none"
            ? honest : try ServerProcess(repo: sync.repo, extra: ["--fault", fault, "--reports", reports])
        let result = try sync.sync(server, root: root, ["--json"])
        #expect(result.status == 0, "\(fault): \(result.stderr)")
        try await sync.expect(root, equals: 2, fault)
        let report = try #require(try JSONSerialization.jsonObject(with: result.stdout) as? [String: Any])
        let files = try #require(report["files"] as? [[String: Any]])
        let core = try #require(files.first { $0["path"] as? String == "lib/core.so" })
        let fallbacks = report["fallbacks"] as? [String] ?? []
        if fault == "none" {
            #expect((core["transfer"] as? String)?.hasPrefix("delta from lib/core.so") == true, "\(core)")
            #expect((report["deltasUsed"] as? Int ?? 0) >= 1)
            #expect(fallbacks.isEmpty)
            #expect((report["bytesDownloaded"] as? Int ?? .max) < 5_000, "a 20 KB library with a 500-byte change")
        } else {
            #expect((report["deltasUsed"] as? Int) == 0, "\(fault)")
            #expect(!fallbacks.isEmpty, "\(fault): the fallback is reported")
            #expect((core["transfer"] as? String)?.hasPrefix("whole") == true, "\(fault): \(core)")
            // The server's fleet report says so too.
            let reported = (try? String(contentsOfFile: reports, encoding: .utf8)) ?? ""
            #expect(reported.contains("fallbacks"), "\(reported)")
        }
    }
}
