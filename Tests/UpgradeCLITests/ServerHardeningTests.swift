import Foundation
import Testing
import UpgradeCore
import UpgradeProtocol
import UpgradeTestSupport
import UpgradeZstd

#if canImport(Glibc)
import Glibc
#endif

/// A TCP connection to 127.0.0.1 with blocking sends and a receive that reports whether the
/// server has closed it.
struct RawConnection {
    let descriptor: Int32

    init(port: Int) throws {
        descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0 else {
            Glibc.close(descriptor)
            throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .ECONNREFUSED)
        }
    }

    /// Sends `text`; false once the server has closed the connection.
    @discardableResult
    func send(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        return bytes.withUnsafeBytes { Glibc.send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            == bytes.count
    }

    /// True when the server closed the connection (EOF or reset) within `seconds`.
    func closedByServer(within seconds: Double) -> Bool {
        var poller = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        guard poll(&poller, 1, Int32(seconds * 1000)) == 1 else { return false }
        var byte = [UInt8](repeating: 0, count: 4096)
        while true {
            let got = recv(descriptor, &byte, byte.count, Int32(MSG_DONTWAIT))
            if got == 0 { return true }
            if got < 0 { return errno != EAGAIN }
        }
    }

    /// Everything the server sends until it closes (or `seconds` pass).
    func readAll(seconds: Double) -> String {
        var received = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 4096)
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            var poller = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, 200) == 1 else { continue }
            let got = recv(descriptor, &buffer, buffer.count, 0)
            if got <= 0 { break }
            received += buffer[0..<got]
        }
        return String(decoding: received, as: UTF8.self)
    }

    func close() { Glibc.close(descriptor) }
}

/// Peak resident memory of a process in kB (VmHWM).
func peakRSS(_ pid: Int32) -> Int {
    let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
    let line = status.split(separator: "\n").first { $0.hasPrefix("VmHWM:") } ?? ""
    return Int(line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first ?? "") ?? 0
}

/// The routine plan request of a client at `app` 1.0 with no local changes (a delta against
/// the installed release), JSON.
func routinePlanRequest(repo: String, device: String) throws -> Data {
    let base = try Manifest(
        canonical: [UInt8](try Data(contentsOf: URL(fileURLWithPath: repo + "/releases/app/1.0/manifest")))
    )
    var request = PlanRequest(
        product: "app",
        channel: "stable",
        installed: .init(version: "1.0", sequence: 1, manifestSHA256: base.digest.hex),
        device: .init(os: "linux", arch: "x86_64", id: device)
    )
    request.delta = ManifestDelta(from: base, to: base)
    return try JSONEncoder().encode(request)
}

/// The port of a `http://127.0.0.1:PORT` URL.
func port(of url: String) -> Int { Int(url.split(separator: ":").last ?? "") ?? 0 }

/// A hostile or broken client costs the server bounded memory, time and disk.
@Suite("Hardening: hostile clients against upgrade serve", .serialized)
struct ServerHardeningTests {
    static func curl(_ arguments: [String]) throws -> (status: Int, body: String, headers: String) {
        let result = try runProgram(
            "/usr/bin/curl",
            ["-s", "-D", "/dev/stderr", "-o", "/dev/stdout", "-w", "\n%{http_code}"] + arguments
        )
        let lines = result.text.split(separator: "\n", omittingEmptySubsequences: false)
        return (Int(lines.last ?? "") ?? 0, lines.dropLast().joined(separator: "\n"), result.stderr)
    }

