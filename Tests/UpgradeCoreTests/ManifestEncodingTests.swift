import Foundation
import Testing
import UpgradeCore

@Suite("Manifest encodings")
struct ManifestEncodingTests {
    static let sha = SHA256Hash(bytes: [UInt8](repeating: 0xab, count: 32))!

    static func sample() throws -> Manifest {
        try Manifest(
            entries: [
                .directory("bin"),
                .file("bin/app", mode: 0o755, FileContent(size: 5, xxh128: XXH128Digest(high: 1, low: 2), sha256: sha)),
                .directory("share dir", mode: 0o700),
                .file("share dir/日本.txt", mode: 0o4644, FileContent(size: 0, xxh128: XXH128Digest(high: 3, low: 4))),
                .symlink("current", target: "bin/app"),
                .symlink("dangling", target: "/nowhere/at/all"),
            ],
            hooks: Hooks([.healthCheck: "bin/app"])
        )
    }

    @Test("canonical encoding round-trips and is independent of input order")
    func canonicalRoundTrip() throws {
        let manifest = try Self.sample()
        let bytes = manifest.canonicalEncoding()
        #expect(try Manifest(canonical: bytes) == manifest)
        let shuffled = try Manifest(entries: manifest.entries.reversed(), hooks: manifest.hooks)
        #expect(shuffled.canonicalEncoding() == bytes)
        #expect(shuffled.digest == manifest.digest)
    }

    @Test("every field changes the digest")
    func digestCoversEveryField() throws {
        let base = try Self.sample()
        var variants: [[ManifestEntry]] = []
        for (index, entry) in base.entries.enumerated() {
            var changed = entry
            switch entry.content {
            case .file(var file):
                file.size += 1
                changed.content = .file(file)
                var modeChanged = entry
                modeChanged.mode ^= 0o001
                var entries = base.entries
                entries[index] = modeChanged
                variants.append(entries)
                var hashChanged = entry
                file.size -= 1
                file.xxh128.low ^= 1
                hashChanged.content = .file(file)
                entries[index] = hashChanged
                variants.append(entries)
            case .directory:
                changed.mode ^= 0o010
            case .symlink(let target):
                changed.content = .symlink(target: target + "x")
            }
            var entries = base.entries
            entries[index] = changed
            variants.append(entries)
        }
        var digests = Set([base.digest])
        for entries in variants { digests.insert(try Manifest(entries: entries, hooks: base.hooks).digest) }
        digests.insert(try Manifest(entries: base.entries).digest)  // hooks dropped
        #expect(digests.count == variants.count + 2)
    }

    @Test("the decoder rejects non-canonical bytes")
    func decoderIsStrict() throws {
        let bytes = try Self.sample().canonicalEncoding()
        #expect(throws: ManifestDecodingError.self) { try Manifest(canonical: bytes + [0]) }
        #expect(throws: ManifestDecodingError.self) { try Manifest(canonical: Array(bytes.dropLast())) }
        #expect(throws: ManifestDecodingError.notAManifest) { try Manifest(canonical: Array("nope nope".utf8)) }
        var unknownKind = bytes
        // First entry: magic(8) count(8) len(2) "bin"(3) kind.
        unknownKind[21] = 9
        #expect(throws: ManifestDecodingError.self) { try Manifest(canonical: unknownKind) }
        // A count that promises more entries than the data holds must not allocate.
        var hugeCount = bytes
        for i in 8..<16 { hugeCount[i] = 0xff }
        #expect(throws: ManifestDecodingError.self) { try Manifest(canonical: hugeCount) }
    }

    @Test("the decoder rejects out-of-order and hostile entries")
    func decoderChecksRules() throws {
        // Hand-built: two entries in the wrong order.
        let a = try Manifest(entries: [.directory("b")]).canonicalEncoding()
        let b = try Manifest(entries: [.directory("a")]).canonicalEncoding()
        let entryA = a[16..<(a.count - 1)]
        let entryB = b[16..<(b.count - 1)]
        var unordered = Manifest.canonicalMagic + [0, 0, 0, 0, 0, 0, 0, 2]
        unordered += entryA + entryB + [0]
        #expect(throws: ManifestDecodingError.self) { try Manifest(canonical: Array(unordered)) }

        let hostile =
            #"{"format":"upgrade-manifest/1","entries":[{"path":"../etc/passwd","kind":"file","mode":"0644","size":1,"xxh128":"00000000000000000000000000000001"}]}"#
        #expect(throws: ManifestDecodingError.invalidPath(PathError(path: "../etc/passwd", rule: .dotDotComponent))) {
            try Manifest(json: Data(hostile.utf8))
        }
    }

    @Test("JSON round-trips and checks its digest field")
    func jsonRoundTrip() throws {
        let manifest = try Self.sample()
        let json = manifest.jsonEncoded()
        #expect(try Manifest(json: json) == manifest)
        #expect(try Manifest(decoding: [UInt8](json)) == manifest)
        #expect(manifest.jsonEncoded() == json)
        var text = String(decoding: json, as: UTF8.self)
        text = text.replacingOccurrences(of: manifest.digest.hex, with: String(repeating: "0", count: 64))
        #expect(throws: ManifestDecodingError.self) { try Manifest(json: Data(text.utf8)) }
    }
}
