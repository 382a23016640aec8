import Foundation
import Testing
import UpgradeScan
import UpgradeTestSupport

#if canImport(Glibc)
import Glibc
#endif

@Suite("Tree seal")
struct TreeSealTests {
    /// A small tree: nested directories, files, a symlink, and the state directory (left out).
    static func sampleTree() throws -> TemporaryTree {
        let tree = try TemporaryTree()
        for index in 0..<40 { try tree.file("d\(index % 4)/s\(index % 3)/f\(index).txt", "file \(index)\n") }
        try tree.file("bin/tool", "#!/bin/sh\n", mode: 0o755)
        try tree.directory("empty", mode: 0o700)
        try tree.symlink("link", to: "bin/tool")
        try tree.file(".upgrade/statcache", "not part of the tree")
        return tree
    }

    /// The seal a scan takes, and the one the stat-only walk computes, of the tree as it is.
    static func seals(_ tree: TemporaryTree) async throws -> (scanned: TreeSeal?, walked: TreeSeal?) {
        var options = ScannerTests.quick
        options.takeSeal = true
        let scanned = try await Scanner(options: options).scan(root: tree.root).seal
        return (scanned, try await Scanner(options: options).seal(root: tree.root))
    }

    @Test("the stat-only walk gives the seal a scan takes, entry for entry, and not the state directory")
    func walkMatchesScan() async throws {
        let tree = try Self.sampleTree()
        let (scanned, walked) = try await Self.seals(tree)
        let seal = try #require(scanned)
        #expect(walked == seal)
        // 40 files, 4 + 12 directories, bin, bin/tool, empty, link.
        #expect(seal.count == 60)
        // Level by level (8 tasks: every level is narrow) and by whole subtrees (1 task: the
        // first level's 6 directories are wide enough), the same sum.
        for concurrency in [1, 8] {
            var options = ScannerTests.quick
            options.concurrency = concurrency
            #expect(try await Scanner(options: options).seal(root: tree.root) == seal, "\(concurrency) tasks")
        }
        #expect(TreeSeal(seal.description) == seal)
        #expect(TreeSeal("60:xyz") == nil)
        try tree.file(".upgrade/other", "state changes are not the tree's")
        #expect(try await Scanner(options: ScannerTests.quick).seal(root: tree.root) == seal)
    }

    @Test(
        "any change the manifest would show breaks the seal, including a same-size rewrite with its mtime put back",
        arguments: ["rewrite", "chmod", "add", "remove", "retarget", "mkdir", "chmod-dir"]
    )
    func changesBreakTheSeal(change: String) async throws {
        let tree = try Self.sampleTree()
        let before = try #require(try await Self.seals(tree).scanned)
        let path = tree.path("d1/s1/f1.txt")
        switch change {
        case "rewrite":
            // Same size, and the old mtime restored: only the ctime tells.
            var info = stat()
            #expect(stat(path, &info) == 0)
            try "file X\n".write(toFile: path, atomically: false, encoding: .utf8)
            var times = [info.st_atim, info.st_mtim]
            #expect(utimensat(AT_FDCWD, path, &times, 0) == 0)
        case "chmod": #expect(chmod(path, 0o600) == 0)
        case "add": try tree.file("d2/new.txt", "new")
        case "remove": try FileManager.default.removeItem(atPath: path)
        case "retarget":
            try FileManager.default.removeItem(atPath: tree.path("link"))
            try tree.symlink("link", to: "d1/s1/f1.txt")
        case "mkdir": try tree.directory("d3/inner")
        default: #expect(chmod(tree.path("empty"), 0o755) == 0)
        }
        let after = try await Scanner(options: ScannerTests.quick).seal(root: tree.root)
        #expect(after != nil)
        #expect(after != before, "\(change)")
    }

    @Test("no seal is taken while a file is within the racy window, nor for a tree with skipped special files")
    func noSealWhenUnsure() async throws {
        let tree = try Self.sampleTree()
        var options = ScanOptions()
        options.takeSeal = true
        // The default one-second window: the files were written a moment ago.
        #expect(try await Scanner(options: options).scan(root: tree.root).seal == nil)

        #expect(mkfifo(tree.path("d0/pipe"), 0o600) == 0)
        var skipping = ScannerTests.quick
        skipping.takeSeal = true
        skipping.specialFiles = .skip
        let result = try await Scanner(options: skipping).scan(root: tree.root)
        #expect(result.warnings.count == 1)
        #expect(result.seal == nil)
        #expect(try await Scanner(options: skipping).seal(root: tree.root) == nil)
    }
}
