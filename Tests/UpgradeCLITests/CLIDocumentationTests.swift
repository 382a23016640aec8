import Crypto
import Foundation
import Testing
import UpgradeTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// Help, README, installation and the shipped unit.
@Suite("CLI contract: help, README, install", .serialized)
struct CLIDocumentationTests {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../..").standardized.path

    static let commands = [
        "manifest", "diff", "keygen", "publish", "releases", "verify-repo", "bundle", "apply", "status", "verify",
        "rollback", "recover", "serve", "sync", "share", "root init", "root rotate", "root revoke", "root sign",
        "root show", "channel set", "channel pause", "channel resume", "confirm",
    ]

    @Test("the README's exit-code block is exactly what upgrade --help prints, and names every command")
    func exitCodesMatchHelp() throws {
        let help = try Upgrade.run(["--help"]).text
        let start = try #require(help.range(of: "EXIT CODES\n"))
        let end = try #require(help.range(of: "\nUSAGE:"))
        let fromHelp = String(help[start.lowerBound..<end.lowerBound]).trimmingCharacters(in: .newlines)
        let readme = try String(contentsOfFile: Self.packageRoot + "/README.md", encoding: .utf8)
        let begin = try #require(readme.range(of: "<!-- exit-codes:begin -->\n```text\n"))
        let finish = try #require(readme.range(of: "```\n<!-- exit-codes:end -->"))
        let fromReadme = String(readme[begin.upperBound..<finish.lowerBound]).trimmingCharacters(in: .newlines)
        #expect(fromReadme == fromHelp, "README and --help differ; paste `upgrade --help`'s EXIT CODES block")
        for line in fromHelp.split(separator: "\n") { #expect(line.count <= 80, "wider than 80 columns: \(line)") }
        let subcommands = Set(Self.commands.map { String($0.split(separator: " ")[0]) })
        for command in subcommands {
            #expect(fromHelp.contains("\n  \(command) "), "\(command) has no row in the exit-code table")
        }
    }

    @Test("every flag of every command is in the README, and no help line prints its default twice")
    func flagsDocumented() throws {
        let readme = try String(contentsOfFile: Self.packageRoot + "/README.md", encoding: .utf8)
        for command in Self.commands {
            let help = try Upgrade.run(command.split(separator: " ").map(String.init) + ["--help"]).text
            let flags = Set(
                help.split(whereSeparator: { " ,[]()<>=\n".contains($0) }).filter {
                    $0.hasPrefix("--") && $0.count > 2 && $0.dropFirst(2).allSatisfy { $0.isLetter || $0 == "-" }
                }.map(String.init)
            )
            #expect(!flags.isEmpty, "\(command) --help lists no flags")
            for flag in flags where !["--help", "--version"].contains(flag) {
                let documented = readme.range(of: flag + "[^a-z-]", options: .regularExpression) != nil
                #expect(documented, "`upgrade \(command)` has \(flag), which the README does not mention")
            }
            // One option's help, joined across wrapped lines, says "default" at most once.
            let joined = help.replacingOccurrences(of: "\n        ", with: " ")
            for line in joined.split(separator: "\n") where line.components(separatedBy: "default").count > 2 {
                Issue.record("\(command): default printed twice: \(line)")
            }
        }
    }

    @Test("make install-files puts the binary and bash/zsh/fish completions under DESTDIR/PREFIX")
    func installFiles() throws {
        let destination = try TemporaryTree()
        let result = try runProgram(
            "/usr/bin/make",
            [
                "-C", Self.packageRoot, "--no-print-directory", "install-files", "BIN=\(Upgrade.binary)",
                "DESTDIR=\(destination.root)", "PREFIX=/usr",
            ]
        )
        #expect(result.status == 0, "\(result.stderr)")
        let prefix = destination.path("usr")
        #expect(FileManager.default.isExecutableFile(atPath: prefix + "/bin/upgrade"))
        let bash = prefix + "/share/bash-completion/completions/upgrade"
        let completion = try String(contentsOfFile: bash, encoding: .utf8)
        for command in ["sync", "apply", "rollback", "recover", "--allow-downgrade"] {
            #expect(completion.contains(command), "bash completion lacks \(command)")
        }
        #expect(try runProgram("/bin/bash", ["-n", bash]).status == 0, "the bash completion does not parse")
        #expect(FileManager.default.fileExists(atPath: prefix + "/share/zsh/site-functions/_upgrade"))
        #expect(FileManager.default.fileExists(atPath: prefix + "/share/fish/vendor_completions.d/upgrade.fish"))
    }

    @Test(
        "the shipped systemd unit is sandboxed: systemd-analyze security scores it below 3 (9.6 unhardened)",
        .enabled(if: Prerequisites.systemdAnalyze, "systemd-analyze is not installed (make deps installs systemd)")
    )
    func systemdUnit() throws {
        let unit = Self.packageRoot + "/Examples/systemd/upgrade-myapp.service"
        let result = try runProgram("/usr/bin/systemd-analyze", ["security", "--offline=true", unit])
        let line = try #require(
            (result.text + result.stderr).split(separator: "\n").first { $0.contains("Overall exposure level") },
            "\(result.text)\(result.stderr)"
        )
        let score = try #require(
            line.split(separator: ":").last?.split(separator: " ").first.flatMap { Double($0) },
            "\(line)"
        )
        #expect(score < 3, "\(line)")
    }

    @Test(
        "on a terminal, progress moves with the bytes of a file (rate and ETA), not once per finished file",
        .enabled(if: Prerequisites.script, "script(1) is not installed (bsdutils)")
    )
    func progressOnTerminal() async throws {
        let sync = try SyncFixture(releases: 1)
        let server = try ServerProcess(repo: sync.repo)
        // One small object trickles from the mirror, a byte every 50 ms (the others come at once).
        let small = SHA256.hash(data: Data("only in 1".utf8)).map { String(format: "%02x", $0) }.joined()
        let mirror = try HostileMirror(
            directory: sync.repo,
            [("/objects/\(small.prefix(2))/\(small)", .trickle(interval: 0.05))]
        )
        defer { mirror.stop() }
        let root = sync.fixture.work.path("root")
        let command = [
            Upgrade.binary, "sync", "--server", server.url, "--mirror", mirror.url, "--product", sync.fixture.product,
            "--root", root, "--trust", sync.fixture.pub, "--min-rate", "0", "--parallel", "1",
        ].joined(separator: " ")
        let result = try runProgram("/usr/bin/script", ["-qefc", command, "/dev/null"])
        #expect(result.status == 0, "\(result.text)")
        try await sync.expect(root, equals: 1, "progress")
        let frames = result.text.split(whereSeparator: { $0 == "\r" || $0 == "\n" }).map(String.init).filter {
            $0.hasPrefix("[") && $0.contains(" files")
        }
        let withRate = frames.filter { $0.contains("/s ETA ") }
        #expect(withRate.count >= 3, "\(frames)")
        // Within one file (same "k/n files"), the byte count moves.
        let byFile = Dictionary(grouping: frames) { frame in
            frame.split(separator: " ").first { $0.contains("/") && !$0.contains("[") && !$0.contains("B") }
                .map(String.init) ?? ""
        }
        let moving = byFile.values.contains { Set($0.map { $0.split(separator: "]").last ?? "" }).count >= 2 }
        #expect(moving, "progress only moved per file: \(frames)")
    }
}
