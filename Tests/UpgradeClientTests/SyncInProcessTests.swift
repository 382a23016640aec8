import Foundation
import HummingbirdTesting
import Logging
import Testing
import UpgradeApply
import UpgradeClient
import UpgradeCore
import UpgradeRepository
import UpgradeServer
import UpgradeTestSupport
import UpgradeTrust

/// `SyncClient` against the plan server built in-process (`buildApplication`, live on a loopback
/// port that HummingbirdTesting picks): the whole sync path with no `upgrade` process.
@Suite("Sync in-process against the server")
struct SyncInProcessTests: Sendable {
    let work: TemporaryTree
    let key = PrivateKey()
    var repo: String { work.path("repo") }
    var root: String { work.path("root") }

    init() throws { work = try TemporaryTree() }

    /// Release `version`: a library that changes a little each time, a file that goes away in 2.
    func publish(_ version: Int) async throws {
        let tree = "tree-\(version)"
        try work.directory(tree)
        try work.directory(tree + "/lib")
        var library = noise(150_000, seed: 5)
        library.replaceSubrange(500..<600, with: noise(100, seed: UInt64(version)))
        try work.file(tree + "/lib/core.so", library)
        try work.file(tree + "/VERSION", "\(version).0\n")
        if version == 1 { try work.file(tree + "/old.txt", "only in 1.0\n") }
        var request = PublishRequest(repository: repo, product: "app", version: "\(version).0", tree: work.path(tree))
        request.compressionLevel = 3
        _ = try await Publisher(repository: repo, key: key).publish(request)
    }

    /// Runs `body` with the URL of a server over `repo`, live on loopback.
    func withServer(_ body: @Sendable (String) async throws -> Void) async throws {
        var logger = Logger(label: "upgrade.test")
        logger.logLevel = .critical
        let app = try buildApplication(ServerConfiguration(repository: repo), logger: logger)
        try await app.test(.live) { client in
            let port = try #require(client.port)
            try await body("http://localhost:\(port)")
        }
    }

    func sync(_ server: String, _ change: (inout SyncOptions) -> Void = { _ in }) async throws -> SyncReport {
        var options = SyncOptions(server: server, product: "app", root: root, trusted: TrustedKeys([key.publicKey]))
        change(&options)
        var logger = Logger(label: "upgrade.test")
        logger.logLevel = .critical
        return try await SyncClient.sync(options, logger: logger)
    }

    func expectRoot(equals version: Int) throws {
        let tree = work.path("tree-\(version)")
        for file in ["lib/core.so", "VERSION"] {
            #expect(
                FileManager.default.contents(atPath: root + "/" + file)
                    == FileManager.default.contents(atPath: tree + "/" + file),
                "\(file) at \(version).0"
            )
        }
        #expect(FileManager.default.fileExists(atPath: root + "/old.txt") == (version == 1))
    }

    @Test("first install, an upgrade by delta, then nothing to do: each report says what happened")
    func installUpgradeNoOp() async throws {
        try await publish(1)
        let root = self.root
        try await withServer { server in
            let first = try await sync(server)
            #expect(first.result == .installed && first.toVersion == "1.0")
            try expectRoot(equals: 1)

            try await publish(2)
            let upgrade = try await sync(server)
            #expect(upgrade.result == .installed && upgrade.fromVersion == "1.0" && upgrade.toVersion == "2.0")
            #expect(upgrade.bytesDownloaded < 20_000, "a 100-byte change to a 150 KB library travels as a delta")
            try expectRoot(equals: 2)

            let again = try await sync(server)
            #expect(again.result == .upToDate)
            #expect(try await Installer.verify(root: root).isEmpty)
        }
    }

    @Test("a dry run fetches and changes nothing; a key the client does not trust is refused")
    func dryRunAndTrust() async throws {
        try await publish(1)
        try await withServer { server in
            let dry = try await sync(server) { $0.dryRun = true }
            #expect(dry.result == .dryRun)
            #expect(!FileManager.default.fileExists(atPath: root + "/VERSION"))

            await #expect(throws: SyncError.self) {
                _ = try await sync(server) { $0.trusted = TrustedKeys([PrivateKey().publicKey]) }
            }
            #expect(!FileManager.default.fileExists(atPath: root + "/VERSION"))
        }
    }
}
