// The end-to-end rows of `make bench`: real upgrade pairs from PyPI wheels. `upgrade sync` over
// loopback against `rsync -az` through an rsync daemon on 127.0.0.1 and against the per-file
// `zstd -19 --patch-from` floor, on the same trees in the same run.
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A package upgrade to measure.
struct UpgradePair {
    var package: String
    var from: String
    var to: String
}

/// Downloads (once, cached under `data/wheels`) and unpacks a wheel; returns the tree.
func wheelTree(_ package: String, _ version: String, data: String) -> String {
    let tree = "\(data)/trees/\(package)-\(version)"
    if FileManager.default.fileExists(atPath: tree + "/.complete") { return tree }
    let wheels = "\(data)/wheels"
    shell(
        "mkdir -p \(quote(wheels)) && (ls \(quote(wheels))/\(package)-\(version)-*.whl >/dev/null 2>&1 || "
            + "python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 "
            + "--platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \(package)==\(version) -d \(quote(wheels)))"
    )
    shell(
        "rm -rf \(quote(tree)) && mkdir -p \(quote(tree)) && python3 -m zipfile -e \(quote(wheels))/\(package)-\(version)-*.whl \(quote(tree))"
    )
    _ = FileManager.default.createFile(atPath: tree + "/.complete", contents: nil)
    return tree
}

/// Starts `upgrade serve` on a free loopback port; returns the process and its URL.
func startServer(_ binary: String, repo: String, extra: [String] = []) -> (Process, String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: binary)
    process.arguments = ["serve", "--repo", repo, "--listen", "127.0.0.1:0", "--log-level", "error"] + extra
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = FileHandle.nullDevice
    try! process.run()
    var line = Data()
    while !line.contains(0x0a) {
        let chunk = pipe.fileHandleForReading.availableData
        if chunk.isEmpty { break }
        line.append(chunk)
    }
    let text = String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    return (process, String(text.split(separator: " ").last ?? ""))
}

