import UpgradeScan

#if canImport(Glibc)
import Glibc
#endif

/// The few filesystem calls the repository needs beyond ``AtomicFile``.
enum FileSystem {
    static func exists(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0
    }

    static func isDirectory(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFDIR
    }

    static func size(_ path: String) -> UInt64? {
        var info = stat()
        guard lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFREG else { return nil }
        return UInt64(info.st_size)
    }

    /// `mkdir -p`, fsyncing each parent whose entry changed.
    static func makeDirectories(_ path: String) throws(SystemCallError) {
        if isDirectory(path) { return }
        let parent = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
        if !parent.isEmpty { try makeDirectories(parent) }
        if mkdir(path, 0o755) != 0 && errno != EEXIST { throw SystemCallError(call: "mkdir \(path)", code: errno) }
        if !parent.isEmpty { try AtomicFile.syncDirectory(parent) }
    }

    /// Names in a directory (not `.`/`..`), sorted; empty when it does not exist.
    static func list(_ path: String) -> [String] {
        guard let directory = opendir(path) else { return [] }
        defer { closedir(directory) }
        var names = [String]()
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }
}

/// An exclusive `flock` on a file, held until released or the process dies.
public final class FileLock {
    private let fd: Int32

    /// Takes the lock on `path` (created when missing), waiting for another holder.
    public init(path: String) throws(SystemCallError) {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw SystemCallError(call: "open \(path)", code: errno) }
        while flock(fd, LOCK_EX) != 0 {
            if errno == EINTR { continue }
            let code = errno
            close(fd)
            throw SystemCallError(call: "flock \(path)", code: code)
        }
        self.fd = fd
    }

    deinit { close(fd) }
}
