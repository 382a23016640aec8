import CUpgradeSys
import Foundation
import Synchronization
import Testing
import UpgradeApply
import UpgradeBundle
import UpgradeCore
import UpgradeRepository
import UpgradeTestSupport
import UpgradeTrust

#if canImport(Glibc)
import Glibc
#endif

/// Throws ``TransactionAbandoned`` at the mutation numbered `limit` (0-based), as a crash there would.
final class CrashAfter: MutationObserver {
    let limit: Int
    private let count = Atomic<Int>(0)

    init(_ limit: Int) { self.limit = limit }

    var mutations: Int { count.load(ordering: .relaxed) }

    func willMutate(_ description: String) throws {
        let index = count.add(1, ordering: .relaxed).oldValue
        if index >= limit { throw TransactionAbandoned() }
    }
}

/// The install request `upgrade apply` would make for `bundle`, watched by `observer`.
func bundleRequest(
    _ bundle: String,
    root: String,
    trust: String,
    observer: any MutationObserver
) throws
    -> InstallRequest
{
    let reader = try BundleReader(path: bundle)
    var request = InstallRequest(
        root: root,
        trusted: try KeyFiles.loadTrusted([trust]),
        headerBytes: try reader.section(.header)!,
        manifestBytes: try reader.section(.manifest)!,
        plan: try Plan(json: Data(try reader.section(.plan)!)),
        payloads: BundlePayloads(bundle: reader, root: root)
    )
    request.observer = observer
    return request
}

/// An installed 1.0 root (edge-case trees), the bundle to 2.0, and the two expected trees.
struct CrashScenario {
    let fixture: ApplyFixture
    let template: String
    let bundle: String
    let old: Manifest
    let new: Manifest
    /// 2.0 carries owners, a hard link and an attribute (when the tests run as root).
    let withMetadata: Bool

    init() async throws {
        fixture = try ApplyFixture()
        let a = try TemporaryTree()
        let b = try TemporaryTree()
        try EdgeTrees.old(a)
        try EdgeTrees.new(b)
        // Metadata steps in the same transaction: an owner change on a file the plan leaves
        // alone, an owned new file, a hard link to an unchanged file, an attribute.
        withMetadata = geteuid() == 0
        if withMetadata {
            #expect(chown(b.path("empty"), 1000, 1000) == 0)
            #expect(chown(b.path("bin/other"), 1000, 1000) == 0)
            #expect(link(b.path("lib64/a.so"), b.path("lib64/z-link.so")) == 0)
            #expect(upgrade_lsetxattr(b.path("tiny"), "user.note", "crash", 5) == 0)
        }
        try fixture.publish("1.0", a.root)
        try fixture.publish("2.0", b.root)
        template = fixture.work.path("template")
        #expect(try fixture.apply(try fixture.bundle(from: nil, to: "1.0"), root: template).status == 0)
        bundle = try fixture.bundle(from: "1.0", to: "2.0")
        old = try await ApplyFixture.scan(a.root)
        new = try await ApplyFixture.scan(b.root)
    }

    /// A fresh copy of the installed 1.0 root.
    func freshRoot(_ name: String) throws -> String {
        let root = fixture.work.path(name)
        _ = try runProgram("/bin/rm", ["-rf", root])
        try ApplyFixture.copy(template, root)
        return root
    }

    func request(root: String, observer: any MutationObserver) throws -> InstallRequest {
        try bundleRequest(bundle, root: root, trust: fixture.pub, observer: observer)
    }

