import Foundation
import Testing
import UpgradeCore

/// Deterministic PRNG so a failing seed can be replayed.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Random valid trees over a small name pool, so that two trees share many paths with
/// different kinds, contents and modes.
enum TreeGenerator {
    static let names = ["a", "b", "a b", "a-b", "é", "日本", "lib", "x.so", ".hidden", "Z"]
    static let fileModes: [UInt32] = [0o644, 0o755, 0o600, 0o444, 0o4755]
    static let dirModes: [UInt32] = [0o755, 0o700, 0o555, 0o500]

    static func tree(_ rng: inout SplitMix64, depth: Int = 3) -> Manifest {
        var entries = [ManifestEntry]()
        fill(&entries, prefix: nil, depth: depth, rng: &rng)
        return try! Manifest(entries: entries)
    }

    private static func fill(_ entries: inout [ManifestEntry], prefix: String?, depth: Int, rng: inout SplitMix64) {
        for name in names where Int.random(in: 0..<10, using: &rng) < 4 {
            let path = prefix.map { "\($0)/\(name)" } ?? name
            switch Int.random(in: 0..<10, using: &rng) {
            case 0..<5:
                let content = UInt64.random(in: 0..<3, using: &rng)
                entries.append(
                    .file(
                        path,
                        mode: fileModes.randomElement(using: &rng)!,
                        sampleContent(content, size: content * 100)
                    )
                )
            case 5..<7:
                entries.append(
                    .symlink(path, target: ["../x", "/abs", "a", "dangling/too"].randomElement(using: &rng)!)
                )
            default:
                entries.append(.directory(path, mode: dirModes.randomElement(using: &rng)!))
                if depth > 1 { fill(&entries, prefix: path, depth: depth - 1, rng: &rng) }
            }
        }
    }

    /// A few random edits of `tree`: the realistic case of a small upgrade.
    static func mutate(_ tree: Manifest, _ rng: inout SplitMix64) -> Manifest {
        var entries = tree.entries
        for _ in 0..<Int.random(in: 1...4, using: &rng) where !entries.isEmpty {
            let index = Int.random(in: 0..<entries.count, using: &rng)
            let entry = entries[index]
            switch (entry.content, Int.random(in: 0..<4, using: &rng)) {
            case (.file(var file), 0):
                file.xxh128.low &+= 1
                entries[index].content = .file(file)
            case (.file, 1), (.directory, 1):
                entries[index].mode ^= 0o020
            case (.symlink, _):
                entries[index].content = .symlink(target: "retargeted")
            default:
                // Remove the entry and its subtree.
                entries.removeAll { $0.path == entry.path || PathRules.isDescendant($0.path, of: entry.path) }
            }
        }
        return try! Manifest(entries: entries)
    }
}

@Suite("Diff engine")
struct DiffTests {
    @Test("applying plan(A, B) to A yields exactly B for random trees", arguments: 0..<8)
    func randomTreesRoundTrip(batch: Int) throws {
        var rng = SplitMix64(state: UInt64(batch) &* 7919)
        for round in 0..<250 {
            let a = TreeGenerator.tree(&rng)
            let b = round % 2 == 0 ? TreeGenerator.tree(&rng) : TreeGenerator.mutate(a, &rng)
            let plan = plan(from: a, to: b)
            let result = try a.applying(plan)
            #expect(result == b, "batch \(batch) round \(round): differing \(result.differingPaths(from: b))")
            #expect(result.digest == b.digest)
            // The plan for identical trees is empty, and the reverse plan restores A.
            #expect(UpgradeCore.plan(from: b, to: b).isEmpty)
            #expect(try b.applying(UpgradeCore.plan(from: b, to: a)) == a)
        }
    }

    @Test("the plan is deterministic: same input, byte-identical JSON")
    func deterministic() throws {
        var rng = SplitMix64(state: 42)
        for _ in 0..<50 {
            let a = TreeGenerator.tree(&rng)
            let b = TreeGenerator.tree(&rng)
            let once = plan(from: a, to: b).jsonEncoded()
            let shuffledA = try Manifest(entries: a.entries.shuffled(using: &rng))
            let shuffledB = try Manifest(entries: b.entries.shuffled(using: &rng))
            #expect(plan(from: shuffledA, to: shuffledB).jsonEncoded() == once)
        }
    }