/// User + system CPU seconds a process has used (from /proc/PID/stat).
func processCPUSeconds(_ pid: Int32) -> Double {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
        let close = stat.lastIndex(of: ")")
    else { return 0 }
    let fields = stat[stat.index(after: close)...].split(separator: " ")
    // Fields after the command name start with the state; utime and stime are the 12th and 13th.
    guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
    return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

/// The generated pair: the 100,000-file tree of the scan rows, and a copy with 1% of the files
/// edited in place (a few bytes), 0.5% added and 0.5% deleted, from a fixed seed.
func makeChangedSmallTree(_ old: String, _ new: String) {
    guard !FileManager.default.fileExists(atPath: new + "/.complete") else { return }
    shell("rm -rf \(quote(new)) && cp -a \(quote(old)) \(quote(new)) && rm -f \(quote(new))/.complete")
    var seed: UInt64 = 0x5eed_0013
    func next() -> UInt64 {
        seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        return seed >> 33
    }
    let count = 100_000
    var buffer = [UInt8](repeating: 0, count: 4096)
    for i in 0..<count {
        let path = "\(new)/d\(i / 1000)/s\((i / 100) % 10)/f\(i).dat"
        switch next() % 1000 {
        case 0..<10:  // edited: 16 bytes overwritten at a random offset
            let fd = open(path, O_WRONLY)
            var patch = [UInt8](repeating: 0, count: 16)
            for j in 0..<16 { patch[j] = UInt8(truncatingIfNeeded: next()) }
            _ = patch.withUnsafeBytes { pwrite(fd, $0.baseAddress, 16, off_t(next() % 1000)) }
            close(fd)
        case 10..<15:  // deleted
            unlink(path)
        case 15..<20:  // a new file beside it
            fill(&buffer, seed: &seed)
            let fd = open(path + ".new", O_CREAT | O_WRONLY | O_TRUNC, 0o644)
            _ = buffer.withUnsafeBytes { write(fd, $0.baseAddress, 1024 + Int(next() % 3072)) }
            close(fd)
        default: break
        }
    }
    _ = FileManager.default.createFile(atPath: new + "/.complete", contents: nil)
}

/// Measures one upgrade pair of wheels; returns table rows.
func endToEnd(_ pair: UpgradePair, data: String, upgrade: String, repeats: Int) -> [String] {
    endToEnd(
        pair,
        old: wheelTree(pair.package, pair.from, data: data),
        new: wheelTree(pair.package, pair.to, data: data),
        data: data,
        upgrade: upgrade,
        repeats: repeats
    )
}

/// Measures one upgrade pair of trees; returns table rows.
func endToEnd(_ pair: UpgradePair, old: String, new: String, data: String, upgrade: String, repeats: Int) -> [String] {
    let work = "\(data)/e2e-deltas-\(pair.package)-\(pair.from)-\(pair.to)"
    let repo = work + "/repo"
    let key = work + "/publisher.key"
    let binary = String(upgrade.dropFirst().dropLast())

    // Publishing at level 19 (with deltas from the previous release) takes a while; the
    // repository and the publish times of the first run are cached.
    if !FileManager.default.fileExists(atPath: work + "/.complete") {
        shell(
            "rm -rf \(quote(work)) && mkdir -p \(quote(work)) && \(upgrade) keygen --output \(quote(key)) > /dev/null"
        )
        var times = [String]()
        for (version, tree) in [(pair.from, old), (pair.to, new)] {
            let run = measure(
                "\(upgrade) publish --repo \(quote(repo)) --product \(pair.package) --version \(version) --key \(quote(key)) \(quote(tree)) > /dev/null",
                repeats: 1
            )
            times.append(String(format: "%.1f", run.seconds))
        }
        try? times.joined(separator: " / ").write(toFile: work + "/publish-seconds", atomically: true, encoding: .utf8)
        shell(
            "\(upgrade) bundle --repo \(quote(repo)) --product \(pair.package) --to \(pair.from) --no-deltas --output \(quote(work))/from.bundle > /dev/null"
        )
        _ = FileManager.default.createFile(atPath: work + "/.complete", contents: nil)
    }
    let publishTimes = (try? String(contentsOfFile: work + "/publish-seconds", encoding: .utf8)) ?? "?"
    let report = work + "/sync.json"
    let stats = work + "/rsync.stats"
    // Each run starts from trees of its own, and no tree is deleted while anything is measured:
    // on this machine's ext4 (no journal), a file created within 60-300 s of a mass delete in
    // the same block group walks the freed inodes first (`recently_deleted`, up to 0.4 s of
    // system time on the numpy pair), which would charge a `rm -rf` to whichever runs next.
    // Trees of earlier pairs and runs are moved aside (`discardTrees`) and deleted at the end;
    // and the two tools' runs alternate, so whatever the file system's state, both see it.
    discardTrees(work: work, data: data)
    var trees = 0
    var root = ""
    func installOld() {
        trees += 1
        root = work + "/root-\(trees)"
        shell(
            "\(upgrade) apply --root \(quote(root)) --trust \(quote(key)).pub \(quote(work))/from.bundle > /dev/null && sync"
        )
    }

    // upgrade sync with the deltas publish precomputed, and rsync -az through a daemon on
    // loopback: each run's root and destination start at the old release.
    var (server, url) = startServer(binary, repo: repo)
    let port = 20_000 + Int(getpid() % 20_000)
    let daemon = startRsyncDaemon(work: work, module: "new", path: new, port: port)
    var syncBest = Measurement(seconds: .infinity, maxRSSKiB: 0)
    var syncBytes: UInt64 = 0
    var syncUp: UInt64 = 0
    var deltasUsed = 0
    var rsyncBest = Measurement(seconds: .infinity, maxRSSKiB: 0)
    var rsyncBytes: UInt64 = 0
    var rsyncUp: UInt64 = 0
    func runSync() {
        let run = measure(
            "\(upgrade) sync --server \(url) --product \(pair.package) --root \(quote(root)) --trust \(quote(key)).pub --json > \(quote(report))",
            repeats: 1
        )
        let json =
            (try? JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: report)))) as? [String: Any]
        if run.seconds < syncBest.seconds {
            syncBest = run
            syncBytes = (json?["bytesReceived"] as? NSNumber)?.uint64Value ?? 0
            syncUp = (json?["requestBytes"] as? NSNumber)?.uint64Value ?? 0
            deltasUsed = (json?["deltasUsed"] as? NSNumber)?.intValue ?? 0
        }
    }
    func runRsync(into destination: String) {
        let run = measure(
            "rsync -az --delete --stats --exclude .complete rsync://127.0.0.1:\(port)/new/ \(quote(destination))/ > \(quote(stats))",
            repeats: 1
        )
        let text = (try? String(contentsOfFile: stats, encoding: .utf8)) ?? ""
        let received =
            text.split(separator: "\n").first { $0.hasPrefix("Total bytes received:") }.map { $0.filter(\.isNumber) }
            .flatMap { UInt64($0) } ?? 0
        let sent =
            text.split(separator: "\n").first { $0.hasPrefix("Total bytes sent:") }.map { $0.filter(\.isNumber) }
            .flatMap { UInt64($0) } ?? 0
        if run.seconds < rsyncBest.seconds {
            rsyncBest = run
            rsyncBytes = received
            rsyncUp = sent
        }
    }
    for run in 0..<repeats {
        installOld()
        let destination = work + "/rsync-dest-\(run)"
        shell("cp -a \(quote(old)) \(quote(destination)) && rm -f \(quote(destination))/.complete && sync")
        if run % 2 == 0 {
            runSync()
            runRsync(into: destination)
        } else {
            runRsync(into: destination)
            runSync()
        }
    }
    daemon.terminate()
    daemon.waitUntilExit()
    // A no-op sync: the root already holds the new release (what every cron run costs).
    let noop = measure(
        "\(upgrade) sync --server \(url) --product \(pair.package) --root \(quote(root)) --trust \(quote(key)).pub > /dev/null",
        repeats: repeats
    )
    server.terminate()
    server.waitUntilExit()

    // Deltas on demand: no cached deltas; the server's CPU time for that one plan.
    shell("rm -rf \(quote(work))/deltas.saved && mv \(quote(repo))/deltas \(quote(work))/deltas.saved")
    (server, url) = startServer(binary, repo: repo)
    installOld()
    let cpuBefore = processCPUSeconds(server.processIdentifier)
    let onDemand = measure(
        "\(upgrade) sync --server \(url) --product \(pair.package) --root \(quote(root)) --trust \(quote(key)).pub > /dev/null",
        repeats: 1
    )
    let serverCPU = processCPUSeconds(server.processIdentifier) - cpuBefore
    server.terminate()
    server.waitUntilExit()
    shell("rm -rf \(quote(repo))/deltas && mv \(quote(work))/deltas.saved \(quote(repo))/deltas")
    discardTrees(work: work, data: data)

    // The practical floor: per-file `zstd -19 --patch-from` (same path) or `zstd -19` (new files).
    let floorFile = work + "/floor-bytes"
    let cachedFloor =
        (try? String(contentsOfFile: floorFile, encoding: .utf8)).flatMap {
            UInt64($0.trimmingCharacters(in: .whitespacesAndNewlines))
        } ?? 0
    if cachedFloor == 0 {
        // bash: `read -d ''` splits the NUL-separated names (dash has no -d).
        shell(
            "bash -c "
                + quote(
                    "cd \(quote(new)) && find . -type f ! -name .complete -print0 | while IFS= read -r -d '' f; do "
                        + "if [ -f \(quote(old))/\"$f\" ]; then cmp -s \(quote(old))/\"$f\" \"$f\" && continue; "
                        + "zstd -q -19 --single-thread --patch-from=\(quote(old))/\"$f\" -c \"$f\" 2>/dev/null | wc -c; "
                        + "else zstd -q -19 --single-thread -c \"$f\" 2>/dev/null | wc -c; fi; done | awk '{s+=$1} END {print s+0}' > \(quote(floorFile))"
                )
        )
    }
    let floorBytes =
        UInt64(
            ((try? String(contentsOfFile: floorFile, encoding: .utf8)) ?? "0").trimmingCharacters(
                in: .whitespacesAndNewlines
            )
        ) ?? 0

    let label = "\(pair.package) \(pair.from) → \(pair.to)"
    func mib(_ bytes: UInt64) -> String { String(format: "%.2f MiB", Double(bytes) / 1_048_576) }
    func ratio(_ a: UInt64, _ b: UInt64) -> String { String(format: "%.2f×", Double(a) / Double(max(1, b))) }
    return [
        "| \(label) | upgrade sync (precomputed deltas; \(deltasUsed) files as deltas) | \(String(format: "%.3f", syncBest.seconds)) | \(mib(syncBytes)) + \(mib(syncUp)) up | \(syncBest.maxRSSKiB) KiB | \(ratio(syncBytes + syncUp, rsyncBytes + rsyncUp)) of rsync down+up, \(ratio(syncBytes, floorBytes)) of the floor; wall \(ratio(UInt64(syncBest.seconds * 1000), UInt64(rsyncBest.seconds * 1000))) of rsync |",
        "| \(label) | rsync -az via daemon (zstd) | \(String(format: "%.3f", rsyncBest.seconds)) | \(mib(rsyncBytes)) + \(mib(rsyncUp)) up | \(rsyncBest.maxRSSKiB) KiB | — |",
        "| \(label) | upgrade sync with nothing to do | \(String(format: "%.3f", noop.seconds)) | — | \(noop.maxRSSKiB) KiB | — |",
        "| \(label) | per-file zstd -19 --patch-from (floor) | — | \(mib(floorBytes)) | — | \(ratio(floorBytes, rsyncBytes)) of rsync |",
        "| \(label) | upgrade sync, deltas computed on demand | \(String(format: "%.3f", onDemand.seconds)) | — | — | server CPU \(String(format: "%.2f", serverCPU)) s for the plan |",
        "| \(label) | upgrade publish old / new (level 19, deltas from the previous release) | \(publishTimes) s | — | — | — |",
    ]
}

