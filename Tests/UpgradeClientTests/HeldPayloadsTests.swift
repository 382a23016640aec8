import Crypto
import Testing
import UpgradeCore
import UpgradeTestSupport
import UpgradeZstd

@testable import UpgradeClient

@Suite("Payloads held in memory for the install")
struct HeldPayloadsTests {
    static func content(_ bytes: [UInt8]) -> FileContent {
        // The XXH3 digest plays no part here: payloads are found and checked by SHA-256.
        FileContent(
            size: UInt64(bytes.count),
            xxh128: XXH128Digest(high: 0, low: 0),
            sha256: SHA256Hash(bytes: Array(SHA256.hash(data: bytes)))!
        )
    }

    static func streamed(_ source: DownloadedObjects, _ content: FileContent) throws -> [UInt8] {
        var out = [UInt8]()
        try source.stream(content) { out += $0 }
        return out
    }

    @Test("payloads are held up to the budget; past it the caller is told to keep a file, which the install reads")
    func budget() throws {
        let tree = try TemporaryTree()
        let first = [UInt8](repeating: 1, count: 600)
        let second = [UInt8](repeating: 2, count: 600)
        let held = HeldPayloads(budget: 1_000)
        #expect(held.hold(first, as: Self.content(first).sha256!))
        // The same content again costs nothing more.
        #expect(held.hold(first, as: Self.content(first).sha256!))
        #expect(!held.hold(second, as: Self.content(second).sha256!), "600 + 600 bytes are past a 1,000-byte budget")
        #expect(!held.holds(Self.content(second).sha256!))

        // The one that did not fit is kept compressed in the downloads directory, as a single download is.
        try tree.file(Self.content(second).sha256!.hex, try Zstd.compress(second, level: 3))
        let source = DownloadedObjects(directory: tree.root, root: tree.root, held: held)
        #expect(try Self.streamed(source, Self.content(first)) == first)
        #expect(try Self.streamed(source, Self.content(second)) == second)
        let absent = Self.content([3])
        #expect(throws: (any Error).self) { try Self.streamed(source, absent) }
    }
}