    /// The tree is exactly one of the releases, and the installed state says which.
    func checkConsistent(_ root: String, _ context: String) async throws -> String {
        let tree = try await ApplyFixture.scan(root)
        let document = try StatusDocument(root: root)
        #expect(document.pendingJournal == nil, "\(context): journal left behind")
        let isOld = tree == old
        let isNew = tree == new
        if isOld {
            #expect(
                document.version == "1.0",
                "\(context): tree is 1.0, state says \(document.version ?? "none")"
            )
            if withMetadata {
                #expect(Self.owner(root + "/empty") == 0, "\(context): 1.0 with 2.0's owner")
            }
            return "old"
        }
        #expect(
            isNew,
            "\(context): tree is neither release; differs from old at \(tree.differingPaths(from: old).prefix(6)), from new at \(tree.differingPaths(from: new).prefix(6))"
        )
        #expect(document.version == "2.0", "\(context): tree is 2.0, state says \(document.version ?? "none")")
        if withMetadata {
            #expect(
                Self.owner(root + "/empty") == 1000 && Self.owner(root + "/bin/other") == 1000,
                "\(context): owners"
            )
            var a = stat()
            var z = stat()
            #expect(lstat(root + "/lib64/a.so", &a) == 0 && lstat(root + "/lib64/z-link.so", &z) == 0)
            #expect(a.st_ino == z.st_ino, "\(context): hard link")
            var value = [UInt8](repeating: 0, count: 16)
            #expect(upgrade_lgetxattr(root + "/tiny", "user.note", &value, value.count) == 5, "\(context): attribute")
        }
        return "new"
    }

    static func owner(_ path: String) -> UInt32? {
        var info = stat()
        return lstat(path, &info) == 0 ? info.st_uid : nil
    }
}

