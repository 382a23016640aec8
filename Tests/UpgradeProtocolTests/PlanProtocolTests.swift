import Foundation
import Testing
import UpgradeCore
import UpgradeProtocol
import UpgradeZstd

@Suite("Plan protocol")
struct PlanProtocolTests {
    @Test("a routine request for a 100,000-file tree with 10 local changes is a few kilobytes")
    func requestSize() throws {
        var entries = [ManifestEntry]()
        for d in 0..<100 { entries.append(.directory("d\(d)")) }
        for i in 0..<100_000 {
            let content = FileContent(
                size: UInt64(1000 + i % 3000),
                xxh128: XXH128Digest(high: UInt64(i), low: UInt64(i) &* 7919),
                sha256: SHA256Hash(bytes: (0..<32).map { UInt8(($0 + i) & 0xff) })
            )
            entries.append(.file("d\(i % 100)/file-\(i).dat", content))
        }
        let installed = try Manifest(entries: entries)
        var local = entries
        for i in stride(from: 100, to: 100 + 10 * 9_000, by: 9_000) {
            guard case .file(var content) = local[i].content else { continue }
            content.xxh128.low ^= 1
            content.sha256 = nil
            local[i].content = .file(content)
        }
        let scanned = try Manifest(entries: local)
        var request = PlanRequest(
            product: "app",
            channel: "stable",
            installed: .init(version: "1.0", sequence: 1, manifestSHA256: installed.digest.hex),
            device: .init(os: "linux", arch: "x86_64", id: "0123456789abcdef")
        )
        request.delta = ManifestDelta(from: installed, to: scanned)
        #expect(request.delta?.changed.count == 10)
        let tree = try #require(try request.delta?.changedTree(base: installed))
        #expect(scanned.entries.allSatisfy { tree.entry(at: $0.path) == $0 })
        let body = try JSONEncoder().encode(request)
        var whole = request
        whole.delta = nil
        whole.manifest = Data(scanned.canonicalEncoding()).base64EncodedString()
        let wholeBody = try JSONEncoder().encode(whole)
        let wholeCompressed = try Zstd.compress([UInt8](wholeBody), level: 3)
        print(
            "request size: 100,000 files, 10 changed: delta request \(body.count) bytes; whole manifest \(wholeBody.count) bytes (\(wholeCompressed.count) zstd)"
        )
        #expect(body.count < 8 * 1024)
    }

    static func content(_ seed: UInt64, sha: Bool = true) -> FileContent {
        FileContent(
            size: 100 + seed,
            xxh128: XXH128Digest(high: seed, low: seed &* 31),
            sha256: sha ? SHA256Hash(bytes: (0..<32).map { UInt8((Int($0) + Int(seed)) & 0xff) }) : nil
        )
    }

    @Test("a delta names the changed, added and removed paths, survives JSON, and rebuilds the scanned tree")
    func deltaRoundTrip() throws {
        let base = try Manifest(entries: [
            .directory("bin"), .file("bin/a", Self.content(1)), .file("bin/b", Self.content(2)),
            .symlink("bin/l", target: "a"), .file("c", Self.content(3)),
        ])
        // A scan has no SHA-256: bin/a matches by size and XXH3-128 and is not sent.
        let scanned = try Manifest(entries: [
            .directory("bin"), .file("bin/a", Self.content(1, sha: false)), .file("bin/b", Self.content(9, sha: false)),
            .symlink("bin/l", target: "b"), .file("bin/new", mode: 0o755, Self.content(4, sha: false)),
        ])
        let delta = ManifestDelta(from: base, to: scanned)
        #expect(delta.base == base.digest.hex)
        #expect(delta.changed.map(\.path) == ["bin/b", "bin/l", "bin/new"])
        #expect(delta.removed == ["c"])

        let decoded = try JSONDecoder().decode(ManifestDelta.self, from: try JSONEncoder().encode(delta))
        #expect(decoded == delta)
        let tree = try decoded.changedTree(base: base)
        #expect(tree.entry(at: "c") == nil)
        #expect(tree.entry(at: "bin/a")?.file?.sha256 == Self.content(1).sha256)
        for entry in scanned.entries where entry.path != "bin/a" {
            #expect(tree.entry(at: entry.path) == entry, "\(entry.path)")
        }
        // Nothing changed: an empty delta naming the base.
        let none = ManifestDelta(from: base, to: base)
        #expect(none.changed.isEmpty && none.removed.isEmpty)
    }

    @Test("a delta entry that does not decode is an error naming it, not a silently smaller tree")
    func badDeltaEntry() throws {
        let base = try Manifest(entries: [.file("a", Self.content(1))])
        let scanned = try Manifest(entries: [.file("a", Self.content(2, sha: false))])
        var json = try #require(
            try JSONSerialization.jsonObject(with: try JSONEncoder().encode(ManifestDelta(from: base, to: scanned)))
                as? [String: Any]
        )
        var changed = try #require(json["changed"] as? [[String: Any]])
        changed[0]["xxh128"] = "not-hex"
        json["changed"] = changed
        let decoded = try JSONDecoder().decode(
            ManifestDelta.self,
            from: try JSONSerialization.data(withJSONObject: json)
        )
        #expect(throws: ManifestDecodingError.self) { _ = try decoded.changedTree(base: base) }
    }

    @Test("pack frames round trip, found and missing; a cut body yields the frames before the cut")
    func packFrames() {
        let frames = [
            PackFrame(name: [UInt8](repeating: 1, count: 32), bytes: [1, 2, 3][...]),
            PackFrame(name: [UInt8](repeating: 2, count: 32), bytes: nil),
            PackFrame(name: [UInt8](repeating: 3, count: 32), bytes: [UInt8](repeating: 9, count: 300)[...]),
        ]
        let body = frames.flatMap { $0.encoded() }
        #expect(body.count == 3 * ObjectPack.headSize + 303)
        #expect(PackFrame.frames(in: body, nameSize: 32) == frames)
        #expect(PackFrame.frames(in: Array(body.dropLast(1)), nameSize: 32) == Array(frames.prefix(2)))
        // A length past the end is not trusted: no frame, no crash.
        var lying = frames[0].encoded()
        lying[32 + 1] = 0xff
        #expect(PackFrame.frames(in: lying, nameSize: 32).isEmpty)
    }
}
