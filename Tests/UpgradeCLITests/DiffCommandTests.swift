import Foundation
import Testing
import UpgradeCore
import UpgradeTestSupport

#if canImport(Glibc)
import Glibc
#endif

@Suite("upgrade diff")
struct DiffCommandTests {
    static let examples = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../Examples").standardized.path

    @Test("diff of the example releases lists the expected operations")
    func examples() throws {
        let result = try Upgrade.run([
            "diff", "\(Self.examples)/myapp-1.0", "\(Self.examples)/myapp-1.1", "--summary", "--no-stat-cache",
        ])
        #expect(result.status == 0, "\(result.stderr)")
        let lines = result.text.split(separator: "\n").map(String.init)
        #expect(lines.contains { $0.hasPrefix("replace") && $0.contains("bin/myapp") })
        #expect(lines.contains { $0.hasPrefix("add") && $0.contains("share/myapp/templates/report.html") })
        #expect(lines.contains { $0.hasPrefix("delete") && $0.contains("share/myapp/legacy.txt") })
        #expect(lines.contains { $0.hasPrefix("symlink") && $0.contains("lib/libmyapp.so -> libmyapp.so.1.1") })
        #expect(lines.last?.hasPrefix("files: ") == true)
    }

    @Test("--json prints the ordered plan: type changes cleared first, parents before children")
    func jsonPlanIsFaithful() throws {
        let old = try TemporaryTree()
        let new = try TemporaryTree()
        try old.file("keep", "same")
        try old.file("x", "was a file")
        try old.directory("gone/deep")
        try old.file("gone/deep/f", "bye")
        try new.file("keep", "same")
        try new.file("x/now/a/dir", "hello")
        try new.symlink("gone", to: "keep")
        try new.file("tool", "#!/bin/sh\n", mode: 0o755)

        let result = try Upgrade.run(["diff", old.root, new.root, "--json", "--no-stat-cache"])
        #expect(result.status == 0)
        let document = try #require(try JSONSerialization.jsonObject(with: result.stdout) as? [String: Any])
        let operations = try #require(document["operations"] as? [[String: Any]])
        let names = operations.map { "\($0["op"]!) \($0["path"]!)" }
        #expect(
            names == [
                "delete x", "delete gone/deep/f", "delete gone/deep", "delete gone",
                "symlink gone", "add tool", "mkdir x", "mkdir x/now", "mkdir x/now/a", "add x/now/a/dir",
            ]
        )
        #expect((document["summary"] as? [String: Any])?["filesAdded"] as? Int == 2)
    }

    @Test("a hostile manifest file is refused with exit 3 naming the path")
    func hostileManifest() throws {
        let tree = try TemporaryTree()
        let cases = [
            "../escape", "/etc/passwd", "a//b", String(repeating: "n", count: 300),
        ]
        for path in cases {
            let json = """
                {"format":"upgrade-manifest/1","entries":[{"path":"\(path)","kind":"file","mode":"0644","size":1,"xxh128":"0000000000000000000000000000000a"}]}
                """
            try tree.file("m.json", json)
            let result = try Upgrade.run(["diff", tree.path("m.json"), tree.path("m.json")])
            #expect(result.status == 3, "\(path)")
            #expect(result.stderr.contains(path.debugDescription), "\(result.stderr)")
        }
        let beneath = """
            {"format":"upgrade-manifest/1","entries":[
              {"path":"lib","kind":"symlink","target":"/etc"},
              {"path":"lib/x","kind":"file","mode":"0644","size":1,"xxh128":"0000000000000000000000000000000a"}]}
            """
        try tree.file("m.json", beneath)
        let result = try Upgrade.run(["diff", tree.path("m.json"), tree.path("m.json")])
        #expect(result.status == 3)
        #expect(result.stderr.contains("beneath the symlink \"lib\""))
        try tree.file("garbage", "this is not a manifest")
        #expect(try Upgrade.run(["diff", tree.path("garbage"), tree.root]).status == 3)
    }
}
