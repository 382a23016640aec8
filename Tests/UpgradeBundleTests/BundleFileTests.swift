import Foundation
import Testing
import UpgradeBundle
import UpgradeCore
import UpgradeTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The offline bundle container: what the writer puts in, the reader finds by kind, SHA-256 and
/// base path; a file that is not a bundle, or lies about its sections, is refused by name.
@Suite("Bundle file")
struct BundleFileTests {
    static let sha = SHA256Hash(bytes: (0..<32).map { UInt8($0) })!
    static let target = SHA256Hash(bytes: (0..<32).map { UInt8(255 - $0) })!

    /// A bundle of every kind of section, one of them from a file.
    static func write(_ tree: TemporaryTree, to name: String = "b.bundle") throws -> String {
        let object = noise(70_000, seed: 3)
        let objectPath = try tree.file("object.zst", object)
        var writer = BundleWriter()
        writer.add(.header, .bytes(Array("signed header".utf8)))
        writer.add(.manifest, .bytes(Array("manifest".utf8)))
        writer.add(.plan, .bytes(Array("{}".utf8)))
        writer.add(.object, name: sha.hex, .file(path: objectPath, size: UInt64(object.count)))
        writer.add(.delta, name: "\(target.hex):lib/core.so", .bytes([1, 2, 3]))
        writer.add(.roots, .bytes(BundleRoots.encode([Array("root 1".utf8), Array("root 2".utf8)])))
        let path = tree.path(name)
        try writer.write(to: path)
        return path
    }

    @Test("sections come back by kind, objects by SHA-256, deltas by target with their base path")
    func roundTrip() throws {
        let tree = try TemporaryTree()
        let reader = try BundleReader(path: try Self.write(tree))
        #expect(try reader.section(.header) == Array("signed header".utf8))
        #expect(try reader.section(.plan) == Array("{}".utf8))
        #expect(try reader.section(.baseManifest) == nil)
        let object = try #require(reader.objects[Self.sha])
        #expect(try reader.read(object, from: 0, count: Int(object.length)) == noise(70_000, seed: 3))
        #expect(try reader.read(object, from: 69_990, count: 10) == Array(noise(70_000, seed: 3).suffix(10)))
        let delta = try #require(reader.deltas[Self.target])
        #expect(delta.base == "lib/core.so")
        #expect(try reader.read(delta.entry, from: 0, count: 3) == [1, 2, 3])
        #expect(
            BundleRoots.decode(try #require(try reader.section(.roots))).map { String(decoding: $0, as: UTF8.self) }
                == ["root 1", "root 2"]
        )
        #expect(throws: BundleError.self) { try reader.section(.header, limit: 4) }
        #expect(throws: BundleError.self) { try reader.read(delta.entry, from: 0, count: 4) }
        // No temporary file is left beside the bundle.
        #expect(try FileManager.default.contentsOfDirectory(atPath: tree.root).sorted() == ["b.bundle", "object.zst"])
    }

    /// Ways a bundle file gets damaged, by the reason the reader gives.
    enum Damage: String, CaseIterable, Sendable {
        case notABundle = "not an upgrade bundle"
        case cutIndex = "index truncated"
        case cutData = "lies outside the file"
        case unknownKind = "unknown section kind"
        case implausibleCount = "implausible"

        func apply(_ bytes: inout [UInt8]) {
            switch self {
            case .notABundle: bytes[0] = 0x21
            case .cutIndex: bytes = Array(bytes.prefix(20))
            case .cutData: bytes = Array(bytes.dropLast(100))
            case .unknownKind: bytes[12] = 99
            case .implausibleCount: bytes[8] = 0xff
            }
        }
    }

    @Test("a file that is not a bundle, or is cut or altered, is refused with the reason", arguments: Damage.allCases)
    func malformed(damage: Damage) throws {
        let reason = damage.rawValue
        let tree = try TemporaryTree()
        let path = try Self.write(tree)
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        damage.apply(&bytes)
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        do {
            _ = try BundleReader(path: path)
            Issue.record("\(reason): the damaged bundle was read")
        } catch let error as BundleError {
            #expect("\(error)".contains(reason), "\(error)")
            #expect("\(error)".contains(path))
        }
    }

    @Test("a source file that changed size fails the write, leaving neither a bundle nor a temporary file")
    func changedSource() throws {
        let tree = try TemporaryTree()
        let objectPath = try tree.file("object.zst", noise(100, seed: 1))
        var writer = BundleWriter()
        writer.add(.object, name: Self.sha.hex, .file(path: objectPath, size: 99))
        #expect(throws: (any Error).self) { try writer.write(to: tree.path("out.bundle")) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: tree.root) == ["object.zst"])
    }
}
