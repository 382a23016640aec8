import Testing
import UpgradeTestSupport
import UpgradeZstd

@Suite("zstd wrapper")
struct ZstdTests {
    @Test("round trip", arguments: [0, 1, 1000, 300_000, 3 << 20])
    func roundTrip(size: Int) throws {
        let input = noise(size / 2, seed: 7) + [UInt8](repeating: 0x41, count: size - size / 2)
        let compressed = try Zstd.compress(input, level: 3)
        #expect(try Zstd.decompress(compressed, maxSize: size) == input)
        // Incompressible data: raw blocks, the case that fills every output chunk exactly.
        let random = noise(size, seed: 9)
        #expect(try Zstd.decompress(try Zstd.compress(random, level: 3), maxSize: size) == random)
    }

    @Test("decompression stops at the expected size and rejects truncated or corrupt frames")
    func bounded() throws {
        let input = [UInt8](repeating: 0, count: 1 << 20)
        let compressed = try Zstd.compress(input, level: 3)
        #expect(compressed.count < 1000)
        #expect(throws: ZstdError.tooLarge(limit: 4096)) { try Zstd.decompress(compressed, maxSize: 4096) }
        #expect(throws: ZstdError.self) { try Zstd.decompress(Array(compressed.dropLast(3)), maxSize: 1 << 20) }
        #expect(throws: ZstdError.self) { try Zstd.decompress([1, 2, 3, 4, 5, 6, 7, 8], maxSize: 100) }
    }
}
