import AsyncHTTPClient
import Foundation
import NIOCore
import Testing
import UpgradeCore
import UpgradeProtocol
import UpgradeZstd

#if canImport(Glibc)
import Glibc
#endif

/// A free TCP port on 127.0.0.1 (bound and released; nginx needs a number up front).
func freePort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
    }
    _ = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    return Int(UInt16(bigEndian: address.sin_port))
}

@Suite("Network: TLS, mirror, load, request size", .serialized)
struct NetworkTests {
    @Test("HTTPS with a self-signed certificate: works with --ca-cert, refused without (exit 10)")
    func https() async throws {
        let sync = try SyncFixture(releases: 1)
        let work = sync.fixture.work
        let made = try runProgram(
            "/usr/bin/openssl",
            [
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", work.path("key.pem"), "-out",
                work.path("cert.pem"),
            ]
        )
        #expect(made.status == 0, "\(made.stderr)")
        let server = try ServerProcess(
            repo: sync.repo,
            extra: ["--tls-cert", work.path("cert.pem"), "--tls-key", work.path("key.pem")]
        )
        #expect(server.url.hasPrefix("https://"))
        let refused = try sync.sync(server, root: work.path("untrusting"))
        #expect(refused.status == 10, "\(refused.stderr)")
        let root = work.path("root")
        let trusted = try sync.sync(server, root: root, ["--ca-cert", work.path("cert.pem")])
        #expect(trusted.status == 0, "\(trusted.stderr)")
        try await sync.expect(root, equals: 1, "https")
    }

