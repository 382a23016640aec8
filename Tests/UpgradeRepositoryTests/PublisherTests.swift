import Foundation
import Testing
import UpgradeCore
import UpgradeRepository
import UpgradeTestSupport
import UpgradeTrust

/// Publishing and verifying a repository in-process: what `upgrade publish` and
/// `upgrade verify-repo` stand on, without the binary.
@Suite("Publisher and repository verifier")
struct PublisherTests {
    let work: TemporaryTree
    let key = PrivateKey()
    var repo: String { work.path("repo") }

    init() throws { work = try TemporaryTree() }

    /// A release tree: a library that changes a little between versions, a file that does not.
    func tree(_ version: Int) throws -> String {
        let name = "tree-\(version)"
        try work.directory(name)
        try work.directory(name + "/lib")
        var library = noise(200_000, seed: 1)
        library.replaceSubrange(1000..<1100, with: noise(100, seed: UInt64(version) + 10))
        try work.file(name + "/lib/core.so", library)
        try work.file(name + "/README", "unchanged\n")
        try work.file(name + "/VERSION", "\(version).0\n")
        return work.path(name)
    }

    func publish(_ version: Int, tree: String? = nil) async throws -> PublishResult {
        var request = PublishRequest(
            repository: repo,
            product: "app",
            version: "\(version).0",
            tree: try tree ?? self.tree(version)
        )
        request.compressionLevel = 3
        return try await Publisher(repository: repo, key: key).publish(request)
    }

    @Test("two releases: sequences grow, unchanged content is stored once, a delta is precomputed, all verifies")
    func twoReleases() async throws {
        let first = try await publish(1)
        let second = try await publish(2)
        #expect(first.header.sequence == 1 && second.header.sequence == 2)
        #expect(second.objectsReused >= 1, "README is the same object")
        #expect(second.deltasComputed >= 1, "lib/core.so changed by 100 bytes")
        #expect(second.channel?.version == "2.0")

        let report = RepositoryVerifier(repository: repo, trusted: TrustedKeys([key.publicKey])).verify()
        #expect(report.problems.isEmpty, "\(report.problems)")
        #expect(report.releases == 2)
        let stranger = RepositoryVerifier(repository: repo, trusted: TrustedKeys([PrivateKey().publicKey])).verify()
        #expect(!stranger.problems.isEmpty)

        // Publishing the same version with the same content again changes nothing.
        let again = try await publish(2)
        #expect(!again.newRelease && again.objectsWritten == 0)
    }

    @Test("one flipped byte in a stored object is a finding that names the object")
    func damagedObject() async throws {
        _ = try await publish(1)
        let objects = try FileManager.default.subpathsOfDirectory(atPath: repo + "/objects").filter { $0.count > 3 }
        let victim = try #require(objects.sorted().first)
        let path = repo + "/objects/" + victim
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        bytes[bytes.count / 2] ^= 0x01
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let report = RepositoryVerifier(repository: repo, trusted: TrustedKeys([key.publicKey])).verify()
        #expect(report.problems.contains { $0.path.hasSuffix(victim) }, "\(report.problems)")
    }

    @Test("a version published with other content, an older version, a bad name: refused, the release kept")
    func refusals() async throws {
        _ = try await publish(1)
        _ = try await publish(2)
        let header = try Data(contentsOf: URL(fileURLWithPath: repo + "/releases/app/2.0/header"))
        let changed = try tree(3)
        await #expect(throws: PublishError.self) { _ = try await publish(2, tree: changed) }
        do {
            _ = try await publish(2, tree: changed)
        } catch let error as PublishError {
            #expect("\(error)".contains("already published with different content"), "\(error)")
            #expect("\(error)".contains("lib/core.so"), "\(error)")
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: repo + "/releases/app/2.0/header")) == header)
        do {
            var older = PublishRequest(repository: repo, product: "app", version: "1.5.0", tree: changed)
            older.compressionLevel = 3
            _ = try await Publisher(repository: repo, key: key).publish(older)
            Issue.record("an older version was published")
        } catch let error as PublishError {
            #expect("\(error)".contains("not newer than the latest published 2.0"), "\(error)")
        }
        let badName = PublishRequest(repository: repo, product: "../app", version: "9.0", tree: changed)
        await #expect(throws: PublishError.self) {
            _ = try await Publisher(repository: repo, key: key).publish(badName)
        }
        #expect(!FileManager.default.fileExists(atPath: work.path("app")))
    }
}
