internal import CUpgradeSys
import Foundation
import UpgradeCore

#if canImport(Glibc)
import Glibc
#endif

/// Runs a hook script in its own session (so the whole process group can be killed), with a
/// timeout, output captured to a file and read back bounded. Children a hook leaves behind are
/// killed with it.
struct HookRunner {
    /// How a hook ended.
    enum Outcome: Equatable {
        case succeeded
        case failed(String)
    }

    let timeout: Double
    /// Bytes of output kept for messages.
    static let outputLimit = 16 * 1024

    /// Runs `executable` with `environment`, working directory `directory`, output to `logPath`.
    func run(
        _ executable: String,
        environment: [String: String],
        directory: String,
        logPath: String
    ) -> (Outcome, String) {
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        posix_spawnattr_setflags(&attributes, upgrade_spawn_setsid_flag())
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        upgrade_spawn_addchdir(&actions, directory)

        let arguments = [executable]
        let env = environment.map { "\($0.key)=\($0.value)" }
        var pid: pid_t = 0
        let cArguments = arguments.map { strdup($0) } + [nil]
        let cEnvironment = env.map { strdup($0) } + [nil]
        defer {
            for pointer in cArguments + cEnvironment { free(pointer) }
        }
        let spawned = posix_spawn(&pid, executable, &actions, &attributes, cArguments, cEnvironment)
        guard spawned == 0 else {
            return (.failed("cannot start \(executable): \(String(cString: strerror(spawned)))"), "")
        }

        let deadline = Date().addingTimeInterval(timeout)
        var status: Int32 = 0
        var outcome: Outcome?
        // Sleeps until the hook exits, a signal arrives or the deadline passes (poll on a pidfd
        // and the interruption flag); polls every 10 ms only where the kernel has no pidfd.
        let exitFD = upgrade_pidfd_open(pid)
        defer { if exitFD >= 0 { close(exitFD) } }
        while outcome == nil {
            let done = waitpid(pid, &status, WNOHANG)
            if done == pid {
                let exited = status & 0x7f == 0
                let code = (status >> 8) & 0xff
                outcome =
                    exited && code == 0
                    ? .succeeded : .failed(exited ? "exit status \(code)" : "killed by signal \(status & 0x7f)")
            } else if done < 0 && errno != EINTR {
                outcome = .failed("waitpid: \(String(cString: strerror(errno)))")
            } else if let signal = Interruption.signal {
                // The run is being stopped: the hook and everything it started go with it, and
                // the transaction rolls back.
                kill(-pid, SIGKILL)
                waitpid(pid, &status, 0)
                outcome = .failed("stopped: \(Interruption.name(signal)) received")
            } else if Date() >= deadline {
                kill(-pid, SIGKILL)
                waitpid(pid, &status, 0)
                outcome = .failed("timed out after \(Int(timeout)) s and was killed")
            } else if exitFD >= 0 {
                var watched = [
                    pollfd(fd: exitFD, events: Int16(POLLIN), revents: 0),
                    pollfd(fd: Interruption.signalledFD ?? -1, events: Int16(POLLIN), revents: 0),
                ]
                let left = deadline.timeIntervalSinceNow * 1000
                _ = poll(&watched, 2, Int32(max(1, min(left.rounded(.up), 3_600_000))))
            } else {
                usleep(10_000)
            }
        }
        // Whatever the hook started in its session does not outlive it.
        kill(-pid, SIGKILL)
        return (outcome!, Self.tail(of: logPath))
    }

    static func tail(of path: String) -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else { return "" }
        defer { try? handle.close() }
        let size = (try? handle.seekToEnd()) ?? 0
        try? handle.seek(toOffset: size > UInt64(outputLimit) ? size - UInt64(outputLimit) : 0)
        let data = (try? handle.readToEnd()) ?? Data()
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
