#if canImport(Glibc)
import Glibc
#endif

/// Path-level questions and `mkdir -p`, none following a symlink in the last component.
public enum FileSystem {
    /// True when anything (a dangling symlink too) is at `path`.
    public static func exists(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0
    }

    /// True when a directory (not a symlink to one) is at `path`.
    public static func isDirectory(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFDIR
    }

    /// The size of the regular file at `path`; nil for anything else.
    public static func size(_ path: String) -> UInt64? {
        var info = stat()
        guard lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFREG else { return nil }
        return UInt64(info.st_size)
    }

    /// `mkdir -p`, fsyncing each parent whose entry changed.
    public static func makeDirectories(_ path: String, mode: mode_t = 0o755) throws(SystemCallError) {
        if isDirectory(path) { return }
        let parent = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
        if !parent.isEmpty { try makeDirectories(parent, mode: mode) }
        if mkdir(path, mode) != 0 && errno != EEXIST { throw .last("mkdir \(path)") }
        if !parent.isEmpty { try AtomicFile.syncDirectory(parent) }
    }

    /// Names in a directory (not `.`/`..`), sorted; empty when it does not exist.
    public static func list(_ path: String) -> [String] {
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
