import Foundation
import Testing
import UpgradeCore
import UpgradeHash
import UpgradeTestSupport

/// XXH3-128 as the scanner computes it, against Debian's `xxhsum -H2` (the reference tool from
/// the same library) on the same bytes.
@Suite("XXH3-128")
struct XXH128Tests {
    /// `xxhsum -H2 FILE`'s digest.
    static func reference(_ path: String) throws -> String {
        String(try run("/usr/bin/xxhsum", ["-H2", path]).prefix { $0 != " " })
    }

    @Test(
        "one-shot digests equal xxhsum -H2: empty, short, the 240-byte boundary, a mebibyte",
        arguments: [0, 1, 16, 17, 128, 129, 240, 241, 4096, 1 << 20]
    )
    func matchesXXHSum(size: Int) throws {
        let tree = try TemporaryTree()
        let bytes = noise(size, seed: UInt64(size) + 1)
        let path = try tree.file("data", bytes)
        #expect(XXH128Hasher.hash(data: bytes).hex == (try Self.reference(path)))
    }

    @Test("streaming in uneven chunks gives the one-shot digest; reset starts over")
    func streaming() {
        let bytes = noise(300_001, seed: 7)
        let whole = XXH128Hasher.hash(data: bytes)
        var hasher = XXH128Hasher()
        var offset = 0
        var step = 1
        while offset < bytes.count {
            let end = min(bytes.count, offset + step)
            bytes[offset..<end].withUnsafeBytes { hasher.update(bufferPointer: $0) }
            offset = end
            step = step * 3 + 1
        }
        #expect(hasher.finalize() == whole)
        hasher.reset()
        hasher.update(data: bytes.prefix(10))
        #expect(hasher.finalize() == XXH128Hasher.hash(data: bytes.prefix(10)))
        // A digest round-trips through its hex form and differs for other bytes.
        #expect(XXH128Digest(hex: whole.hex) == whole)
        #expect(XXH128Hasher.hash(data: bytes.dropLast()) != whole)
    }
}
