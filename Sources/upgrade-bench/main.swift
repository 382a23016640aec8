// `make bench`: measures `upgrade` against the tools people use instead, on the same data, in
// the same run, and prints one table. Timings live here, never in an asserting test.
import Foundation

#if canImport(Glibc)
import Glibc
#endif

struct Options {
    var dataDirectory = FileManager.default.currentDirectoryPath + "/bench-data"
    var smallFiles = 100_000
    var largeFiles = 8
    var largeFileMiB = 128
    var repeats = 3
    var endToEnd = true
    var scans = true
    /// Files in the tree of the no-op-at-scale row.
    var noOpFiles = 1_000_000
    /// End-to-end parts to run (`--e2e numpy,scipy,small,noop,load`); all by default.
    var parts: Set<String> = ["numpy", "scipy", "small", "noop", "load"]

    init(_ arguments: [String]) {
        var iterator = arguments.dropFirst().makeIterator()
        while let argument = iterator.next() {
            switch argument {
            case "--data": dataDirectory = iterator.next() ?? dataDirectory
            case "--small-files": smallFiles = Int(iterator.next() ?? "") ?? smallFiles
            case "--large-files": largeFiles = Int(iterator.next() ?? "") ?? largeFiles
            case "--large-mib": largeFileMiB = Int(iterator.next() ?? "") ?? largeFileMiB
            case "--repeats": repeats = Int(iterator.next() ?? "") ?? repeats
            case "--noop-files": noOpFiles = Int(iterator.next() ?? "") ?? noOpFiles
            case "--no-e2e": endToEnd = false
            case "--only-e2e": scans = false
            case "--e2e": parts = Set((iterator.next() ?? "").split(separator: ",").map(String.init))
            default:
                FileHandle.standardError.write(
                    Data(
                        "usage: upgrade-bench [--data DIR] [--small-files N] [--large-files N] [--large-mib N] [--repeats N] [--noop-files N] [--no-e2e | --only-e2e] [--e2e numpy,scipy,small,noop,load]\n"
                            .utf8
                    )
                )
                exit(2)
            }
        }
    }
}

/// One measured command: best wall time of the repeats, peak RSS of that run.
struct Measurement {
    var seconds: Double
    var maxRSSKiB: Int
}

/// Runs `/bin/sh -c COMMAND` under GNU time with output to /dev/null, through posix_spawn and
/// wait4 (Foundation's Process adds up to ~50 ms of wait latency, which swamped short runs).
/// Returns the best wall time of `repeats` runs and the peak RSS of that run (the shell and
/// everything it waited for).
func measure(_ command: String, repeats: Int) -> Measurement {
    var best = Measurement(seconds: .infinity, maxRSSKiB: 0)
    for _ in 0..<repeats {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        // xxhsum draws a progress line on stderr; failures still show in the exit status.
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        // GNU time forks the command, so its peak RSS is the command's own: a process keeps its
        // peak across execve, and anything exec'd straight from this 20 MB process would inherit it.
        let rssFile = NSTemporaryDirectory() + "/upgrade-bench-rss-\(getpid())"
        let arguments: [UnsafeMutablePointer<CChar>?] =
            ["/usr/bin/time", "-f", "%M", "-o", rssFile, "/bin/sh", "-c", command].map { (argument: String) in
                strdup(argument)
            } + [nil]
        var pid: pid_t = 0
        var start = timespec()
        clock_gettime(CLOCK_MONOTONIC, &start)
        let spawned = posix_spawn(&pid, "/usr/bin/time", &actions, nil, arguments, environ)
        for pointer in arguments { free(pointer) }
        posix_spawn_file_actions_destroy(&actions)
        guard spawned == 0 else {
            FileHandle.standardError.write(Data("bench: cannot start /bin/sh\n".utf8))
            exit(1)
        }
        var status: Int32 = 0
        var usage = rusage()
        while wait4(pid, &status, 0, &usage) < 0 && errno == EINTR {}
        var end = timespec()
        clock_gettime(CLOCK_MONOTONIC, &end)
        guard status == 0 else {
            FileHandle.standardError.write(Data("bench: command failed (status \(status)): \(command)\n".utf8))
            exit(1)
        }
        let seconds = Double(end.tv_sec - start.tv_sec) + Double(end.tv_nsec - start.tv_nsec) / 1e9
        let rss =
            (try? String(contentsOfFile: rssFile, encoding: .utf8)).flatMap {
                Int($0.trimmingCharacters(in: .whitespacesAndNewlines))
            } ?? 0
        if seconds < best.seconds { best = Measurement(seconds: seconds, maxRSSKiB: rss) }
    }
    return best
}

func shell(_ command: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/sh")
    process.arguments = ["-c", command]
    try! process.run()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else {
        FileHandle.standardError.write(Data("bench: setup failed: \(command)\n".utf8))
        exit(1)
    }
}

func quote(_ path: String) -> String { "'" + path.replacingOccurrences(of: "'", with: "'\\''") + "'" }

