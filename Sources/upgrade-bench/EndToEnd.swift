// The end-to-end rows of `make bench`: a real upgrade pair from PyPI wheels, `upgrade sync` over
// loopback against `rsync -az` through an rsync daemon on 127.0.0.1, same trees, same run.
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

/// Starts a background process and returns it with the first line it prints.
func startWithFirstLine(_ executable: String, _ arguments: [String]) -> (Process, String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
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
    return (process, String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
}

/// Measures one upgrade pair; returns table rows.
func endToEnd(_ pair: UpgradePair, data: String, upgrade: String, repeats: Int) -> [String] {
    let old = wheelTree(pair.package, pair.from, data: data)
    let new = wheelTree(pair.package, pair.to, data: data)
    let work = "\(data)/e2e-\(pair.package)-\(pair.from)-\(pair.to)"
    let repo = work + "/repo"
    let key = work + "/publisher.key"
    // Publishing at level 19 takes a while; the repository is cached between runs.
    if !FileManager.default.fileExists(atPath: work + "/.complete") {
        shell(
            "rm -rf \(quote(work)) && mkdir -p \(quote(work)) && \(upgrade) keygen --output \(quote(key)) > /dev/null"
        )
        for (version, tree) in [(pair.from, old), (pair.to, new)] {
            shell(
                "\(upgrade) publish --repo \(quote(repo)) --product \(pair.package) --version \(version) --key \(quote(key)) \(quote(tree)) > /dev/null"
            )
        }
        shell(
            "\(upgrade) bundle --repo \(quote(repo)) --product \(pair.package) --to \(pair.from) --output \(quote(work))/from.bundle > /dev/null"
        )
        _ = FileManager.default.createFile(atPath: work + "/.complete", contents: nil)
    }
    let binary = String(upgrade.dropFirst().dropLast())
    let (server, line) = startWithFirstLine(
        binary,
        ["serve", "--repo", repo, "--listen", "127.0.0.1:0", "--log-level", "error"]
    )
    defer {
        server.terminate()
        server.waitUntilExit()
    }
    let url = String(line.split(separator: " ").last ?? "")
    let root = work + "/root"
    let report = work + "/sync.json"

    // upgrade sync: the root starts as an installed copy of the old release, every run.
    var syncBest = Measurement(seconds: .infinity, maxRSSKiB: 0)
    var syncBytes: UInt64 = 0
    for _ in 0..<repeats {
        shell(
            "rm -rf \(quote(root)) && \(upgrade) apply --root \(quote(root)) --trust \(quote(key)).pub \(quote(work))/from.bundle > /dev/null"
        )
        let run = measure(
            "\(upgrade) sync --server \(url) --product \(pair.package) --root \(quote(root)) --trust \(quote(key)).pub --json > \(quote(report))",
            repeats: 1
        )
        let json =
            (try? JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: report)))) as? [String: Any]
        if run.seconds < syncBest.seconds {
            syncBest = run
            syncBytes = (json?["bytesReceived"] as? NSNumber)?.uint64Value ?? 0
        }
    }

    // rsync -az through a daemon on loopback: destination starts as a copy of the old tree.
    let port = 20_000 + Int(getpid() % 20_000)
    let config = work + "/rsyncd.conf"
    try! "use chroot = no\npid file = \(work)/rsyncd.pid\n[new]\npath = \(new)\nread only = yes\n".write(
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
    defer {
        daemon.terminate()
        daemon.waitUntilExit()
    }
    usleep(300_000)
    let destination = work + "/rsync-dest"
    let stats = work + "/rsync.stats"
    var rsyncBest = Measurement(seconds: .infinity, maxRSSKiB: 0)
    var rsyncBytes: UInt64 = 0
    for _ in 0..<repeats {
        shell(
            "rm -rf \(quote(destination)) && cp -a \(quote(old)) \(quote(destination)) && rm -f \(quote(destination))/.complete"
        )
        let run = measure(
            "rsync -az --delete --stats --exclude .complete rsync://127.0.0.1:\(port)/new/ \(quote(destination))/ > \(quote(stats))",
            repeats: 1
        )
        let text = (try? String(contentsOfFile: stats, encoding: .utf8)) ?? ""
        let received =
            text.split(separator: "\n").first { $0.hasPrefix("Total bytes received:") }
            .map { $0.filter(\.isNumber) }.flatMap { UInt64($0) } ?? 0
        if run.seconds < rsyncBest.seconds {
            rsyncBest = run
            rsyncBytes = received
        }
    }
    let label = "\(pair.package) \(pair.from) → \(pair.to)"
    func mib(_ bytes: UInt64) -> String { String(format: "%.2f MiB", Double(bytes) / 1_048_576) }
    return [
        "| \(label) | upgrade sync (loopback) | \(String(format: "%.3f", syncBest.seconds)) | \(mib(syncBytes)) | \(syncBest.maxRSSKiB) KiB | — |",
        "| \(label) | rsync -az via daemon (zstd) | \(String(format: "%.3f", rsyncBest.seconds)) | \(mib(rsyncBytes)) | \(rsyncBest.maxRSSKiB) KiB | \(String(format: "%.2f×", Double(syncBytes) / Double(max(1, rsyncBytes)))) |",
    ]
}
