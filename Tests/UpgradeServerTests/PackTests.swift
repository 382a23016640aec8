import Crypto
import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import Testing
import UpgradeCore
import UpgradeProtocol
import UpgradeRepository
import UpgradeServer
import UpgradeTestSupport
import UpgradeTrust
import UpgradeZstd

/// The server built in-process (`buildApplication`, as `upgrade serve` builds it) and driven
/// through HummingbirdTesting's router client: no process, no port.
@Suite("Server in-process: object packs")
struct PackTests {
    /// A repository with one release of two small files and one of 100 KiB that does not compress (too large for a pack).
    static func repository() async throws -> (TemporaryTree, [String: SHA256Hash]) {
        let work = try TemporaryTree()
        let files: [String: [UInt8]] = [
            "a.txt": Array("alpha\n".utf8),
            "b.txt": Array("bravo bravo\n".utf8),
            // Random bytes: 100 KiB compressed too, past the pack limit of 64 KiB.
            "big.bin": (0..<(100 << 10)).map { _ in UInt8.random(in: 0...255) },
        ]
        for (name, bytes) in files { try work.file("tree/" + name, bytes) }
        let publisher = Publisher(repository: work.path("repo"), key: PrivateKey())
        _ = try await publisher.publish(
            PublishRequest(repository: work.path("repo"), product: "app", version: "1.0", tree: work.path("tree"))
        )
        let shas = files.mapValues { SHA256Hash(bytes: Array(SHA256.hash(data: $0)))! }
        return (work, shas)
    }

    static func application(_ repository: String) throws -> some ApplicationProtocol {
        var logger = Logger(label: "upgrade.test")
        logger.logLevel = .critical
        return try buildApplication(ServerConfiguration(repository: repository), logger: logger)
    }

    /// The frames of a pack response, in order: SHA-256, found, payload.
    static func frames(_ body: [UInt8]) -> [(sha: [UInt8], found: Bool, bytes: [UInt8])] {
        var frames = [(sha: [UInt8], found: Bool, bytes: [UInt8])]()
        var offset = 0
        while offset + ObjectPack.headSize <= body.count {
            let length = body[offset + 33..<offset + 41].reduce(0) { $0 << 8 | Int($1) }
            let start = offset + ObjectPack.headSize
            frames.append(
                (Array(body[offset..<offset + 32]), body[offset + 32] == 0, Array(body[start..<start + length]))
            )
            offset = start + length
        }
        return frames
    }

    @Test("a pack answers each object in request order: small ones whole (zstd), large and unknown ones as missing")
    func objectPack() async throws {
        let (work, shas) = try await Self.repository()
        let unknown = SHA256Hash(bytes: Array(SHA256.hash(data: Array("not published".utf8))))!
        let asked = [shas["b.txt"]!, unknown, shas["big.bin"]!, shas["a.txt"]!]
        let body = try JSONEncoder().encode(ObjectPack.Request(objects: asked.map(\.hex)))
        try await Self.application(work.path("repo")).test(.router) { client in
            try await client.execute(
                uri: "/" + ObjectPack.path,
                method: .post,
                headers: [.contentType: "application/json"],
                body: ByteBuffer(bytes: body)
            ) { response in
                #expect(response.status == .ok)
                #expect(response.headers[.contentType] == ObjectPack.contentType)
                let frames = Self.frames(Array(response.body.readableBytesView))
                #expect(frames.map(\.sha) == asked.map(\.bytes))
                #expect(frames.map(\.found) == [true, false, false, true])
                let first = try Zstd.decompress(frames[0].bytes, maxSize: 1 << 20)
                let last = try Zstd.decompress(frames[3].bytes, maxSize: 1 << 20)
                #expect(first == Array("bravo bravo\n".utf8))
                #expect(last == Array("alpha\n".utf8))
                #expect(frames[1].bytes.isEmpty && frames[2].bytes.isEmpty)
            }
        }
    }

    @Test("a pack request that is not a list of SHA-256s, or too long, is refused (400, 413)")
    func badPackRequests() async throws {
        let (work, _) = try await Self.repository()
        let notHex = try JSONEncoder().encode(ObjectPack.Request(objects: ["../../etc/passwd"]))
        let tooMany = try JSONEncoder().encode(
            ObjectPack.Request(
                objects: Array(repeating: String(repeating: "0", count: 64), count: ObjectPack.maximumCount + 1)
            )
        )
        try await Self.application(work.path("repo")).test(.router) { client in
            for (body, status) in [(notHex, HTTPResponse.Status.badRequest), (tooMany, .contentTooLarge)] {
                try await client.execute(
                    uri: "/" + ObjectPack.path,
                    method: .post,
                    headers: [.contentType: "application/json"],
                    body: ByteBuffer(bytes: body)
                ) { response in
                    #expect(response.status == status)
                }
            }
            try await client.execute(uri: "/healthz", method: .get) { response in
                #expect(response.status == .ok)
                #expect(String(buffer: response.body) == "ok\n")
            }
        }
    }
}
