import Foundation
import Testing
import UpgradeApply
import UpgradeBundle
import UpgradeCore
import UpgradeRepository
import UpgradeScan
import UpgradeTestSupport
import UpgradeTrust

#if canImport(Glibc)
import Glibc
#endif

/// A publisher key, a repository and bundles between releases built from trees the test makes.
final class ApplyFixture {
    let work: TemporaryTree
    var key: String { work.path("k") }
    var pub: String { work.path("k.pub") }
    var repo: String { work.path("repo") }
    var product = "app"

    init() throws {
        work = try TemporaryTree()
        #expect(try Upgrade.run(["keygen", "--output", key]).status == 0)
    }

    /// Publishes `tree` as `version`.
    func publish(_ version: String, _ tree: String, product: String? = nil, extra: [String] = []) throws {
        let result = try Upgrade.run(
            [
                "publish", "--repo", repo, "--product", product ?? self.product, "--version", version, "--key", key,
                "--level", "3", tree,
            ] + extra
        )
        #expect(result.status == 0, "\(result.stderr)")
    }

    /// Builds a bundle to `to` from `from` (nil: full install); returns its path.
    func bundle(from: String?, to: String, product: String? = nil) throws -> String {
        let output = work.path("bundle-\(from ?? "full")-\(to)-\(product ?? self.product)")
        var arguments = [
            "bundle", "--repo", repo, "--product", product ?? self.product, "--to", to, "--output", output,
        ]
        if let from { arguments += ["--from", from] }
        let result = try Upgrade.run(arguments)
        #expect(result.status == 0, "\(result.stderr)")
        return output
    }

    func apply(_ bundle: String, root: String, extra: [String] = []) throws -> CommandResult {
        try Upgrade.run(["apply", "--root", root, "--trust", pub, bundle] + extra)
    }

    /// The manifest of a tree as the scanner sees it (state directory excluded).
    static func scan(_ root: String) async throws -> Manifest {
        var options = ScanOptions()
        options.specialFiles = .reject
        return try await Scanner(options: options).scan(root: root).manifest
    }

    /// `cp -a`.
    static func copy(_ from: String, _ to: String) throws {
        #expect(try runProgram("/bin/cp", ["-a", from, to]).status == 0)
    }
}

/// Builders for the edge-case trees.
enum EdgeTrees {
    /// Old release: every kind of entry the engine must handle.
    static func old(_ t: TemporaryTree) throws {
        try t.file("bin/tool", "#!/bin/sh\necho old\n", mode: 0o755)
        try t.file("empty", [])
        try t.directory("emptydir")
        try t.file("x", "x is a file, will be a directory")
        try t.directory("lib/sub")
        try t.file("lib/sub/a.so", noise(3000, seed: 1))
        try t.file("lib/b.so", noise(5000, seed: 2))
        try t.symlink("link", to: "bin/tool")
        try t.symlink("dangling", to: "/nowhere/old")
        try t.symlink("willbefile", to: "empty")
        try t.file("mode-only", "same bytes", mode: 0o644)
        try t.file("exec-bit", "#!/bin/sh\n", mode: 0o644)
        try t.file("read-only", "frozen old", mode: 0o444)
        try t.file("dir with space/名前.txt", "unicode old")
        try t.file("large.bin", noise(3 << 20, seed: 3))
        try t.file("tiny", [0x01])
        try t.file("gone/deep/file", "bye")
    }

    /// New release: kinds swapped, modes changed, content changed, things added and removed.
    static func new(_ t: TemporaryTree) throws {
        try t.file("bin/tool", "#!/bin/sh\necho new\n", mode: 0o755)
        try t.file("empty", [])
        try t.directory("newemptydir")
        try t.file("x/inside", "x became a directory")
        try t.symlink("lib", to: "lib64")
        try t.file("lib64/a.so", noise(3000, seed: 1))
        try t.symlink("link", to: "bin/other")
        try t.file("bin/other", "other")
        try t.symlink("dangling", to: "/nowhere/new")
        try t.file("willbefile", "now a file")
        try t.file("mode-only", "same bytes", mode: 0o600)
        try t.file("exec-bit", "#!/bin/sh\n", mode: 0o755)
        try t.file("read-only", "frozen new", mode: 0o444)
        try t.file("dir with space/名前.txt", "unicode new")
        try t.file("large.bin", noise(3 << 20, seed: 3) + noise(100, seed: 4))
        try t.file("tiny", [0x02])
        try t.directory("ro-dir")
        try t.file("ro-dir/inner", "inside a read-only directory")
        chmod(t.path("ro-dir"), 0o555)
    }
}