    @Test("a 16 KB zstd body that expands to 256 MiB is refused with 413, three at once cost the server little memory")
    func compressionBomb() async throws {
        let sync = try SyncFixture(releases: 1)
        let server = try ServerProcess(repo: sync.repo)
        let bomb = sync.fixture.work.path("bomb.zst")
        let made = try runProgram(
            "/bin/sh",
            ["-c", "head -c 268435456 /dev/zero | tr '\\0' ' ' | zstd -19 -q -c > \(bomb)"]
        )
        try #require(made.status == 0, "\(made.stderr)")
        let size = try FileManager.default.attributesOfItem(atPath: bomb)[.size] as? Int ?? 0
        #expect(size < 32 << 10, "the bomb is \(size) bytes")
        let before = peakRSS(server.pid)
        let url = server.url
        let statuses = try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<3 {
                group.addTask {
                    try Self.curl([
                        "-X", "POST", "-H", "Content-Encoding: zstd", "-H", "Content-Type: application/json",
                        "--data-binary", "@" + bomb, url + "/v1/plan",
                    ]).status
                }
            }
            return try await group.reduce(into: [Int]()) { $0.append($1) }
        }
        #expect(statuses == [413, 413, 413])
        let after = peakRSS(server.pid)
        print("compression bomb: 3 x \(size) B bodies; server peak RSS \(before) kB before, \(after) kB after")
        // Before the bound, each bomb was decoded to 256 MiB (and then parsed): over 1 GiB.
        #expect(after < before + 64 * 1024, "server peak grew from \(before) kB to \(after) kB")
    }

    @Test("requests describing more entries than --max-entries are refused with 413 before they are decoded")
    func entryBound() throws {
        let sync = try SyncFixture(releases: 1)
        let server = try ServerProcess(repo: sync.repo, extra: ["--max-entries", "1000"])
        // A delta request with 5,000 changed entries.
        let entry = #"{"path":"f","kind":"file","mode":420,"size":1,"xxh128":"00000000000000000000000000000000"}"#
        let changed = Array(repeating: entry, count: 5000).joined(separator: ",")
        let delta = """
            {"product":"app","channel":"stable","device":{"os":"linux","arch":"x86_64","id":"d"},\
            "installed":{"version":"1.0","sequence":1,"manifestSHA256":"00"},\
            "delta":{"base":"00","changed":[\(changed)],"removed":[]}}
            """
        let file = sync.fixture.work.path("delta.json")
        try delta.write(toFile: file, atomically: true, encoding: .utf8)
        let refused = try Self.curl(["-X", "POST", "--data-binary", "@" + file, server.url + "/v1/plan"])
        #expect(refused.status == 413 && refused.body.contains("more than 1000 entries"), "\(refused)")

        // A whole manifest that declares 5,000,000 entries (the default bound is 2,000,000).
        let defaults = try ServerProcess(repo: sync.repo)
        var lying = Manifest.canonicalMagic
        for shift in stride(from: 56, through: 0, by: -8) {
            lying.append(UInt8((5_000_000 as UInt64) >> UInt64(shift) & 0xff))
        }
        lying += [UInt8](repeating: 0, count: 64)
        let whole = """
            {"product":"app","channel":"stable","device":{"os":"linux","arch":"x86_64","id":"d"},\
            "manifest":"\(Data(lying).base64EncodedString())"}
            """
        let declared = try Self.curl(["-X", "POST", "-d", whole, defaults.url + "/v1/plan"])
        #expect(declared.status == 413 && declared.body.contains("5000000 entries"), "\(declared)")
    }

    @Test("with every plan slot and queue place taken, a plan request gets 503 with Retry-After; then 200 again")
    func planQueueFull() throws {
        let sync = try SyncFixture(releases: 1)
        let server = try ServerProcess(repo: sync.repo, extra: ["--plan-concurrency", "1", "--plan-queue", "0"])
        // Holds the only slot: a head and part of its body, the rest never sent.
        let holder = try RawConnection(port: port(of: server.url))
        defer { holder.close() }
        holder.send(
            "POST /v1/plan HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"pro"
        )
        usleep(300_000)
        let body =
            #"{"product":"app","channel":"stable","device":{"os":"linux","arch":"x86_64","id":"d"},"manifest":""}"#
        let busy = try Self.curl(["-X", "POST", "-d", body, server.url + "/v1/plan"])
        #expect(busy.status == 503, "\(busy)")
        #expect(busy.headers.lowercased().contains("retry-after: 2"), "\(busy.headers)")
        #expect(busy.body.contains("too many plan requests"), "\(busy.body)")
        holder.close()
        usleep(300_000)
        let served = try Self.curl(["-X", "POST", "-d", body, server.url + "/v1/plan"])
        #expect(served.status == 400 || served.status == 200, "\(served)")
        #expect(served.status != 503)
    }

    @Test("300 slow-header connections are closed after --idle-timeout while the server keeps answering")
    func slowloris() throws {
        let sync = try SyncFixture(releases: 1)
        let server = try ServerProcess(repo: sync.repo, extra: ["--idle-timeout", "1"])
        var connections = [RawConnection]()
        defer { for connection in connections { connection.close() } }
        for _ in 0..<300 {
            let connection = try RawConnection(port: port(of: server.url))
            connection.send("GET /healthz HTTP/1.1\r\nHost: x\r\n")
            connections.append(connection)
        }
        // A header line every 0.25 s: activity on the socket, but never a complete head.
        for round in 0..<10 {
            for connection in connections { connection.send("X-Slow-\(round): y\r\n") }
            usleep(250_000)
        }
        let closed = connections.filter { $0.closedByServer(within: 2) }.count
        print("slowloris: \(closed) of 300 slow-header connections closed by the server")
        #expect(closed == 300)
        let health = try Self.curl([server.url + "/healthz"])
        #expect(health.status == 200)
    }

    @Test("on-demand deltas: bases only from published contents, at most --deltas-per-request per plan")
    func deltaBudget() async throws {
        let sync = try SyncFixture(releases: 1)
        let root = sync.fixture.work.path("root")
        let first = try ServerProcess(repo: sync.repo)
        #expect(try sync.sync(first, root: root).status == 0)
        // 2.0 published without precomputed deltas: the server computes them on demand.
        try sync.fixture.publish("2.0", sync.trees[1].root, extra: ["--deltas", "0"])
        let deltas = sync.repo + "/deltas"
        func deltaFiles() -> [String] {
            ((try? FileManager.default.subpathsOfDirectory(atPath: deltas)) ?? []).filter { $0.contains("-") }
        }
        #expect(deltaFiles().isEmpty)
        let v1 = try Manifest(
            canonical: [UInt8](try Data(contentsOf: URL(fileURLWithPath: sync.repo + "/releases/app/1.0/manifest")))
        )
        // A client that names a published object's SHA-256 for a file whose content (size and
        // XXH3) is nothing the product published: the server must not diff from that object.
        let entries = v1.entries.map { entry -> ManifestEntry in
            guard case .file(var content) = entry.content else { return entry }
            content.xxh128 = XXH128Digest(high: 1, low: 2)
            var changed = entry
            changed.content = .file(content)
            return changed
        }
        let claimed = try Manifest(entries: entries, hooks: v1.hooks)
        let request = """
            {"product":"app","channel":"stable","device":{"os":"linux","arch":"x86_64","id":"d"},\
            "manifest":"\(Data(claimed.canonicalEncoding()).base64EncodedString())"}
            """
        let answer = try Self.curl(["-X", "POST", "-d", request, first.url + "/v1/plan"])
        #expect(answer.status == 200, "\(answer)")
        #expect(deltaFiles().isEmpty, "the server diffed from a base the client only named: \(deltaFiles())")

        // A real client at 1.0 against a budget of 0: everything whole, nothing written, and
        // the metric says why.
        let server = try ServerProcess(repo: sync.repo, extra: ["--deltas-per-request", "0"])
        let result = try sync.sync(server, root: root, ["--json"])
        #expect(result.status == 0, "\(result.stderr)")
        try await sync.expect(root, equals: 2, "budget 0")
        #expect(deltaFiles().isEmpty, "\(deltaFiles())")
        let metrics = try Self.curl([server.url + "/metrics"])
        #expect(!metrics.body.contains("upgrade_deltas_over_budget_total 0"), "\(metrics.body)")
    }

    @Test("/healthz keeps answering while plans compute on-demand deltas (the work runs off the request pool)")
    func healthWhileDiffing() async throws {
        let fixture = try ApplyFixture()
        let old = try TemporaryTree()
        let new = try TemporaryTree()
        for index in 0..<4 {
            let bytes = noise(3 << 20, seed: UInt64(index))
            _ = try old.file("data/f\(index).bin", bytes)
            _ = try new.file(
                "data/f\(index).bin",
                Array(bytes.prefix(1 << 20)) + noise(4096, seed: 99) + Array(bytes.dropFirst(1 << 20))
            )
        }
        try fixture.publish("1.0", old.root)
        try fixture.publish("2.0", new.root, extra: ["--deltas", "0"])
        let server = try ServerProcess(repo: fixture.repo, extra: ["--deltas-per-request", "64"])
        let body = fixture.work.path("plan.json")
        try routinePlanRequest(repo: fixture.repo, device: "health").write(to: URL(fileURLWithPath: body))
        let url = server.url
        let planning = Task.detached {
            try Self.curl([
                "-X", "POST", "-H", "Content-Type: application/json", "--data-binary", "@" + body, url + "/v1/plan",
            ])
        }
        // While the four level-19 deltas are computed, two at a time.
        usleep(300_000)
        var answered = 0
        for _ in 0..<5 {
            if try Self.curl(["--max-time", "3", url + "/healthz"]).status == 200 { answered += 1 }
            usleep(200_000)
        }
        let plan = try await planning.value
        #expect(plan.status == 200, "\(plan.body.prefix(300))")
        #expect(plan.body.contains(#""deltas":{"data"#), "the plan offers the computed deltas")
        #expect(answered == 5, "/healthz answered \(answered) of 5 probes within 3 s while deltas were computed")
    }

    @Test("reports: control characters refused, one line each, file 0640 under umask 0, labels bounded, rate-limited")
    func reports() throws {
        let sync = try SyncFixture(releases: 1)
        let file = sync.fixture.work.path("reports.jsonl")
        let server = try ServerProcess(
            repo: sync.repo,
            umask: 0,
            extra: ["--reports", file, "--reports-per-device", "0.5"]
        )
        func report(_ result: String, device: String = "d1") throws -> Int {
            let body = """
                {"product":"app","device":{"os":"linux","arch":"x86_64","id":"\(device)"},\
                "toVersion":"1.0","result":\(result),"bytesDownloaded":1,"durationSeconds":0.5}
                """
            return try Self.curl(["-X", "POST", "-d", body, server.url + "/v1/reports"]).status
        }
        #expect(try report(#""installed""#) == 202)
        // A newline inside a field would forge a line in the file and in /metrics.
        #expect(try report(#""installed\n{\"forged\":1}""#, device: "d2") == 400)
        #expect(try report(#""x\"} 1\nupgrade_evil 1""#, device: "d3") == 400)
        // Not a known result: counted as "other", never as a label of the client's choosing.
        #expect(try report(#""evil{label=\"x\"}""#, device: "d4") == 202)
        var limited = 0
        for _ in 0..<20 where try report(#""up to date""#, device: "d5") == 429 { limited += 1 }
        #expect(limited >= 9, "\(limited) of 20 rapid reports from one device refused")

        let lines = try String(contentsOfFile: file, encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 2 + (20 - limited), "\(lines)")
        for line in lines {
            #expect((try? JSONSerialization.jsonObject(with: Data(line.utf8))) != nil, "\(line)")
        }
        let mode = try #require(try FileManager.default.attributesOfItem(atPath: file)[.posixPermissions] as? Int)
        #expect(mode == 0o640, "reports file mode \(String(mode, radix: 8))")
        let metrics = try Self.curl([server.url + "/metrics"]).body
        #expect(!metrics.contains("evil"), "\(metrics)")
        #expect(metrics.contains(#"upgrade_sync_reports_total{result="other"} 1"#), "\(metrics)")
        #expect(metrics.contains("upgrade_reports_refused_total \(limited)"), "\(metrics)")
    }

    @Test(
        "1,000 concurrent plan requests (hey -c 1000): every one answered 200, no connection reset",
        .enabled(if: Prerequisites.hey, "hey is not installed (make deps installs it)"),
        .enabled(
            if: Prerequisites.openFiles(4096),
            "the open-file limit cannot be raised to 4096 for 1,000 connections"
        ),
        .timeLimit(.minutes(3))
    )
    func thousandConcurrentPlans() throws {
        let sync = try SyncFixture(releases: 3)
        let server = try ServerProcess(repo: sync.repo)
        let body = sync.fixture.work.path("plan.json")
        try routinePlanRequest(repo: sync.repo, device: "load").write(to: URL(fileURLWithPath: body))
        let load = try runProgram(
            "/usr/bin/hey",
            [
                "-n", "1000", "-c", "1000", "-t", "60", "-m", "POST", "-T", "application/json", "-D", body,
                server.url + "/v1/plan",
            ]
        )
        #expect(load.status == 0, "\(load.stderr)")
        let summary = load.text.split(separator: "\n").filter {
            $0.contains("[") || $0.contains("requests/sec") || $0.contains("Requests/sec") || $0.contains("%")
                || $0.contains("rror")
        }
        print("load (debug server): \(summary.joined(separator: " | "))")
        #expect(load.text.contains("[200]\t1000 responses"), "\(load.text)")
        #expect(!load.text.contains("Error distribution"), "\(load.text)")
    }
}