/// Moves a pair's trees (`root-*`, `rsync-dest-*` under `work`) into `data/trash`, a rename on
/// the same file system; ``emptyTrash(data:)`` deletes them once nothing is measured any more.
func discardTrees(work: String, data: String) {
    shell(
        "mkdir -p \(quote(data))/trash && for tree in \(quote(work))/root-* \(quote(work))/rsync-dest-*; do "
            + "[ -e \"$tree\" ] && mv \"$tree\" \"$(mktemp -u -p \(quote(data))/trash)\"; done; true"
    )
}

/// Deletes what ``discardTrees(work:data:)`` moved aside.
func emptyTrash(data: String) {
    shell("rm -rf \(quote(data))/trash")
}

/// `rsync --daemon` on 127.0.0.1:`port` serving `path` read-only as `module` (config and pid
/// file in `work`); the caller terminates it.
func startRsyncDaemon(work: String, module: String, path: String, port: Int) -> Process {
    let config = work + "/rsyncd.conf"
    try! "use chroot = no\npid file = \(work)/rsyncd.pid\n[\(module)]\npath = \(path)\nread only = yes\n".write(
        toFile: config,
        atomically: true,
        encoding: .utf8
    )
    let daemon = Process()
    daemon.executableURL = URL(fileURLWithPath: "/usr/bin/rsync")
    daemon.arguments = [
        "--daemon", "--no-detach", "--config", config, "--address", "127.0.0.1", "--port", String(port),
    ]
    try! daemon.run()
    usleep(300_000)
    return daemon
}
