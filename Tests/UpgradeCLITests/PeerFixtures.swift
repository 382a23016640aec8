import Foundation
import Testing
import UpgradeTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// One "machine" of a peer test: how its commands are started, the address its servers listen
/// on and the multicast interface it pins.
struct Machine {
    /// Prefix that runs a command on the machine (`ip netns exec NS`), empty on loopback.
    let launcher: [String]
    let address: String
    let interface: String

    static let loopback = Machine(launcher: [], address: "127.0.0.1", interface: "127.0.0.1")

    func run(_ arguments: [String]) throws -> CommandResult {
        guard let first = launcher.first else { return try Upgrade.run(arguments) }
        return try runProgram(first, Array(launcher.dropFirst()) + [Upgrade.binary] + arguments)
    }

    /// Starts a long-running `upgrade` command that prints "listening on URL".
    func start(_ arguments: [String]) throws -> ListeningProcess {
        try ListeningProcess(launcher + [Upgrade.binary] + arguments)
    }
}

/// A process that prints "listening on URL" once ready (`upgrade serve`, `upgrade share`).
final class ListeningProcess {
    let process = Process()
    let url: String
    let stderrPath: String

    init(_ command: [String]) throws {
        process.executableURL = URL(fileURLWithPath: command[0])
        process.arguments = Array(command.dropFirst())
        let out = Pipe()
        process.standardOutput = out
        stderrPath = NSTemporaryDirectory() + "/upgrade-peer-\(UInt64.random(in: 0...UInt64.max)).err"
        _ = FileManager.default.createFile(atPath: stderrPath, contents: nil)
        process.standardError = FileHandle(forWritingAtPath: stderrPath)
        try process.run()
        var line = Data()
        let deadline = Date().addingTimeInterval(30)
        while !line.contains(0x0a) && Date() < deadline {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            line.append(chunk)
        }
        let text = String(decoding: line, as: UTF8.self)
        guard text.hasPrefix("listening on "),
            let found = text.split(separator: " ").last?.trimmingCharacters(in: .whitespacesAndNewlines)
        else {
            process.terminate()
            throw POSIXError(.ECONNREFUSED)
        }
        url = found
    }

    /// `HOST:PORT` of the URL.
    var hostPort: String { String(url.dropFirst("http://".count)) }

    var stderr: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }

    func stop() {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
    }

    deinit {
        stop()
        unlink(stderrPath)
    }
}

/// A LAN of network namespaces the test creates: a bridge (multicast snooping off) in its own
/// namespace and one namespace per machine with a veth on it, addresses 10.77.0.N/24. Nothing
/// is created in the test's own namespace, so no traffic can reach a real interface.
final class NamespaceLAN {
    let prefix: String
    private(set) var names: [String] = []

    /// Why namespaces cannot be made here, or nil when they can.
    static let unavailable: String? = {
        guard getuid() == 0 else { return "not root" }
        guard FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip") else { return "no /usr/sbin/ip (iproute2)" }
        let probe = "upgprobe\(getpid())"
        guard let result = try? runProgram("/usr/sbin/ip", ["netns", "add", probe]), result.status == 0 else {
            return "`ip netns add` failed"
        }
        _ = try? runProgram("/usr/sbin/ip", ["netns", "del", probe])
        return nil
    }()

    init(machines: Int) throws {
        prefix = "upg\(getpid() % 100_000)x\(Int.random(in: 0..<1000))"
        let lan = prefix + "lan"
        try ip(["netns", "add", lan])
        names.append(lan)
        try ip(["netns", "exec", lan, "ip", "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])
        try ip(["netns", "exec", lan, "ip", "link", "set", "br0", "up"])
        for index in 1...machines {
            let name = prefix + "m\(index)"
            try ip(["netns", "add", name])
            names.append(name)
            try ip([
                "link", "add", "\(prefix)v\(index)", "netns", name, "type", "veth", "peer", "name", "p\(index)",
                "netns",
                lan,
            ])
            try ip(["netns", "exec", lan, "ip", "link", "set", "p\(index)", "master", "br0", "up"])
            try ip(["netns", "exec", name, "ip", "link", "set", "\(prefix)v\(index)", "name", "eth0"])
            try ip(["netns", "exec", name, "ip", "addr", "add", "10.77.0.\(index)/24", "dev", "eth0"])
            try ip(["netns", "exec", name, "ip", "link", "set", "eth0", "up"])
            try ip(["netns", "exec", name, "ip", "link", "set", "lo", "up"])
        }
    }

    func machine(_ index: Int) -> Machine {
        Machine(
            launcher: ["/usr/sbin/ip", "netns", "exec", prefix + "m\(index)"],
            address: "10.77.0.\(index)",
            interface: "eth0"
        )
    }

    private func ip(_ arguments: [String]) throws {
        let result = try runProgram("/usr/sbin/ip", arguments)
        guard result.status == 0 else {
            throw POSIXError(.EPERM, userInfo: ["ip": arguments.joined(separator: " ") + ": " + result.stderr])
        }
    }

    deinit {
        for name in names.reversed() { _ = try? runProgram("/usr/sbin/ip", ["netns", "del", name]) }
    }
}

/// Releases 1.0 and 2.0 of a small app, a way to put a root at either, and the peer flags.
final class PeerFixture {
    let sync: SyncFixture
    /// A group port of its own per fixture, so concurrent runs never hear each other.
    let group = "239.255.77.77:\(Int.random(in: 20_000..<60_000))"
    var fixture: ApplyFixture { sync.fixture }

    init(bigFile: Bool = false) throws {
        sync = try SyncFixture(releases: 2, bigFile: bigFile)
    }

    /// Installs release `version` into a new root (from a bundle: no server involved).
    func root(_ name: String, at version: Int) throws -> String {
        let root = fixture.work.path(name)
        let bundle = try fixture.bundle(from: nil, to: "\(version).0")
        let result = try fixture.apply(bundle, root: root)
        #expect(result.status == 0, "\(result.stderr)")
        return root
    }

    /// `upgrade share` of `root` on `machine`.
    func share(_ root: String, on machine: Machine, _ extra: [String] = []) throws -> ListeningProcess {
        try machine.start(
            [
                "share", "--root", root, "--listen", "\(machine.address):0", "--announce", group, "--interface",
                machine.interface, "--interval", "1", "--log-level", "warning",
            ] + extra
        )
    }

    /// `upgrade sync --json` with multicast discovery on `machine`'s interface.
    func syncWithPeers(
        _ root: String,
        on machine: Machine,
        server: String?,
        _ extra: [String] = []
    ) throws -> (CommandResult, [String: Any]) {
        var arguments = ["sync", "--product", fixture.product, "--root", root, "--trust", fixture.pub, "--json"]
        if let server { arguments += ["--server", server] }
        arguments += ["--announce", group, "--interface", machine.interface, "--peer-wait", "1"] + extra
        if !extra.contains("--peers") { arguments += ["--peers", "auto"] }
        let result = try machine.run(arguments)
        let report = (try? JSONSerialization.jsonObject(with: result.stdout) as? [String: Any]) ?? [:]
        return (result, report)
    }
}

func number(_ report: [String: Any], _ key: String) -> Int { (report[key] as? NSNumber)?.intValue ?? -1 }

func peerList(_ report: [String: Any]) -> [[String: Any]] { report["peers"] as? [[String: Any]] ?? [] }
