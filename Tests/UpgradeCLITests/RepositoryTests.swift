import Foundation
import Testing
import UpgradeCore
import UpgradeRepository
import UpgradeTestSupport
import UpgradeTrust

#if canImport(Glibc)
import Glibc
#endif

/// A key pair and a repository with two published releases of the example app.
final class PublishedRepository {
    let work: TemporaryTree
    var key: String { work.path("publisher.key") }
    var pub: String { work.path("publisher.key.pub") }
    var repo: String { work.path("repo") }
    static let examples = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../Examples").standardized.path

    init(releases: Int = 2) throws {
        work = try TemporaryTree()
        let keygen = try Upgrade.run(["keygen", "--output", key])
        precondition(keygen.status == 0, keygen.stderr)
        if releases >= 1 { try publish("1.0", "\(Self.examples)/myapp-1.0") }
        if releases >= 2 { try publish("1.1", "\(Self.examples)/myapp-1.1", extra: ["--health-check", "bin/myapp"]) }
    }

    @discardableResult
    func publish(
        _ version: String,
        _ tree: String,
        extra: [String] = [],
        expect status: Int32 = 0
    ) throws -> CommandResult {
        let result = try Upgrade.run(
            ["publish", "--repo", repo, "--product", "myapp", "--version", version, "--key", key, "--level", "3", tree]
                + extra
        )
        #expect(result.status == status, "\(result.stderr)")
        return result
    }

    func verify(trust: String? = nil) throws -> CommandResult {
        try Upgrade.run(["verify-repo", "--repo", repo, "--trust", trust ?? pub])
    }

    func objectFiles() -> [String] {
        let enumerator = FileManager.default.enumerator(atPath: repo + "/objects")
        var files = [String]()
        while let path = enumerator?.nextObject() as? String {
            if path.count > 3 { files.append(path) }
        }
        return files.sorted()
    }
}

