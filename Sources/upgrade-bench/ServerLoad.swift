// The load rows of `make bench`: 1,000 concurrent plan requests (`hey -c 1000`) against the
// release `upgrade serve` on loopback, beside nginx serving a static file of the same
// repository under the same load.
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// What `hey` printed, reduced to the figures the table shows.
struct LoadResult {
    var requestsPerSecond = 0.0
    var p50 = 0.0
    var p99 = 0.0
    var statuses = [String]()
    var errors = [String]()
    var resets = 0

    init(_ text: String) {
        var inErrors = false
        for raw in text.split(separator: "\n") {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("Requests/sec:") {
                requestsPerSecond = Double(line.split(separator: "\t").last ?? "") ?? 0
            }
            if line.hasPrefix("50% in") { p50 = Double(line.split(separator: " ")[2]) ?? 0 }
            if line.hasPrefix("99% in") { p99 = Double(line.split(separator: " ")[2]) ?? 0 }
            if line.hasPrefix("[") && line.contains("responses") {
                statuses.append(line.replacingOccurrences(of: "\t", with: " "))
            }
            if line.hasPrefix("Error distribution") {
                inErrors = true
            } else if inErrors && line.hasPrefix("[") {
                errors.append(line)
                if line.contains("reset") {
                    resets += Int(line.dropFirst().prefix { $0 != "]" }) ?? 0
                }
            }
        }
    }
}

/// Runs `hey` with `arguments`; nil when hey is missing.
func hey(_ arguments: [String]) -> LoadResult? {
    guard FileManager.default.isExecutableFile(atPath: "/usr/bin/hey") else { return nil }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/hey")
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = FileHandle.nullDevice
    try! process.run()
    let output = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return LoadResult(String(decoding: output, as: UTF8.self))
}

/// Peak resident memory of a process (VmHWM) in KiB.
func peakKiB(_ pid: Int32) -> Int {
    let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
    let line = status.split(separator: "\n").first { $0.hasPrefix("VmHWM:") } ?? ""
    return Int(line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first ?? "") ?? 0
}

