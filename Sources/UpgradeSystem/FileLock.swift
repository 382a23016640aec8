#if canImport(Glibc)
import Glibc
#endif

/// One `flock` on a lock file, held until the value is released or the process dies: shared
/// (readers) or exclusive (a writer, which writes its pid into the file so a waiting command
/// can say who holds it). Waits for another holder up to a timeout, or for ever.
public final class FileLock: Sendable {
    /// Who may hold the lock beside us.
    public enum Mode: Sendable {
        /// Other shared holders, no exclusive one.
        case shared
        /// Nobody.
        case exclusive
    }

    /// The lock could not be had within the timeout.
    public struct Busy: Error, Sendable {
        /// The pid the holder wrote into the lock file, when it did.
        public let pid: Int32?
        /// How long we waited, in seconds.
        public let waited: Double
    }

    /// The open lock file; the lock lives as long as it is open.
    public let fd: Int32

    /// Takes the lock on `name` in `directory` (a path when `directory` is `AT_FDCWD`), waiting
    /// up to `timeout` seconds for another holder (nil: for ever). The file is created when
    /// missing only for an exclusive lock; a shared lock on a missing file throws ENOENT.
    /// `display` names the file in errors.
    public init(
        directory: Int32 = AT_FDCWD,
        _ name: String,
        display: String? = nil,
        mode: Mode,
        timeout: Double?
    ) throws {
        let display = display ?? name
        let flags = mode == .exclusive ? O_RDWR | O_CREAT | O_NOFOLLOW : O_RDONLY | O_NOFOLLOW
        let fd = try Posix.openAt(directory, name, flags, mode: 0o644, what: display)
        let operation = mode == .exclusive ? LOCK_EX : LOCK_SH
        let deadline = timeout.map { Self.now() + $0 }
        while flock(fd, operation | (deadline == nil ? 0 : LOCK_NB)) != 0 {
            guard errno == EWOULDBLOCK || errno == EINTR else {
                let code = errno
                close(fd)
                throw SystemCallError(call: "flock \(display)", code: code)
            }
            if let deadline, let timeout, Self.now() >= deadline {
                let pid = Self.holder(fd)
                close(fd)
                throw Busy(pid: pid, waited: timeout)
            }
            if deadline != nil { usleep(50_000) }
        }
        if mode == .exclusive {
            let text = Array("\(getpid())\n".utf8)
            _ = ftruncate(fd, 0)
            _ = pwrite(fd, text, text.count, 0)
        }
        self.fd = fd
    }

    deinit { close(fd) }

    /// Whether the lock on `name` in `directory` is held right now (tested with a non-blocking
    /// shared lock, released at once) and the pid its exclusive holder wrote. Writes nothing.
    public static func holder(directory: Int32 = AT_FDCWD, _ name: String) -> (held: Bool, pid: Int32?) {
        let fd = openat(directory, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { return (false, nil) }
        defer { close(fd) }
        if flock(fd, LOCK_SH | LOCK_NB) == 0 {
            flock(fd, LOCK_UN)
            return (false, nil)
        }
        return (true, holder(fd))
    }

    private static func holder(_ fd: Int32) -> Int32? {
        var buffer = [UInt8](repeating: 0, count: 32)
        let count = pread(fd, &buffer, 32, 0)
        guard count > 0 else { return nil }
        let digits = buffer[..<count].prefix { $0 >= 0x30 && $0 <= 0x39 }
        return Int32(String(decoding: digits, as: UTF8.self))
    }

    private static func now() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }
}
