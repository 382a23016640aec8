#if canImport(Glibc)
import Glibc
#endif

/// Whole-file reads and crash-safe whole-file writes with plain POSIX calls: write a temporary
/// file beside the target, fsync it, rename it over the target, fsync the directory. Foundation's
/// `.atomic` writes skip the directory fsync on this toolchain.
public enum AtomicFile {
    /// Reads a whole file.
    public static func read(_ path: String) throws(SystemCallError) -> [UInt8] {
        let fd = try Posix.openAt(AT_FDCWD, path, O_RDONLY)
        defer { close(fd) }
        return try Posix.readAll(fd, what: path)
    }

    /// Replaces `path` with `bytes` atomically and durably; the file gets `mode`.
    public static func write(_ bytes: [UInt8], to path: String, mode: mode_t = 0o644) throws(SystemCallError) {
        let directory = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
        let temporary = "\(path).tmp-\(getpid())"
        let fd = try Posix.openAt(AT_FDCWD, temporary, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW)
        do throws(SystemCallError) {
            try Posix.writeAll(fd, bytes, what: temporary)
            guard fchmod(fd, mode) == 0 else { throw .last("fchmod \(temporary)") }
            guard fsync(fd) == 0 else { throw .last("fsync \(temporary)") }
            close(fd)
        } catch {
            close(fd)
            unlink(temporary)
            throw error
        }
        guard rename(temporary, path) == 0 else {
            let code = errno
            unlink(temporary)
            throw SystemCallError(call: "rename \(temporary) \(path)", code: code)
        }
        try syncDirectory(directory.isEmpty ? "/" : directory)
    }

    /// fsync of a directory, making a rename in it durable.
    public static func syncDirectory(_ path: String) throws(SystemCallError) {
        let fd = try Posix.openAt(AT_FDCWD, path, O_RDONLY | O_DIRECTORY)
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw .last("fsync \(path)") }
    }
}
