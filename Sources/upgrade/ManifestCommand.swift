import ArgumentParser
import UpgradeCore
import UpgradeScan
import UpgradeSystem

/// `upgrade manifest DIR`: scan a tree and print or save its manifest.
struct ManifestCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "manifest",
        abstract: "Scan a tree and write its manifest.",
        discussion: """
            Without --output, the manifest goes to standard output: JSON with --json, a listing \
            on a terminal, the canonical binary encoding into a pipe. With --output it is written \
            atomically to FILE (canonical binary, or JSON with --json). DIR may also be a manifest \
            file, to convert between the two forms.
            """
    )

    @Argument(help: "The tree to scan (or a manifest file to convert).")
    var dir: String

    @Flag(help: "Write the JSON form instead of the canonical binary encoding.")
    var json = false

    @Option(name: .shortAndLong, help: "Write the manifest to this file instead of standard output.")
    var output: String?

    @OptionGroup var scan: ScanFlags

    func run() async throws {
        Main.keepFreedMemory()
        let (manifest, result) = try await TreeSource.load(dir, options: scan.options, cache: scan.cacheLocation)
        for warning in result?.warnings ?? [] { Terminal.warning("\(warning)") }

        let bytes = json ? [UInt8](manifest.jsonEncoded()) + [0x0a] : manifest.canonicalEncoding()
        if let output {
            try AtomicFile.write(bytes, to: output)
            if Terminal.stdoutIsTerminal { print(Self.summaryLine(manifest, result)) }
        } else if json || !Terminal.stdoutIsTerminal {
            try Terminal.write(bytes)
        } else {
            for entry in manifest.entries { print(Self.listing(entry)) }
            print(Self.summaryLine(manifest, result))
        }
    }

    static func listing(_ entry: ManifestEntry) -> String {
        switch entry.content {
        case .file(let file):
            "\(file.xxh128.hex)  \(FileMode.string(entry.mode)) \(String(file.size).leftPad(12))  \(entry.path)"
        case .directory:
            "\(String(repeating: " ", count: 32))  \(FileMode.string(entry.mode)) \("dir".leftPad(12))  \(entry.path)/"
        case .symlink(let target):
            "\(String(repeating: " ", count: 32))  \("link".leftPad(4)) \("".leftPad(12))  \(entry.path) -> \(target)"
        }
    }

    static func summaryLine(_ manifest: Manifest, _ scan: ScanResult?) -> String {
        let s = manifest.summary
        var line =
            "\(Terminal.count(s.files, "file")), \(Terminal.count(s.directories, "directory").replacingOccurrences(of: "directorys", with: "directories")), "
            + "\(Terminal.count(s.symlinks, "symlink")), \(Terminal.bytes(s.bytes)); digest \(manifest.digest.hex)"
        if let stats = scan?.statistics {
            line +=
                "; hashed \(Terminal.count(stats.filesHashed, "file")) (\(Terminal.bytes(stats.bytesHashed))), \(stats.cacheHits) from the stat cache"
        }
        return line
    }
}

/// Flags shared by every command that scans a tree.
struct ScanFlags: ParsableArguments {
    @Flag(help: "Skip devices, FIFOs and sockets with a warning instead of failing.")
    var skipSpecial = false

    @Option(help: "Stat cache file (default: ROOT/.upgrade/statcache when that directory exists).")
    var statCache: String?

    @Flag(help: "Hash every file; read and write no stat cache.")
    var noStatCache = false

    @Option(help: "Files hashed at once (default: the number of cores).")
    var jobs: Int?

    func validate() throws {
        if noStatCache && statCache != nil {
            throw ValidationError("--stat-cache and --no-stat-cache exclude each other")
        }
        if let jobs, !(1...256).contains(jobs) { throw ValidationError("--jobs must be between 1 and 256") }
    }

    var options: ScanOptions {
        var options = ScanOptions()
        if skipSpecial { options.specialFiles = .skip }
        if let jobs { options.concurrency = jobs }
        return options
    }

    var cacheLocation: TreeSource.CacheLocation {
        if noStatCache { return .none }
        if let statCache { return .file(statCache) }
        return .stateDirectory
    }
}

extension String {
    func leftPad(_ width: Int) -> String {
        count >= width ? self : String(repeating: " ", count: width - count) + self
    }
}