/// Flips one byte of a file at `offset` (negative: from the end).
func flipByte(_ path: String, at offset: Int) throws {
    var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
    let index = offset >= 0 ? offset : bytes.count + offset
    bytes[index] ^= 0x01
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

/// Changes one base64 character inside the JSON string value of `field` in a signed envelope file.
func tamperEnvelope(_ path: String, field: String) throws {
    var text = try String(contentsOfFile: path, encoding: .utf8)
    let marker = try #require(text.range(of: "\"\(field)\" : \""))
    let index = text.index(marker.upperBound, offsetBy: 12)
    let replacement: Character = text[index] == "A" ? "B" : "A"
    text.replaceSubrange(index...index, with: String(replacement))
    try text.write(toFile: path, atomically: false, encoding: .utf8)
}

@Suite("Release repository", .serialized)
struct RepositoryTests {
    @Test("publish --version V with the directory forgotten is a usage error (exit 2), not the tool's version")
    func versionOptionIsNotTheVersionFlag() throws {
        let fixture = try ApplyFixture()
        let forgotten = try Upgrade.run([
            "publish", "--repo", fixture.repo, "--product", "app", "--version", "1.4.0", "--key", fixture.key,
        ])
        #expect(forgotten.status == 2, "\(forgotten.text)\(forgotten.stderr)")
        #expect(forgotten.stderr.contains("<dir>"), "\(forgotten.stderr)")
        #expect(!forgotten.text.contains("0.1.0"))
        #expect(!FileManager.default.fileExists(atPath: fixture.repo))
        let typo = try Upgrade.run(["publish", "--repo", fixture.repo, "--kee", fixture.key, fixture.work.root])
        #expect(typo.status == 2, "\(typo.text)\(typo.stderr)")
        let version = try Upgrade.run(["--version"])
        #expect(version.status == 0 && version.text == "0.1.0\n", "\(version.text)")
    }

    @Test("two published versions verify; releases lists them with the channel")
    func publishAndVerify() throws {
        let published = try PublishedRepository()
        let verify = try published.verify()
        #expect(verify.status == 0, "\(verify.text)\(verify.stderr)")
        #expect(verify.text.contains("2 releases"))
        #expect(verify.text.contains("0 problems"))
        let list = try Upgrade.run(["releases", "--repo", published.repo, "--json"])
        let output = try #require(try JSONSerialization.jsonObject(with: list.stdout) as? [String: Any])
        #expect(output["format"] as? String == "upgrade-output/1")
        let document = try #require(output["products"] as? [[String: Any]])
        let releases = try #require(document.first?["releases"] as? [[String: Any]])
        #expect(releases.map { $0["version"] as? String } == ["1.0", "1.1"])
        #expect(releases.map { $0["sequence"] as? Int } == [1, 2])
        let channels = try #require(document.first?["channels"] as? [String: [String: Any]])
        #expect(channels["stable"]?["version"] as? String == "1.1")
        // The hook is recorded in the signed manifest.
        let manifest = try Manifest(
            canonical: [UInt8](
                try Data(contentsOf: URL(fileURLWithPath: published.repo + "/releases/myapp/1.1/manifest"))
            )
        )
        #expect(manifest.hooks.scripts[.healthCheck] == "bin/myapp")
        #expect(manifest.entries.allSatisfy { $0.file == nil || $0.file?.sha256 != nil })
    }

    @Test(
        "one flipped byte is reported by path with exit 4",
        arguments: ["object", "manifest", "header payload", "header signature", "channel payload", "channel signature"]
    )
    func tamperDetection(target: String) throws {
        let published = try PublishedRepository()
        let repo = published.repo
        let path: String
        switch target {
        case "object":
            let object = try #require(published.objectFiles().first)
            path = "objects/" + object
            try flipByte(repo + "/" + path, at: -5)
        case "manifest":
            path = "releases/myapp/1.0/manifest"
            try flipByte(repo + "/" + path, at: 40)
        case "header payload":
            path = "releases/myapp/1.1/header"
            try tamperEnvelope(repo + "/" + path, field: "payload")
        case "header signature":
            path = "releases/myapp/1.0/header"
            try tamperEnvelope(repo + "/" + path, field: "sig")
        case "channel payload":
            path = "channels/myapp/stable"
            try tamperEnvelope(repo + "/" + path, field: "payload")
        default:
            path = "channels/myapp/stable"
            try tamperEnvelope(repo + "/" + path, field: "sig")
        }
        let result = try published.verify()
        #expect(result.status == 4)
        #expect(result.text.contains(path + ":"), "\(result.text)")
    }

    @Test("a repository signed by a key that is not trusted fails verification")
    func untrustedKey() throws {
        let published = try PublishedRepository(releases: 1)
        let stranger = published.work.path("stranger.key")
        #expect(try Upgrade.run(["keygen", "--output", stranger]).status == 0)
        let result = try published.verify(trust: stranger + ".pub")
        #expect(result.status == 4)
        #expect(result.text.contains("releases/myapp/1.0/header: signed by untrusted key"))
        // Rotation: trusting both keys passes.
        #expect(try published.verify(trust: "\(stranger).pub,\(published.pub)").status == 0)
    }

    @Test("an expired channel record is rejected (injected clock)")
    func expiredChannel() throws {
        let published = try PublishedRepository(releases: 1)
        let keys = try KeyFiles.loadTrusted([published.pub])
        let now = RepositoryVerifier(repository: published.repo, trusted: keys).verify()
        #expect(now.problems.isEmpty)
        let later = RepositoryVerifier(repository: published.repo, trusted: keys, now: Timestamps.now() + 31 * 86_400)
            .verify()
        #expect(later.problems.map(\.path) == ["channels/myapp/stable"])
        #expect(later.problems.first?.message.contains("expired") == true)
    }

    @Test("content already in the repository is stored once")
    func deduplication() throws {
        let published = try PublishedRepository(releases: 1)
        let before = published.objectFiles()
        // The same tree under a new version, plus a tree holding duplicate files.
        try published.publish("1.0.1", "\(PublishedRepository.examples)/myapp-1.0")
        #expect(published.objectFiles() == before)
        let tree = try TemporaryTree()
        for i in 0..<5 { try tree.file("copy\(i)", "same bytes everywhere") }
        try tree.file("other", "different")
        let result = try published.publish("1.0.2", tree.root, extra: ["--json"])
        let summary = try #require(try JSONSerialization.jsonObject(with: result.stdout) as? [String: Any])
        #expect(summary["objectsWritten"] as? Int == 2)
        #expect(published.objectFiles().count == before.count + 2)
    }

    @Test("publish refuses conflicts and bad input with documented codes, changing nothing")
    func refusals() throws {
        let published = try PublishedRepository()
        let before = published.objectFiles()
        let conflict = try published.publish("1.1", "\(PublishedRepository.examples)/myapp-1.0", expect: 5)
        #expect(conflict.stderr.contains("already published with different content"))
        try published.publish("0.9", "\(PublishedRepository.examples)/myapp-1.0", expect: 5)
        try published.publish("not-a-version", "\(PublishedRepository.examples)/myapp-1.0", expect: 2)
        let hook = try published.publish(
            "1.2",
            "\(PublishedRepository.examples)/myapp-1.1",
            extra: ["--pre-install", "bin/missing"],
            expect: 3
        )
        #expect(hook.stderr.contains("bin/missing"))
        #expect(try published.verify().status == 0)
        // Objects may be added by a refused publish (they are content-addressed and harmless) but
        // no release or channel changed.
        #expect(Set(before).isSubset(of: Set(published.objectFiles())))
        let list = try Upgrade.run(["releases", "--repo", published.repo])
        #expect(!list.text.contains("1.2"))
    }

    @Test("keygen writes a 0600 private key and never overwrites silently")
    func keygen() throws {
        let work = try TemporaryTree()
        let key = work.path("k")
        #expect(try Upgrade.run(["keygen", "--output", key]).status == 0)
        var info = stat()
        stat(key, &info)
        #expect(info.st_mode & 0o777 == 0o600)
        let publicText = try String(contentsOfFile: key + ".pub", encoding: .utf8)
        _ = try PublicKey(text: publicText)
        let original = try Data(contentsOf: URL(fileURLWithPath: key))
        let again = try Upgrade.run(["keygen", "--output", key])
        #expect(again.status == 5)
        #expect(try Data(contentsOf: URL(fileURLWithPath: key)) == original)
        #expect(try Upgrade.run(["keygen", "--output", key, "--force"]).status == 0)
        #expect(try Data(contentsOf: URL(fileURLWithPath: key)) != original)
        chmod(key, 0o644)
        let open = try Upgrade.run([
            "publish", "--repo", work.path("r"), "--product", "p", "--version", "1", "--key", key, work.root,
        ])
        #expect(open.status == 3)
        #expect(open.stderr.contains("chmod 600"))
    }

    @Test("publish killed at random moments: the repository always verifies and a re-run completes")
    func killedPublish() throws {
        let published = try PublishedRepository(releases: 0)
        let tree = try TemporaryTree()
        for i in 0..<300 { try tree.file("d\(i % 7)/f\(i)", noise(12_000, seed: UInt64(i))) }
        let arguments = { (version: String) in
            [
                "publish", "--repo", published.repo, "--product", "myapp", "--version", version, "--key", published.key,
                "--level", "3", tree.root,
            ]
        }
        // Calibrate: how long does a publish that changes a fifth of the files take here? The
        // fastest of three, so a moment of load elsewhere cannot stretch the kill window.
        #expect(try Upgrade.run(arguments("0.0.1")).status == 0)
        var full = Double.infinity
        for round in 2...4 {
            for i in stride(from: round % 5, to: 300, by: 5) {
                try tree.file("d\(i % 7)/f\(i)", noise(12_000, seed: UInt64(999_000 + round * 1000 + i)))
            }
            let start = Date()
            #expect(try Upgrade.run(arguments("0.0.\(round)")).status == 0)
            full = min(full, Date().timeIntervalSince(start))
        }
        var rng = SystemRandomNumberGenerator()
        var killed = 0
        let runs = Int(ProcessInfo.processInfo.environment["UPGRADE_KILL_RUNS"] ?? "") ?? 20
        for run in 1...runs {
            // New content for some files, so each run writes objects.
            for i in stride(from: run % 5, to: 300, by: 5) {
                try tree.file("d\(i % 7)/f\(i)", noise(12_000, seed: UInt64(run * 1000 + i)))
            }
            let version = "1.0.\(run)"
            let process = Process()
            process.executableURL = URL(fileURLWithPath: Upgrade.binary)
            process.arguments = arguments(version)
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            usleep(UInt32.random(in: 0...UInt32(full * 1_000_000), using: &rng))
            if process.isRunning {
                kill(process.processIdentifier, SIGKILL)
                killed += 1
            }
            process.waitUntilExit()
            let afterKill = try published.verify()
            #expect(afterKill.status == 0, "run \(run): \(afterKill.text)")
            let rerun = try Upgrade.run(arguments(version))
            #expect(rerun.status == 0, "run \(run): \(rerun.stderr)")
            #expect(try published.verify().status == 0)
        }
        print("killed publish in \(killed) of \(runs) runs (full publish \(String(format: "%.0f", full * 1000)) ms)")
        #expect(killed >= runs / 2)
    }
}