/// Table rows for the load of `clients` concurrent plan requests against the repository of
/// `pair` (made by ``endToEnd``): a routine request from the old release with no local changes.
func serverLoad(_ pair: UpgradePair, data: String, upgrade: String, clients: Int) -> [String] {
    let work = "\(data)/e2e-deltas-\(pair.package)-\(pair.from)-\(pair.to)"
    let repo = work + "/repo"
    guard FileManager.default.fileExists(atPath: repo + "/releases/\(pair.package)/\(pair.from)/manifest") else {
        return ["| load | (no repository for \(pair.package); run the end-to-end rows first) | — | — | — | — |"]
    }
    guard FileManager.default.isExecutableFile(atPath: "/usr/bin/hey") else {
        return ["| load | (hey is missing; run `make deps`) | — | — | — | — |"]
    }
    let digestFile = work + "/base.sha256"
    shell("sha256sum \(quote(repo))/releases/\(pair.package)/\(pair.from)/manifest | cut -c1-64 > \(quote(digestFile))")
    let digest = ((try? String(contentsOfFile: digestFile, encoding: .utf8)) ?? "").trimmingCharacters(
        in: .whitespacesAndNewlines
    )
    let body = work + "/load-plan.json"
    try! """
    {"product":"\(pair.package)","channel":"stable","device":{"os":"linux","arch":"x86_64","id":"bench"},\
    "installed":{"version":"\(pair.from)","sequence":1,"manifestSHA256":"\(digest)"},\
    "delta":{"base":"\(digest)","changed":[],"removed":[]}}
    """.write(toFile: body, atomically: true, encoding: .utf8)

    func row(_ what: String, _ result: LoadResult, peak: Int?) -> String {
        let errors = result.errors.isEmpty ? "0 errors" : result.errors.joined(separator: "; ")
        return
            "| load | \(what) | \(String(format: "%.0f", result.requestsPerSecond)) req/s | p50 \(String(format: "%.3f", result.p50)) s, p99 \(String(format: "%.3f", result.p99)) s | \(peak.map { "\($0) KiB" } ?? "—") | \(result.statuses.joined(separator: ", ")); \(result.resets) resets; \(errors) |"
    }
    let binary = String(upgrade.dropFirst().dropLast())
    let (server, url) = startServer(binary, repo: repo)
    _ = hey(["-n", "50", "-c", "10", "-m", "POST", "-T", "application/json", "-D", body, url + "/v1/plan"])
    let plans = hey([
        "-n", String(clients), "-c", String(clients), "-t", "60", "-m", "POST", "-T", "application/json", "-D", body,
        url + "/v1/plan",
    ])!
    let serverPeak = peakKiB(server.processIdentifier)
    let files = hey([
        "-n", String(clients), "-c", String(clients), "-t", "60", url + "/channels/\(pair.package)/stable",
    ])!
    server.terminate()
    server.waitUntilExit()

    // The fleet store's cost: the same plan request at a steady 20 in flight, with the store on
    // (each plan records a contact in SQLite) and off.
    var storeRows = [String]()
    for (what, extra) in [
        ("fleet store on (SQLite)", ["--database", work + "/load-fleet.sqlite"]),
        ("fleet store off", ["--database", "none"]),
    ] {
        try? FileManager.default.removeItem(atPath: work + "/load-fleet.sqlite")
        let (server, url) = startServer(binary, repo: repo, extra: extra)
        _ = hey(["-n", "200", "-c", "20", "-m", "POST", "-T", "application/json", "-D", body, url + "/v1/plan"])
        let result = hey([
            "-n", "4000", "-c", "20", "-t", "60", "-m", "POST", "-T", "application/json", "-D", body, url + "/v1/plan",
        ])!
        storeRows.append(
            row("upgrade serve, 20 concurrent POST /v1/plan, \(what)", result, peak: peakKiB(server.processIdentifier))
        )
        server.terminate()
        server.waitUntilExit()
    }

    // nginx serving the same repository directory: the static-file reference.
    var nginxRow = "| load | nginx, GET the channel file (static reference) | — | — | — | nginx missing |"
    if FileManager.default.isExecutableFile(atPath: "/usr/sbin/nginx") {
        let port = 21_000 + Int(getpid() % 20_000)
        let directory = work + "/nginx"
        shell("mkdir -p \(quote(directory))/tmp")
        try! """
        daemon off; user root; worker_processes 2; pid \(directory)/nginx.pid; error_log \(directory)/error.log;
        events { worker_connections 4096; }
        http { access_log off; client_body_temp_path \(directory)/tmp; proxy_temp_path \(directory)/tmp;
          fastcgi_temp_path \(directory)/tmp; uwsgi_temp_path \(directory)/tmp; scgi_temp_path \(directory)/tmp;
          server { listen 127.0.0.1:\(port) backlog=4096; root \(repo); location / { } } }
        """.write(toFile: directory + "/nginx.conf", atomically: true, encoding: .utf8)
        let nginx = Process()
        nginx.executableURL = URL(fileURLWithPath: "/usr/sbin/nginx")
        nginx.arguments = ["-c", directory + "/nginx.conf", "-p", directory]
        nginx.standardError = FileHandle.nullDevice
        try! nginx.run()
        usleep(500_000)
        let result = hey([
            "-n", String(clients), "-c", String(clients), "-t", "60",
            "http://127.0.0.1:\(port)/channels/\(pair.package)/stable",
        ])!
        nginx.terminate()
        nginx.waitUntilExit()
        nginxRow = row("nginx, GET the channel file (static reference)", result, peak: nil)
    }

    return [
        row(
            "upgrade serve, \(clients) concurrent POST /v1/plan (\(pair.package) \(pair.from), no local changes)",
            plans,
            peak: serverPeak
        ),
        row("upgrade serve, \(clients) concurrent GET of the channel file", files, peak: serverPeak),
        nginxRow,
    ] + storeRows
}
