import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// What some tests need from the machine, probed once, so that a test that cannot run here is
/// reported as skipped by Swift Testing (`.enabled(if:)`) with the reason, never as a pass.
enum Prerequisites {
    /// strace, for injecting system-call faults (`make deps` installs it).
    static let strace = FileManager.default.isExecutableFile(atPath: "/usr/bin/strace")

    /// nginx, as a static mirror (`make deps` installs nginx-light).
    static let nginx = FileManager.default.isExecutableFile(atPath: "/usr/sbin/nginx")

    /// systemd-analyze, to score the shipped unit's sandbox (`make deps` installs systemd).
    static let systemdAnalyze = FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze")

    /// script(1), for running a command on a pseudo-terminal (bsdutils, essential on Debian).
    static let script = FileManager.default.isExecutableFile(atPath: "/usr/bin/script")

    /// Root and setcap (libcap2-bin, `make deps` installs it): owners and file capabilities.
    static let rootWithSetcap = geteuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/sbin/setcap")

    /// hey, the HTTP load generator (`make deps` installs it).
    static let hey = FileManager.default.isExecutableFile(atPath: "/usr/bin/hey")

    /// Raises this process's open-file limit (inherited by the servers and load generators the
    /// tests start) to at least `wanted` when the hard limit allows; true when it does.
    static func openFiles(_ wanted: rlim_t) -> Bool {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return false }
        if limit.rlim_cur >= wanted { return true }
        guard limit.rlim_max >= wanted else { return false }
        limit.rlim_cur = wanted
        return setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0
    }

    /// Why a small tmpfs cannot be mounted here, or nil when it can (root on Linux).
    static let tmpfsUnavailable: String? = {
        guard getuid() == 0 else { return "not root" }
        let probe = NSTemporaryDirectory() + "/upgrade-tmpfs-probe-\(getpid())"
        try? FileManager.default.createDirectory(atPath: probe, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: probe) }
        guard let mounted = try? runProgram("/bin/mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", probe]) else {
            return "/bin/mount could not be run"
        }
        guard mounted.status == 0 else {
            return "mount -t tmpfs failed: \(mounted.stderr.trimmingCharacters(in: .whitespacesAndNewlines))"
        }
        _ = try? runProgram("/bin/umount", [probe])
        return nil
    }()
}