    @Test("file to directory: the file goes before the directory and its contents arrive")
    func fileToDirectory() throws {
        let a = try Manifest(entries: [.file("x", sampleContent(1)), .file("keep", sampleContent(2))])
        let b = try Manifest(entries: [
            .directory("x"), .file("x/inner", sampleContent(3)), .file("keep", sampleContent(2)),
        ])
        let operations = plan(from: a, to: b).operations
        #expect(
            operations == [
                .delete(path: "x", kind: .file),
                .mkdir(path: "x", mode: 0o755),
                .add(path: "x/inner", mode: 0o644, content: sampleContent(3)),
            ]
        )
    }

    @Test("directory to symlink: the subtree is removed deepest first, then the link is made")
    func directoryToSymlink() throws {
        let a = try Manifest(entries: [
            .directory("lib"), .directory("lib/sub"), .file("lib/sub/f", sampleContent(1)),
            .file("lib/g", sampleContent(2)),
            .file("lib-b", sampleContent(3)),
        ])
        let b = try Manifest(entries: [.symlink("lib", target: "lib64"), .file("lib-b", sampleContent(3))])
        let operations = plan(from: a, to: b).operations
        #expect(
            operations == [
                .delete(path: "lib/sub/f", kind: .file),
                .delete(path: "lib/sub", kind: .directory),
                .delete(path: "lib/g", kind: .file),
                .delete(path: "lib", kind: .directory),
                .symlink(path: "lib", target: "lib64"),
            ]
        )
    }

    @Test("additions come before deletions; deletions are deepest first")
    func additionsBeforeDeletions() throws {
        let a = try Manifest(entries: [.directory("old"), .file("old/f", sampleContent(1))])
        let b = try Manifest(entries: [.file("new", sampleContent(2))])
        #expect(
            plan(from: a, to: b).operations == [
                .add(path: "new", mode: 0o644, content: sampleContent(2)),
                .delete(path: "old/f", kind: .file),
                .delete(path: "old", kind: .directory),
            ]
        )
    }

    @Test("mode-only changes become chmods, after content, deepest first")
    func modeOnly() throws {
        let a = try Manifest(entries: [.directory("d"), .file("d/f", mode: 0o644, sampleContent(1))])
        let b = try Manifest(entries: [
            .directory("d", mode: 0o555), .file("d/f", mode: 0o755, sampleContent(1)), .file("d/new", sampleContent(2)),
        ])
        #expect(
            plan(from: a, to: b).operations == [
                .add(path: "d/new", mode: 0o644, content: sampleContent(2)),
                .chmod(path: "d/f", mode: 0o755),
                .chmod(path: "d", mode: 0o555),
            ]
        )
    }

    @Test("a new read-only directory is created writable, filled, then locked")
    func readOnlyNewDirectory() throws {
        let b = try Manifest(entries: [.directory("ro", mode: 0o555), .file("ro/f", sampleContent(1))])
        #expect(
            plan(from: .empty, to: b).operations == [
                .mkdir(path: "ro", mode: 0o755),
                .add(path: "ro/f", mode: 0o644, content: sampleContent(1)),
                .chmod(path: "ro", mode: 0o555),
            ]
        )
    }

    @Test("a symlink retarget is one symlink operation; a replaced file carries its new mode")
    func retargetAndReplace() throws {
        let a = try Manifest(entries: [.symlink("cur", target: "v1"), .file("bin", mode: 0o644, sampleContent(1))])
        let b = try Manifest(entries: [.symlink("cur", target: "v2"), .file("bin", mode: 0o755, sampleContent(2))])
        #expect(
            plan(from: a, to: b).operations == [
                .replace(path: "bin", mode: 0o755, content: sampleContent(2)),
                .symlink(path: "cur", target: "v2"),
            ]
        )
    }

    @Test("the in-memory applier refuses unsafe orders")
    func applierRefusesUnsafe() throws {
        let a = try Manifest(entries: [.directory("d"), .file("d/f", sampleContent(1)), .symlink("l", target: "/etc")])
        let bad: [(PlanOperation, PlanApplicationError.Reason)] = [
            (.delete(path: "d", kind: .directory), .directoryNotEmpty(1)),
            (.add(path: "l/passwd", mode: 0o644, content: sampleContent(2)), .parentNotDirectory("l", .symlink)),
            (.add(path: "d/f", mode: 0o644, content: sampleContent(2)), .exists(.file)),
            (.replace(path: "nope", mode: 0o644, content: sampleContent(2)), .missing),
            (.mkdir(path: "x/y", mode: 0o755), .parentMissing("x")),
            (
                .add(path: "../escape", mode: 0o644, content: sampleContent(2)),
                .invalidPath(PathError(path: "../escape", rule: .dotDotComponent))
            ),
        ]
        for (operation, reason) in bad {
            #expect(throws: PlanApplicationError(step: 0, operation: operation, reason: reason)) {
                try a.applying(Plan(operations: [operation]))
            }
        }
    }
}