@Suite("Crash safety", .serialized)
struct CrashTests {
    @Test("stopping the transaction after every step k, then recovering, leaves exactly the old or the new release")
    func stopAfterEveryStep() async throws {
        let scenario = try await CrashScenario()
        let counter = CrashAfter(.max)
        let complete = try scenario.freshRoot("count")
        _ = try Engine.install(try scenario.request(root: complete, observer: counter))
        let steps = counter.mutations
        #expect(steps > 40)
        var outcomes = [String: Int]()
        for k in 0..<steps {
            let root = try scenario.freshRoot("k\(k)")
            #expect(throws: TransactionAbandoned.self) {
                try Engine.install(try scenario.request(root: root, observer: CrashAfter(k)))
            }
            _ = try Engine.recover(root: root)
            outcomes[try await scenario.checkConsistent(root, "stop after \(k)"), default: 0] += 1
            _ = try runProgram("/bin/rm", ["-rf", root])
        }
        print(
            "stopped after each of \(steps) steps: \(outcomes["old", default: 0]) recovered to 1.0, \(outcomes["new", default: 0]) rolled forward to 2.0"
        )
        #expect(outcomes["old", default: 0] > 0 && outcomes["new", default: 0] > 0)
    }

    @Test("recovering an interrupted upgrade runs the restored release's post-install (UPGRADE_PHASE=rollback)")
    func recoveryRunsRestoredPostInstall() async throws {
        let fixture = try ApplyFixture()
        let log = fixture.work.path("hooks.log")
        for version in ["1.0", "2.0"] {
            let tree = try TemporaryTree()
            try tree.file("bin/app", "#!/bin/sh\necho \(version)\n", mode: 0o755)
            try tree.file("share/data.txt", noise(20_000, seed: version == "1.0" ? 1 : 2))
            try tree.file("post.sh", "#!/bin/sh\necho \"$UPGRADE_PHASE \(version)\" >> '\(log)'\n", mode: 0o755)
            try fixture.publish(version, tree.root, extra: ["--post-install", "post.sh"])
        }
        let root = fixture.work.path("root")
        #expect(try fixture.apply(try fixture.bundle(from: nil, to: "1.0"), root: root).status == 0)
        let bundle = try fixture.bundle(from: "1.0", to: "2.0")
        // Stop in the middle of the commit, as a power cut would.
        let counter = CrashAfter(.max)
        let probe = fixture.work.path("probe")
        try ApplyFixture.copy(root, probe)
        _ = try Engine.install(try bundleRequest(bundle, root: probe, trust: fixture.pub, observer: counter))
        // The latest stop that recovery rolls back (the commit had started, the hooks had not run).
        let template = fixture.work.path("template")
        try ApplyFixture.copy(root, template)
        var rolledBack = false
        for k in (0..<counter.mutations).reversed() {
            _ = try runProgram("/bin/rm", ["-rf", root])
            try ApplyFixture.copy(template, root)
            let request = try bundleRequest(bundle, root: root, trust: fixture.pub, observer: CrashAfter(k))
            #expect(throws: TransactionAbandoned.self) { try Engine.install(request) }
            try? Data().write(to: URL(fileURLWithPath: log))
            if let recovered = try Engine.recover(root: root), recovered.contains("rolled back") {
                rolledBack = true
                break
            }
        }
        #expect(rolledBack, "no stop point was rolled back by recovery")
        let lines = ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n")
        #expect(lines == ["rollback 1.0"], "\(lines)")
    }

    @Test("a crash during recovery recovers too")
    func crashDuringRecovery() async throws {
        let scenario = try await CrashScenario()
        let counter = CrashAfter(.max)
        _ = try Engine.install(try scenario.request(root: try scenario.freshRoot("count"), observer: counter))
        let steps = counter.mutations
        var runs = 0
        for k in stride(from: 5, to: steps, by: max(1, steps / 6)) {
            // How many mutations does recovering from a stop at k take?
            let probe = try scenario.freshRoot("probe")
            _ = try? Engine.install(try scenario.request(root: probe, observer: CrashAfter(k)))
            let recoveryCounter = CrashAfter(.max)
            _ = try Engine.recover(root: probe, observer: recoveryCounter)
            for j in 0..<recoveryCounter.mutations {
                let root = try scenario.freshRoot("r\(k)-\(j)")
                _ = try? Engine.install(try scenario.request(root: root, observer: CrashAfter(k)))
                #expect(throws: TransactionAbandoned.self) {
                    try Engine.recover(root: root, observer: CrashAfter(j))
                }
                _ = try Engine.recover(root: root)
                _ = try await scenario.checkConsistent(root, "stop at \(k), recovery stopped at \(j)")
                _ = try runProgram("/bin/rm", ["-rf", root])
                runs += 1
            }
        }
        print("recovery interrupted and recovered again in \(runs) runs")
        #expect(runs > 10)
    }

    @Test("upgrade apply SIGKILLed at random moments (and sometimes its recovery too): always exactly one release")
    func killedApplies() async throws {
        let scenario = try await CrashScenario()
        let runs = Int(ProcessInfo.processInfo.environment["UPGRADE_CRASH_RUNS"] ?? "") ?? 30
        let calibration = try scenario.freshRoot("calibrate")
        let start = Date()
        #expect(try scenario.fixture.apply(scenario.bundle, root: calibration).status == 0)
        let full = Date().timeIntervalSince(start)
        var rng = SystemRandomNumberGenerator()
        var outcomes = [String: Int]()
        var killed = 0
        var recoveryKills = 0
        for run in 1...runs {
            let root = try scenario.freshRoot("kill")
            let apply = try spawn(["apply", "--root", root, "--trust", scenario.fixture.pub, scenario.bundle])
            usleep(UInt32.random(in: 0...UInt32(full * 1_000_000), using: &rng))
            if apply.isRunning {
                kill(apply.processIdentifier, SIGKILL)
                killed += 1
            }
            apply.waitUntilExit()
            if run % 3 == 0 {
                // Kill the recovering command too.
                let recovery = try spawn(["recover", "--root", root])
                usleep(UInt32.random(in: 0...UInt32(full * 500_000), using: &rng))
                if recovery.isRunning {
                    kill(recovery.processIdentifier, SIGKILL)
                    recoveryKills += 1
                }
                recovery.waitUntilExit()
            }
            let recover = try Upgrade.run(["recover", "--root", root])
            #expect(recover.status == 0, "run \(run): \(recover.stderr)")
            let verify = try Upgrade.run(["verify", "--root", root])
            #expect(verify.status == 0, "run \(run): \(verify.text)\(verify.stderr)")
            outcomes[try await scenario.checkConsistent(root, "kill run \(run)"), default: 0] += 1
        }
        print(
            "SIGKILL harness: \(runs) runs, apply killed in \(killed), recovery killed in \(recoveryKills); \(outcomes["old", default: 0]) ended at 1.0, \(outcomes["new", default: 0]) at 2.0"
        )
        #expect(killed >= runs / 2)
    }

    private func spawn(_ arguments: [String]) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Upgrade.binary)
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        return process
    }
}

/// The engine through its one door, as the commands use it.
enum Engine {
    static func install(_ request: InstallRequest) throws -> InstallReport {
        try withRootSession(
            root: request.root,
            stateDirectoryName: request.stateDirectoryName,
            lockTimeout: request.lockTimeout,
            observer: request.observer
        ) { try $0.install(request) }
    }

    /// What recovery did; nil when there was nothing to recover (or nothing installed).
    static func recover(root: String, observer: any MutationObserver = NoObserver()) throws -> String? {
        do {
            return try withRootSession(root: root, observer: observer, create: false) { $0.recovered }
        } catch ApplyError.notARoot {
            return nil
        }
    }
}
