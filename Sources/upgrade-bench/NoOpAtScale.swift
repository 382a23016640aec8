// The cron-run cost at fleet scale: a tree of N tiny files already at the newest release,
// synced again (`upgrade sync` with nothing to do) against `rsync -az` through a daemon on the
// same, already identical, tree. Wall time and peak RSS per file.
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// `count` files of a few bytes each, 100 to a directory (cached under `root`).
func makeTinyTree(_ root: String, count: Int) {
    guard !FileManager.default.fileExists(atPath: root + "/.complete") else { return }
    shell("rm -rf \(quote(root))")
    for i in 0..<count {
        let directory = "\(root)/d\(i / 1000)/s\((i / 100) % 10)"
        if i % 100 == 0 {
            try! FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        let fd = open("\(directory)/f\(i).dat", O_CREAT | O_WRONLY | O_TRUNC, 0o644)
        let text = Array("file \(i)\n".utf8)
        _ = text.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }
    _ = FileManager.default.createFile(atPath: root + "/.complete", contents: nil)
}

/// A no-op sync, measured three ways on one tree.
struct NoOpMeasurements {
    /// The cron run: the tree sealed.
    var sealed: Measurement
    /// The seal removed first: the first run after a local change, a full scan against the cache.
    var unsealed: Measurement
    /// `rsync -az` through a daemon on the same, already identical, tree.
    var rsync: Measurement
}

/// Rows for the no-op sync of a `count`-file tree, with memory per file beyond what the same
/// runs take on a 1,000-file tree (what the tree costs, without the binary's own pages).
func noOpAtScale(count: Int, data: String, upgrade: String, repeats: Int) -> [String] {
    let label = "\(count / 1000)k tiny files, nothing changed"
    let large = measureNoOp(count: count, data: data, upgrade: upgrade, repeats: repeats)
    let smallCount = min(1000, count)
    let small =
        smallCount < count ? measureNoOp(count: smallCount, data: data, upgrade: upgrade, repeats: repeats) : nil

    func memory(_ large: Measurement, _ small: Measurement?) -> String {
        let total = String(format: "%.0f B/file", Double(large.maxRSSKiB) * 1024 / Double(count))
        guard let small else { return "\(large.maxRSSKiB) KiB (\(total))" }
        let beyond = Double(large.maxRSSKiB - small.maxRSSKiB) * 1024 / Double(count - smallCount)
        return "\(large.maxRSSKiB) KiB (\(total); \(small.maxRSSKiB) KiB at \(smallCount) files: "
            + String(format: "%.1f B/file beyond", beyond) + ")"
    }
    func wall(_ measurement: Measurement) -> String { String(format: "%.3f", measurement.seconds) }
    func ratio(_ measurement: Measurement) -> String {
        String(format: "wall %.2f× of rsync", measurement.seconds / large.rsync.seconds)
    }
    return [
        "| \(label) | upgrade sync with nothing to do (sealed: the cron run) | \(wall(large.sealed)) | — | \(memory(large.sealed, small?.sealed)) | \(ratio(large.sealed)) |",
        "| \(label) | upgrade sync with nothing to do, seal removed (full scan, stat cache) | \(wall(large.unsealed)) | — | \(memory(large.unsealed, small?.unsealed)) | \(ratio(large.unsealed)) |",
        "| \(label) | rsync -az via daemon, nothing to do (client side) | \(wall(large.rsync)) | — | \(memory(large.rsync, small?.rsync)) | — |",
    ]
}

/// The no-op sync of a `count`-file tree, sealed and not, and rsync's on the same tree.
func measureNoOp(count: Int, data: String, upgrade: String, repeats: Int) -> NoOpMeasurements {
    let tree = "\(data)/tiny-\(count)"
    let work = "\(data)/noop-\(count)"
    let repo = work + "/repo"
    let key = work + "/publisher.key"
    let root = work + "/root"
    let binary = String(upgrade.dropFirst().dropLast())
    makeTinyTree(tree, count: count)
    if !FileManager.default.fileExists(atPath: work + "/.complete") {
        shell(
            "rm -rf \(quote(work)) && mkdir -p \(quote(work)) && \(upgrade) keygen --output \(quote(key)) > /dev/null"
                + " && \(upgrade) publish --repo \(quote(repo)) --product tiny --version 1.0 --key \(quote(key)) \(quote(tree)) > /dev/null"
        )
        _ = FileManager.default.createFile(atPath: work + "/.complete", contents: nil)
    }
    let (server, url) = startServer(binary, repo: repo)
    let sync =
        "\(upgrade) sync --server \(url) --product tiny --root \(quote(root)) --trust \(quote(key)).pub > /dev/null"
    if !FileManager.default.fileExists(atPath: root + "/.upgrade") {
        shell(sync)
    }
    // The first no-op after the install writes the stat cache and, once the files are older
    // than the racy window, the tree's seal; the measured ones are cron runs. The unsealed row
    // removes the seal first: the first run after a local change, a full scan against the cache.
    shell(sync)
    sleep(1)
    shell(sync)
    let unsealed = measure("rm -f \(quote(root))/.upgrade/state/*/seal && " + sync, repeats: repeats)
    let noop = measure(sync, repeats: repeats)
    server.terminate()
    server.waitUntilExit()

    let port = 20_000 + Int((getpid() + 7) % 20_000)
    let daemon = startRsyncDaemon(work: work, module: "tree", path: tree, port: port)
    let destination = work + "/rsync-dest"
    let rsync = "rsync -az --delete rsync://127.0.0.1:\(port)/tree/ \(quote(destination))/"
    if !FileManager.default.fileExists(atPath: destination + "/.complete") { shell(rsync) }
    let rsyncNoop = measure(rsync, repeats: repeats)
    daemon.terminate()
    daemon.waitUntilExit()

    return NoOpMeasurements(sealed: noop, unsealed: unsealed, rsync: rsyncNoop)
}
