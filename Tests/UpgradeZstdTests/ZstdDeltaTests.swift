import Foundation
import Testing
import UpgradeTestSupport
import UpgradeZstd

@Suite("zstd deltas")
struct ZstdDeltaTests {
    /// A binary-like base and a target with scattered edits, an insertion and a tail.
    static func pair(size: Int) -> (base: [UInt8], target: [UInt8]) {
        let base = noise(size, seed: 11)
        var target = base
        for i in stride(from: 1000, to: size, by: max(1, size / 20)) { target[i] ^= 0x5a }
        target.insert(contentsOf: noise(300, seed: 12), at: size / 3)
        target += noise(2000, seed: 13)
        return (base, target)
    }

    @Test(
        "delta round trips on binary and text, and is much smaller than the whole file",
        arguments: [10_000, 1 << 20]
    )
    func roundTrip(size: Int) throws {
        let (base, target) = Self.pair(size: size)
        let delta = try ZstdDelta.encode(target: target, base: base, level: 19)
        #expect(try ZstdDelta.decode(delta, base: base, maxSize: target.count) == target)
        let whole = try Zstd.compress(target, level: 19)
        #expect(delta.count * 4 < whole.count, "delta \(delta.count) vs whole \(whole.count)")

        let text = Array(String(repeating: "line of configuration text, version 1\n", count: 2000).utf8)
        let edited = Array(
            String(decoding: text, as: UTF8.self).replacingOccurrences(of: "version 1\nline", with: "version 2\nline")
                .utf8
        )
        let textDelta = try ZstdDelta.encode(target: edited, base: text, level: 19)
        #expect(try ZstdDelta.decode(textDelta, base: text, maxSize: edited.count) == edited)
    }

    @Test(
        "level 3 with long-distance matching is byte-identical to zstd --single-thread -3 --patch-from",
        .enabled(
            if: FileManager.default.isExecutableFile(atPath: "/usr/bin/zstd"),
            "the zstd command is not installed (make deps installs it)"
        )
    )
    func matchesCLI() throws {
        let (base, target) = Self.pair(size: 300_000)
        let work = try TemporaryTree()
        let basePath = try work.file("base", base)
        let targetPath = try work.file("target", target)
        let out = work.path("patch.zst")
        _ = try run(
            "/usr/bin/zstd",
            ["-q", "-f", "--single-thread", "-3", "--patch-from=\(basePath)", targetPath, "-o", out]
        )
        let cli = [UInt8](try Data(contentsOf: URL(fileURLWithPath: out)))
        let ours = try ZstdDelta.encode(target: target, base: base, level: 3)
        #expect(ours.count == cli.count, "ours \(ours.count) bytes, zstd CLI \(cli.count) bytes")
        #expect(try ZstdDelta.decode(cli, base: base, maxSize: target.count) == target)
    }

    @Test("a corrupted delta, a wrong base or a lying size is an error, never silent garbage")
    func failures() throws {
        let (base, target) = Self.pair(size: 50_000)
        var delta = try ZstdDelta.encode(target: target, base: base, level: 19)
        #expect(throws: ZstdError.tooLarge(limit: 100)) { try ZstdDelta.decode(delta, base: base, maxSize: 100) }
        #expect(throws: ZstdError.self) {
            try ZstdDelta.decode(Array(delta.dropLast(4)), base: base, maxSize: target.count)
        }
        delta[delta.count / 2] ^= 0xff
        let corrupted = try? ZstdDelta.decode(delta, base: base, maxSize: target.count)
        #expect(corrupted != target)
        let wrongBase = try? ZstdDelta.decode(
            try ZstdDelta.encode(target: target, base: base),
            base: noise(50_000, seed: 99),
            maxSize: target.count
        )
        #expect(wrongBase != target)
    }
}