/// xorshift bytes: cheap, incompressible enough for hashing benchmarks.
func fill(_ buffer: inout [UInt8], seed: inout UInt64) {
    buffer.withUnsafeMutableBytes { raw in
        let words = raw.bindMemory(to: UInt64.self)
        for i in words.indices {
            seed ^= seed << 13
            seed ^= seed >> 7
            seed ^= seed << 17
            words[i] = seed
        }
    }
}

/// 100,000 files of 1–4 KiB in 1,000 directories (some tools' sweet spot, git's worst case).
func makeSmallTree(_ root: String, count: Int) {
    guard !FileManager.default.fileExists(atPath: root + "/.complete") else { return }
    shell("rm -rf \(quote(root))")
    var seed: UInt64 = 0x1234_5678
    var buffer = [UInt8](repeating: 0, count: 4096)
    for i in 0..<count {
        let directory = "\(root)/d\(i / 1000)/s\((i / 100) % 10)"
        if i % 100 == 0 {
            try! FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        fill(&buffer, seed: &seed)
        let size = 1024 + Int(seed % 3072)
        let fd = open("\(directory)/f\(i).dat", O_CREAT | O_WRONLY | O_TRUNC, 0o644)
        _ = buffer.withUnsafeBytes { write(fd, $0.baseAddress, size) }
        close(fd)
    }
    _ = FileManager.default.createFile(atPath: root + "/.complete", contents: nil)
}

/// `count` files of `mib` MiB each.
func makeLargeTree(_ root: String, count: Int, mib: Int) {
    guard !FileManager.default.fileExists(atPath: root + "/.complete") else { return }
    shell("rm -rf \(quote(root)) && mkdir -p \(quote(root))")
    var seed: UInt64 = 0x9876_5432
    var buffer = [UInt8](repeating: 0, count: 1 << 20)
    for i in 0..<count {
        let fd = open("\(root)/large\(i).bin", O_CREAT | O_WRONLY | O_TRUNC, 0o644)
        for _ in 0..<mib {
            fill(&buffer, seed: &seed)
            _ = buffer.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        }
        close(fd)
    }
    _ = FileManager.default.createFile(atPath: root + "/.complete", contents: nil)
}

struct Row {
    var data: String
    var task: String
    var tool: String
    var measurement: Measurement
    var bytes: UInt64
    /// Time of the row this one is compared with, or nil for the reference itself.
    var versus: Double?
}

func format(_ rows: [Row]) -> String {
    var lines = [
        "| data | task | tool | wall s | throughput | max RSS | upgrade speed-up |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for row in rows {
        let seconds = row.measurement.seconds
        let throughput = Double(row.bytes) / seconds / 1e9
        let ratio = row.versus.map { String(format: "%.2f×", seconds / $0) } ?? "—"
        lines.append(
            "| \(row.data) | \(row.task) | \(row.tool) | \(String(format: "%.3f", seconds)) | "
                + "\(String(format: "%.2f GB/s", throughput)) | \(row.measurement.maxRSSKiB) KiB | \(ratio) |"
        )
    }
    return lines.joined(separator: "\n")
}

let options = Options(CommandLine.arguments)
let binDirectory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
let upgrade = quote(binDirectory + "/upgrade")
for tool in ["/usr/bin/xxhsum", "/usr/bin/rsync", "/usr/bin/time"]
where !FileManager.default.isExecutableFile(atPath: tool) {
    FileHandle.standardError.write(Data("bench: \(tool) is missing; run `make deps`\n".utf8))
    exit(1)
}

try! FileManager.default.createDirectory(atPath: options.dataDirectory, withIntermediateDirectories: true)
print(
    "data in \(options.dataDirectory); best of \(options.repeats) runs each; page cache warm; times include process start; the tree each end-to-end run starts from is flushed to disk first (sync), as a long-installed one is, and no tree is deleted until the pair is measured"
)
var rows = [Row]()
let datasets = [
    (
        "\(options.smallFiles / 1000)k small files", "small",
        { (root: String) in makeSmallTree(root, count: options.smallFiles) }
    ),
    (
        "\(options.largeFiles)×\(options.largeFileMiB) MiB", "large",
        { (root: String) in makeLargeTree(root, count: options.largeFiles, mib: options.largeFileMiB) }
    ),
]
for (label, name, make) in datasets where options.scans {
    let tree = options.dataDirectory + "/" + name
    let copy = options.dataDirectory + "/" + name + "-copy"
    let cache = options.dataDirectory + "/" + name + ".statcache"
    print("preparing \(label)…")
    make(tree)
    if !FileManager.default.fileExists(atPath: copy + "/.complete") {
        shell("rm -rf \(quote(copy)) && cp -a \(quote(tree)) \(quote(copy))")
    }
    var total: UInt64 = 0
    if let enumerator = FileManager.default.enumerator(atPath: tree) {
        while let path = enumerator.nextObject() as? String {
            if let size = (try? FileManager.default.attributesOfItem(atPath: tree + "/" + path))?[.size] as? UInt64 {
                total += size
            }
        }
    }
    // Warm the page cache and let the racy window of the stat cache pass.
    shell("find \(quote(tree)) \(quote(copy)) -type f -print0 | xargs -0 cat > /dev/null")
    sleep(1)
    let cold = measure("\(upgrade) manifest \(quote(tree)) --no-stat-cache > /dev/null", repeats: options.repeats)
    let xxhsum = measure(
        "cd \(quote(tree)) && find . -type f -print0 | xargs -0 xxhsum -H2 > /dev/null",
        repeats: options.repeats
    )
    let rsyncChecksum = measure("rsync -an --checksum \(quote(tree))/ \(quote(copy))/", repeats: options.repeats)
    shell("rm -f \(quote(cache)); \(upgrade) manifest \(quote(tree)) --stat-cache \(quote(cache)) > /dev/null")
    let warm = measure(
        "\(upgrade) manifest \(quote(tree)) --stat-cache \(quote(cache)) > /dev/null",
        repeats: options.repeats
    )
    let rsyncStat = measure("rsync -an \(quote(tree))/ \(quote(copy))/", repeats: options.repeats)
    rows += [
        Row(
            data: label,
            task: "hash every file",
            tool: "upgrade manifest (cold, no stat cache)",
            measurement: cold,
            bytes: total,
            versus: nil
        ),
        Row(
            data: label,
            task: "hash every file",
            tool: "xxhsum -H2",
            measurement: xxhsum,
            bytes: total,
            versus: cold.seconds
        ),
        Row(
            data: label,
            task: "hash every file",
            tool: "rsync -an --checksum (vs copy)",
            measurement: rsyncChecksum,
            bytes: total,
            versus: cold.seconds
        ),
        Row(
            data: label,
            task: "rescan unchanged",
            tool: "upgrade manifest (warm stat cache)",
            measurement: warm,
            bytes: total,
            versus: nil
        ),
        Row(
            data: label,
            task: "rescan unchanged",
            tool: "rsync -an (vs copy)",
            measurement: rsyncStat,
            bytes: total,
            versus: warm.seconds
        ),
    ]
}
if options.scans {
    print()
    print(format(rows))
    print()
}
print("upgrade speed-up = the tool's wall time / upgrade's wall time for the same task (above 1: upgrade is faster).")
print(
    "cores: \(ProcessInfo.processInfo.activeProcessorCount); \(String(decoding: (try? Data(contentsOf: URL(fileURLWithPath: "/proc/cpuinfo")))?.split(separator: UInt8(ascii: "\n")).first(where: { $0.starts(with: Array("model name".utf8)) }) ?? [], as: UTF8.self))"
)

if options.endToEnd {
    // What an interrupted run left aside goes now, before anything end to end is measured.
    emptyTrash(data: options.dataDirectory)
    print()
    print("end to end: a tree at the old release upgraded to the new one over loopback (bytes = everything received)")
    print("| upgrade | tool | wall s | bytes received | max RSS | compared |")
    print("|---|---|---:|---:|---:|---|")
    for pair in [
        UpgradePair(package: "numpy", from: "2.2.6", to: "2.3.5"),
        UpgradePair(package: "scipy", from: "1.15.2", to: "1.15.3"),
    ] where options.parts.contains(pair.package) {
        for row in endToEnd(pair, data: options.dataDirectory, upgrade: upgrade, repeats: options.repeats) {
            print(row)
        }
    }
    // The generated pair: 100,000 small files, 1% edited, 0.5% added, 0.5% deleted.
    let small = "\(options.dataDirectory)/small-100k"
    let changed = "\(options.dataDirectory)/small-100k-changed"
    if options.parts.contains("small") {
        makeSmallTree(small, count: 100_000)
        makeChangedSmallTree(small, changed)
    }
    for row in !options.parts.contains("small")
        ? []
        : endToEnd(
            UpgradePair(package: "small", from: "1.0", to: "1.1"),
            old: small,
            new: changed,
            data: options.dataDirectory,
            upgrade: upgrade,
            repeats: options.repeats
        )
    {
        print(row)
    }
    // The cron-run cost at fleet scale.
    for row in !options.parts.contains("noop")
        ? []
        : noOpAtScale(
            count: options.noOpFiles,
            data: options.dataDirectory,
            upgrade: upgrade,
            repeats: options.repeats
        )
    {
        print(row)
    }
}
if options.endToEnd && options.parts.contains("load") {
    print()
    print("server load on loopback (hey -n 1000 -c 1000, one request per client; release build)")
    print("| load | what | rate | latency | server peak RSS | answers |")
    print("|---|---|---:|---:|---:|---|")
    for row in serverLoad(
        UpgradePair(package: "numpy", from: "2.2.6", to: "2.3.5"),
        data: options.dataDirectory,
        upgrade: upgrade,
        clients: 1000
    ) {
        print(row)
    }
}
// The trees the end-to-end pairs moved aside, deleted once nothing is measured any more.
emptyTrash(data: options.dataDirectory)