    @Test(
        "payloads from a static mirror (nginx serving the repository) while the plan comes from upgrade serve",
        .enabled(if: Prerequisites.nginx, "nginx is not installed (make deps installs nginx-light)")
    )
    func nginxMirror() async throws {
        let sync = try SyncFixture(releases: 2)
        let work = sync.fixture.work
        let port = freePort()
        try FileManager.default.createDirectory(atPath: work.path("nginx/tmp"), withIntermediateDirectories: true)
        let config = """
            daemon off;
            user root;
            worker_processes 1;
            pid \(work.path("nginx/nginx.pid"));
            error_log \(work.path("nginx/error.log"));
            events { worker_connections 64; }
            http {
                access_log \(work.path("nginx/access.log"));
                client_body_temp_path \(work.path("nginx/tmp"));
                proxy_temp_path \(work.path("nginx/tmp"));
                fastcgi_temp_path \(work.path("nginx/tmp"));
                uwsgi_temp_path \(work.path("nginx/tmp"));
                scgi_temp_path \(work.path("nginx/tmp"));
                server { listen 127.0.0.1:\(port); root \(sync.repo); location / { } }
            }
            """
        try config.write(toFile: work.path("nginx/nginx.conf"), atomically: true, encoding: .utf8)
        let nginx = Process()
        nginx.executableURL = URL(fileURLWithPath: "/usr/sbin/nginx")
        nginx.arguments = ["-c", work.path("nginx/nginx.conf"), "-p", work.path("nginx")]
        nginx.standardError = FileHandle.nullDevice
        try nginx.run()
        defer {
            nginx.terminate()
            nginx.waitUntilExit()
        }
        usleep(500_000)
        let server = try ServerProcess(repo: sync.repo)
        let root = work.path("root")
        let result = try sync.sync(server, root: root, ["--mirror", "http://127.0.0.1:\(port)", "--json"])
        #expect(result.status == 0, "\(result.stderr)")
        try await sync.expect(root, equals: 2, "mirror")
        let log = (try? String(contentsOfFile: work.path("nginx/access.log"), encoding: .utf8)) ?? ""
        #expect(log.contains("GET /objects/") && log.contains("HTTP/1.1\" 200"), "nginx served no object: \(log)")
        // The one expected 404: the probe for a root of trust this repository does not have.
        let failures = log.split(separator: "\n").filter {
            ($0.contains("\" 403 ") || $0.contains("\" 404 ")) && !$0.contains("GET /roots/1.json")
        }
        #expect(failures.isEmpty, "\(log)")
        #expect(log.contains("GET /releases/app/2.0/manifest"))
        let metrics = try runProgram("/usr/bin/curl", ["-s", server.url + "/metrics"])
        #expect(
            metrics.text.contains("upgrade_object_bytes_total 0"),
            "the plan server served payloads: \(metrics.text)"
        )
    }

    @Test("200 concurrent plan requests against one server: zero errors")
    func load() async throws {
        let sync = try SyncFixture(releases: 3)
        let server = try ServerProcess(repo: sync.repo)
        // A client at 1.0 asking for the channel's release: the routine request, as a delta.
        let body = try routinePlanRequest(repo: sync.repo, device: "load")
        let client = HTTPClient(
            eventLoopGroupProvider: .singleton,
            configuration: .init(connectionPool: .init(idleTimeout: .seconds(30)))
        )
        let url = server.url
        let latencies = try await withThrowingTaskGroup(of: (Int, Double).self) { group in
            for _ in 0..<200 {
                group.addTask {
                    var http = HTTPClientRequest(url: url + "/v1/plan")
                    http.method = .POST
                    http.headers.add(name: "Content-Type", value: "application/json")
                    http.body = .bytes(ByteBuffer(bytes: body))
                    let start = ContinuousClock.now
                    let response = try await client.execute(http, timeout: .seconds(60))
                    _ = try await response.body.collect(upTo: 16 << 20)
                    let elapsed = ContinuousClock.now - start
                    return (
                        Int(response.status.code),
                        Double(elapsed.components.attoseconds) / 1e15 + Double(elapsed.components.seconds) * 1000
                    )
                }
            }
            var results = [(Int, Double)]()
            for try await result in group { results.append(result) }
            return results
        }
        try await client.shutdown()
        let errors = latencies.filter { $0.0 != 200 }.count
        #expect(errors == 0)
        let sorted = latencies.map(\.1).sorted()
        let status = (try? String(contentsOfFile: "/proc/\(server.pid)/status", encoding: .utf8)) ?? ""
        let rss = status.split(separator: "\n").first { $0.hasPrefix("VmHWM") } ?? "VmHWM: ?"
        print(
            "load: 200 concurrent plan requests, \(errors) errors, p50 \(String(format: "%.1f", sorted[99])) ms, p99 \(String(format: "%.1f", sorted[197])) ms, server peak \(rss.replacingOccurrences(of: "\t", with: " "))"
        )
    }

    @Test("malformed, unknown and oversized requests get a 4xx that says why; objects honour Range and ETag")
    func badRequests() throws {
        let sync = try SyncFixture(releases: 1)
        let server = try ServerProcess(repo: sync.repo)
        func curl(_ arguments: [String]) throws -> (Int, String) {
            let result = try runProgram("/usr/bin/curl", ["-s", "-o", "/dev/stderr", "-w", "%{http_code}"] + arguments)
            return (Int(result.text) ?? 0, result.stderr)
        }
        let malformed = try curl(["-X", "POST", "-d", "{not json", server.url + "/v1/plan"])
        #expect(malformed.0 == 400 && malformed.1.contains("malformed plan request"), "\(malformed)")
        let unknown = try curl([
            "-X", "POST", "-d",
            #"{"product":"nope","channel":"stable","device":{"os":"l","arch":"x","id":"i"},"manifest":""}"#,
            server.url + "/v1/plan",
        ])
        #expect(unknown.0 == 404 && unknown.1.contains("no channel"), "\(unknown)")
        let big = sync.fixture.work.path("big.json")
        try Data(repeating: 0x20, count: 65 << 20).write(to: URL(fileURLWithPath: big))
        let oversized = try curl(["-X", "POST", "--data-binary", "@" + big, server.url + "/v1/plan"])
        #expect(oversized.0 == 413, "\(oversized.0)")
        let traversal = try curl([server.url + "/releases/app/..%2F..%2Fetc/header"])
        #expect(traversal.0 == 404)

        let objects = try FileManager.default.subpathsOfDirectory(atPath: sync.repo + "/objects").filter {
            $0.count > 3
        }
        let object = try #require(objects.first)
        let sha = String(object.split(separator: "/").last!)
        let headers = try runProgram(
            "/usr/bin/curl",
            ["-s", "-D", "-", "-o", "/dev/null", "-H", "Range: bytes=2-5", server.url + "/objects/" + object]
        )
        #expect(headers.text.contains("206"))
        #expect(headers.text.lowercased().contains("etag: \"\(sha)\""))
        #expect(headers.text.lowercased().contains("immutable"))
        #expect(headers.text.lowercased().contains("content-range: bytes 2-5/"))
        let notModified = try curl(["-H", "If-None-Match: \"\(sha)\"", server.url + "/objects/" + object])
        #expect(notModified.0 == 304)
    }
}
