import Foundation
import UpgradeTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// A real PostgreSQL (Debian's `postgresql`) started for the tests on 127.0.0.1 and a free
/// port, in a data directory of its own, trust authentication, stopped when released. As root
/// it runs as the `postgres` user (the server refuses root).
final class PostgresServer: @unchecked Sendable {
    let directory: String
    let port: Int
    private let asUser: [String]
    private let bin: String

    var url: String { "postgres://upgrade@127.0.0.1:\(port)/postgres?sslmode=disable" }

    /// Why no server can start here (printed once), or nil.
    nonisolated(unsafe) static var unavailable: String? = {
        let why: String? = {
            guard binaries() != nil else {
                return "initdb/pg_ctl not found under /usr/lib/postgresql (apt-get install postgresql)"
            }
            do {
                _ = try PostgresServer()
                return nil
            } catch {
                return "\(error)"
            }
        }()
        if let why { FileHandle.standardError.write(Data("PostgreSQL tests skipped: \(why)\n".utf8)) }
        return why
    }()

    static func binaries() -> String? {
        let base = "/usr/lib/postgresql"
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: base)) ?? []).sorted().reversed()
        return versions.map { "\(base)/\($0)/bin" }.first {
            FileManager.default.isExecutableFile(atPath: $0 + "/initdb")
                && FileManager.default.isExecutableFile(atPath: $0 + "/pg_ctl")
        }
    }

    struct StartFailure: Error, CustomStringConvertible { let description: String }

    init() throws {
        guard let bin = Self.binaries() else { throw StartFailure(description: "no PostgreSQL binaries") }
        self.bin = bin
        var template = Array("/tmp/upgrade-pg-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw StartFailure(description: "mkdtemp failed") }
        directory = String(cString: made)
        if geteuid() == 0 {
            guard let user = getpwnam("postgres") else {
                throw StartFailure(description: "running as root and there is no postgres user")
            }
            chown(directory, user.pointee.pw_uid, user.pointee.pw_gid)
            asUser = ["/usr/sbin/runuser", "-u", "postgres", "--"]
        } else {
            asUser = []
        }
        port = try Self.freePort()
        let data = directory + "/data"
        try run([bin + "/initdb", "-D", data, "-U", "upgrade", "-A", "trust", "--no-sync", "-E", "UTF8"])
        try run([
            bin + "/pg_ctl", "-D", data, "-l", directory + "/log", "-w", "-t", "60", "-o",
            "-p \(port) -c listen_addresses=127.0.0.1 -k \(directory) -c fsync=off -c max_connections=100",
            "start",
        ])
    }

    deinit {
        _ = try? runProgram(asUser.first ?? bin + "/pg_ctl", Array(asUser.dropFirst()) + stopCommand)
        try? FileManager.default.removeItem(atPath: directory)
    }

    private var stopCommand: [String] { [bin + "/pg_ctl", "-D", directory + "/data", "-m", "immediate", "stop"] }

    /// Runs `command` with its output in a file, not a pipe, and every descriptor above 2 closed:
    /// the server `pg_ctl start` leaves running would otherwise inherit pipes (Foundation does
    /// not mark its pipes close-on-exec), and whoever waits for such a pipe's end, this test or
    /// another one running beside it, would wait until the server stops.
    private func run(_ command: [String]) throws {
        let closeAll = #"for f in /proc/$$/fd/*; do n=${f##*/}; [ "$n" -gt 2 ] && eval "exec $n>&-"; done; exec "$@""#
        let full = ["/bin/bash", "-c", closeAll, "bash"] + asUser + command
        let output = directory + "/command.out"
        _ = FileManager.default.createFile(atPath: output, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
        defer { try? handle.close() }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: full[0])
        process.arguments = Array(full.dropFirst())
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            let printed = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
            let log = (try? String(contentsOfFile: directory + "/log", encoding: .utf8)) ?? ""
            throw StartFailure(
                description:
                    "\(command[0]) exited \(process.terminationStatus): \(printed.suffix(400)) \(log.suffix(400))"
            )
        }
    }

    /// A port nothing listens on now (bound to 0, read, closed).
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard bound else { throw StartFailure(description: "no free port") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
