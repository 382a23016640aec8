import Testing
import UpgradeCore

@Suite("Path rules")
struct PathRulesTests {
    @Test(
        "hostile paths are rejected with the rule they break",
        arguments: [
            ("../x", PathError.Rule.dotDotComponent),
            ("a/../../x", .dotDotComponent),
            ("/etc/x", .absolute),
            ("a//b", .emptyComponent),
            ("a/", .emptyComponent),
            ("./a", .dotComponent),
            ("a\u{0}b", .containsNUL),
            ("", .empty),
            (String(repeating: "x", count: 300), .componentTooLong(300)),
            ("a/" + String(repeating: "y", count: 256), .componentTooLong(256)),
        ]
    )
    func rejectsHostilePaths(path: String, rule: PathError.Rule) {
        #expect(throws: PathError(path: path, rule: rule)) { try PathRules.validate(path) }
    }

    @Test("error messages name the path")
    func messagesNamePath() throws {
        let error = try #require(throws: PathError.self) { try PathRules.validate("../etc/passwd") }
        #expect(error.description.contains("\"../etc/passwd\""))
        #expect(error.description.contains(".."))
    }

    @Test("invalid UTF-8 bytes are rejected")
    func rejectsInvalidUTF8() {
        #expect(throws: PathError.self) { try PathRules.validate(bytes: [0x61, 0xff, 0x62]) }
    }

    @Test("over-long and over-deep paths are rejected")
    func rejectsLongPaths() {
        let deep = Array(repeating: "d", count: PathRules.maxDepth + 1).joined(separator: "/")
        #expect(throws: PathError(path: deep, rule: .tooDeep(PathRules.maxDepth + 1))) { try PathRules.validate(deep) }
        let long = Array(repeating: String(repeating: "n", count: 200), count: 16).joined(separator: "/")
        #expect(throws: PathError.self) { try PathRules.validate(long) }
    }

    @Test(
        "ordinary paths pass",
        arguments: [
            "a", "a b/c d", "日本語/ファイル.txt", "émigré", ".hidden", "...", "a..b", "x/.config",
            String(repeating: "z", count: 255),
        ]
    )
    func acceptsOrdinaryPaths(path: String) throws {
        try PathRules.validate(path)
    }

    @Test("a file under a symlinked directory is rejected")
    func rejectsEntryBeneathSymlink() {
        let entries: [ManifestEntry] = [.symlink("lib", target: "/outside"), .file("lib/evil.so", sampleContent(1))]
        #expect(throws: PathError(path: "lib/evil.so", rule: .beneathSymlink("lib"))) {
            try Manifest(entries: entries)
        }
    }

    @Test("duplicate entries are rejected")
    func rejectsDuplicates() {
        let entries: [ManifestEntry] = [.file("a", sampleContent(1)), .directory("a")]
        #expect(throws: PathError(path: "a", rule: .duplicate)) { try Manifest(entries: entries) }
    }

    @Test("an entry without its parent directory or beneath a file is rejected")
    func rejectsOrphans() {
        #expect(throws: PathError(path: "d/f", rule: .parentMissing("d"))) {
            try Manifest(entries: [.file("d/f", sampleContent(1))])
        }
        #expect(throws: PathError(path: "f/g", rule: .parentNotDirectory("f"))) {
            try Manifest(entries: [.file("f", sampleContent(1)), .file("f/g", sampleContent(2))])
        }
    }

    @Test("a hook must name a file of the tree")
    func hookMustBeFile() {
        #expect(throws: PathError(path: "bin", rule: .hookNotAFile("pre-install"))) {
            try Manifest(entries: [.directory("bin")], hooks: Hooks([.preInstall: "bin"]))
        }
    }

    @Test("byte order puts parents before children and sorts by UTF-8 bytes")
    func byteOrder() {
        let paths = ["a/x", "a-b", "a", "B", "é", "z", "a b"]
        let sorted = paths.sorted(by: PathRules.byteOrder)
        #expect(sorted == ["B", "a", "a b", "a-b", "a/x", "z", "é"])
    }
}

func sampleContent(_ seed: UInt64, size: UInt64 = 10) -> FileContent {
    FileContent(size: size, xxh128: XXH128Digest(high: seed, low: seed &* 31))
}
