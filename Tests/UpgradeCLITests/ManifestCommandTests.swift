import Foundation
import Testing
import UpgradeCore
import UpgradeTestSupport

#if canImport(Glibc)
import Glibc
#endif

@Suite("upgrade manifest", .serialized)
struct ManifestCommandTests {
    /// Every file's xxh128 in `upgrade manifest --json` against `xxhsum -H2`.
    func checkAgainstXXHSum(_ root: String, extra: [String] = []) throws -> Manifest {
        let result = try Upgrade.run(["manifest", root, "--json", "--no-stat-cache"] + extra)
        #expect(result.status == 0, "\(result.stderr)")
        let manifest = try Manifest(json: result.stdout)
        let reference = try referenceHashes(root)
        let files = manifest.entries.compactMap { entry in entry.file.map { (entry.path, $0) } }
        #expect(files.count == reference.count)
        for (path, file) in files {
            #expect(file.xxh128.hex == reference[path], "\(path)")
        }
        return manifest
    }

    @Test("hashes agree with xxhsum -H2 on edge sizes and a sparse file of a few hundred MiB")
    func agreesWithXXHSum() throws {
        let tree = try TemporaryTree()
        try tree.file("empty", [])
        try tree.file("one", [0x5a])
        try tree.file("b240", noise(240, seed: 240))
        try tree.file("mib+1", noise((1 << 20) + 1, seed: 1))
        try tree.file("dir with space/ünïcødé", noise(4097, seed: 4097))
        let sparse = tree.path("sparse.img")
        let fd = open(sparse, O_CREAT | O_WRONLY, 0o644)
        #expect(ftruncate(fd, 300 << 20) == 0)
        #expect(pwrite(fd, "tail", 4, (300 << 20) - 4) == 4)
        #expect(pwrite(fd, "head", 4, 12_345) == 4)
        close(fd)
        let manifest = try checkAgainstXXHSum(tree.root)
        #expect(manifest.index()["sparse.img"]?.file?.size == 300 << 20)
    }

    @Test("hashes agree with xxhsum -H2 on a real tree (/usr/include)")
    func agreesOnRealTree() throws {
        let manifest = try checkAgainstXXHSum("/usr/include", extra: ["--skip-special"])
        #expect(manifest.summary.files > 1000)
    }

    @Test("--output writes the canonical manifest atomically; diff against the tree is empty")
    func outputFile() throws {
        let tree = try TemporaryTree()
        try tree.file("a/b", "content")
        try tree.symlink("l", to: "a/b")
        let out = tree.root + "-manifest.bin"
        defer { unlink(out) }
        let result = try Upgrade.run(["manifest", tree.root, "--output", out])
        #expect(result.status == 0)
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: out)))
        #expect(bytes.starts(with: Manifest.canonicalMagic))
        let manifest = try Manifest(canonical: bytes)
        #expect(manifest.entries.map(\.path) == ["a", "a/b", "l"])
        let diff = try Upgrade.run(["diff", out, tree.root, "--json"])
        #expect(diff.status == 0)
        let plan = try JSONSerialization.jsonObject(with: diff.stdout) as? [String: Any]
        #expect((plan?["operations"] as? [Any])?.isEmpty == true)
        // Into a pipe without --json: the canonical bytes.
        #expect(try Upgrade.run(["manifest", out]).stdout == Data(bytes))
    }

    @Test("a FIFO fails with exit 3 naming the path and changes nothing; --skip-special warns")
    func specialFile() throws {
        let tree = try TemporaryTree()
        try tree.file("ok", "x")
        #expect(mkfifo(tree.path("fifo"), 0o644) == 0)
        let out = tree.root + "-m.json"
        let failed = try Upgrade.run(["manifest", tree.root, "--json", "--output", out])
        #expect(failed.status == 3)
        #expect(failed.stderr.contains("\"fifo\" is a FIFO"))
        #expect(!FileManager.default.fileExists(atPath: out))
        let skipped = try Upgrade.run(["manifest", tree.root, "--json", "--skip-special"])
        #expect(skipped.status == 0)
        #expect(skipped.stderr.contains("warning: skipped \"fifo\""))
        #expect(try Manifest(json: skipped.stdout).entries.map(\.path) == ["ok"])
    }

    @Test("the stat cache in ROOT/.upgrade is used when the state directory exists, and never listed")
    func stateDirectoryCache() throws {
        let tree = try TemporaryTree()
        for i in 0..<20 { try tree.file("f\(i)", noise(64, seed: UInt64(i))) }
        try tree.directory(".upgrade")
        // Let the racy window (1 s) pass so the first scan may cache everything.
        usleep(1_100_000)
        let first = try Upgrade.run(["manifest", tree.root, "--json"])
        #expect(FileManager.default.fileExists(atPath: tree.path(".upgrade/statcache")))
        let second = try Upgrade.run(["manifest", tree.root, "--json"])
        #expect(first.stdout == second.stdout)
        #expect(try Manifest(json: second.stdout).entries.allSatisfy { !$0.path.hasPrefix(".upgrade") })
    }

    @Test("bad usage exits 2; a missing directory exits 1 naming it")
    func usageAndMissing() throws {
        let usage = try Upgrade.run(["manifest"])
        #expect(usage.status == 2)
        let jobs = try Upgrade.run(["manifest", "/tmp", "--jobs", "0"])
        #expect(jobs.status == 2)
        let missing = try Upgrade.run(["manifest", "/nonexistent/tree"])
        #expect(missing.status == 1)
        #expect(missing.stderr.contains("/nonexistent/tree"))
        let help = try Upgrade.run(["--help"])
        #expect(help.status == 0)
        #expect(help.text.contains("EXIT CODES"))
    }
}