@Suite("Delta bases")
struct DeltaBaseTests {
    @Test("replaced files use their own old content; added files find a renamed sibling")
    func bases() throws {
        let client = try Manifest(entries: [
            .directory("lib"), .file("lib/libfoo-1a2b.so", sampleContent(1, size: 1000)),
            .file("lib/libbar.so", sampleContent(2, size: 5000)),
            .file("lib/other-9f8e7d.txt", sampleContent(3, size: 1000)), .file("conf.toml", sampleContent(4, size: 10)),
            .file("lib/tiny-1234.so", sampleContent(5, size: 10)),
        ])
        let target = try Manifest(entries: [
            .directory("lib"), .file("lib/libfoo-3c4d.so", sampleContent(6, size: 1100)),
            .file("lib/libbar.so", sampleContent(7, size: 5100)),
            .file("lib/other-9f8e7d.txt", sampleContent(3, size: 1000)), .file("conf.toml", sampleContent(8, size: 12)),
            .file("lib/tiny-5678.so", sampleContent(9, size: 100)),
            .file("lib/brandnew.so", sampleContent(10, size: 1000)),
        ])
        let bases = plan(from: client, to: target).deltaBases(client: client)
        #expect(bases["lib/libfoo-3c4d.so"] == "lib/libfoo-1a2b.so")
        #expect(bases["lib/libbar.so"] == "lib/libbar.so")
        #expect(bases["conf.toml"] == "conf.toml")
        #expect(bases["lib/brandnew.so"] == nil)
        #expect(bases["lib/tiny-5678.so"] == nil, "sizes differ by 10x")
    }
}

@Suite("Incremental plans")
struct IncrementalPlanTests {
    @Test(
        "the plan from base + local changes to a target, looking only at changed paths, equals the whole-tree plan",
        arguments: 0..<4
    )
    func equalsWholeTreePlan(batch: Int) throws {
        var rng = SplitMix64(state: UInt64(batch) &* 104_729 &+ 1)
        for round in 0..<250 {
            let base = TreeGenerator.tree(&rng)
            let target = round % 5 == 0 ? TreeGenerator.tree(&rng) : TreeGenerator.mutate(base, &rng)
            let client = round % 3 == 0 ? base : TreeGenerator.mutate(base, &rng)
            let baseIndex = base.index()
            let clientIndex = client.index()
            var changed = [String: ManifestEntry]()
            for entry in client.entries where baseIndex[entry.path] != entry { changed[entry.path] = entry }
            let removed = Set(base.entries.map(\.path).filter { clientIndex[$0] == nil })
            let tree = ChangedTree(base: base, changed: changed, removed: removed)
            let (incremental, looked) = try Plan.incremental(
                client: tree,
                target: target,
                releaseChanges: base.differingPaths(from: target)
            )
            let whole = Plan(from: client, to: target)
            #expect(incremental == whole, "batch \(batch) round \(round)")
            #expect(try client.applying(incremental) == target)
            // What it looked at is part of the client tree, nothing invented.
            #expect(looked.entries.allSatisfy { clientIndex[$0.path] == $0 })
        }
    }

    @Test("a new file finds an unchanged similarly named sibling as its delta base")
    func siblingBase() throws {
        let content = FileContent(size: 1000, xxh128: XXH128Digest(high: 1, low: 2), sha256: nil)
        let newContent = FileContent(size: 1100, xxh128: XXH128Digest(high: 3, low: 4), sha256: nil)
        let base = try Manifest(entries: [
            .directory("lib"), .file("lib/libfoo-1.2.so", content), .file("lib/other.txt", content),
        ])
        let target = try Manifest(entries: base.entries + [.file("lib/libfoo-1.3.so", newContent)])
        let tree = ChangedTree(base: base, changed: [:], removed: [])
        let (plan, looked) = try Plan.incremental(
            client: tree,
            target: target,
            releaseChanges: base.differingPaths(from: target)
        )
        #expect(plan == Plan(from: base, to: target))
        #expect(plan.deltaBases(client: looked)["lib/libfoo-1.3.so"] == "lib/libfoo-1.2.so")
        #expect(looked.entry(at: "lib/other.txt") == nil)
    }
}
