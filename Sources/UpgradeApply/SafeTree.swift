internal import CUpgradeSys
import UpgradeCore
import UpgradeScan
import UpgradeSystem

#if canImport(Glibc)
import Glibc
#endif

/// Called before every change the engine makes to the disk. The default does nothing; tests
/// install one that throws ``TransactionAbandoned`` after k changes to stop the transaction as a
/// crash would, then check that recovery restores exactly one release.
public protocol MutationObserver: Sendable {
    func willMutate(_ description: String) throws
}

/// Thrown by a ``MutationObserver`` to stop the engine on the spot, leaving the disk as a killed
/// process would (no rollback, no cleanup).
public struct TransactionAbandoned: Error, CustomStringConvertible {
    public init() {}
    public var description: String { "transaction abandoned by a fault point" }
}

/// The observer that observes nothing.
public struct NoObserver: MutationObserver {
    public init() {}
    public func willMutate(_ description: String) throws {}
}

/// A directory opened once, under which every path is resolved one component at a time with
/// `openat(O_NOFOLLOW | O_DIRECTORY)`: a symlink anywhere in a path fails the operation instead
/// of redirecting it, so no write can leave the tree.
final class SafeTree: @unchecked Sendable {
    let fd: Int32
    let display: String
    let observer: any MutationObserver

    init(path: String, observer: any MutationObserver) throws {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else {
            if errno == ENOTDIR { throw ApplyError.notARoot(path: path, "not a directory") }
            throw SystemCallError(call: "open \(path)", code: errno)
        }
        self.fd = fd
        display = path
        self.observer = observer
    }

    init(fd: Int32, display: String, observer: any MutationObserver) {
        self.fd = fd
        self.display = display
        self.observer = observer
    }

    deinit { close(fd) }

    /// A subdirectory, opened component by component without following links; missing
    /// components are created (mode 0700) when `create`.
    func subdirectory(_ path: String, create: Bool = false) throws -> SafeTree {
        var current = dup(fd)
        guard current >= 0 else { throw SystemCallError(call: "dup", code: errno) }
        for component in path.split(separator: "/").map(String.init) {
            var next = openat(current, component, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if next < 0 && errno == ENOENT && create {
                do {
                    try observer.willMutate("mkdir \(component)")
                } catch {
                    close(current)
                    throw error
                }
                if mkdirat(current, component, 0o700) != 0 && errno != EEXIST {
                    let code = errno
                    close(current)
                    throw SystemCallError(call: "mkdir \(display)/\(path)", code: code)
                }
                next = openat(current, component, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            }
            let code = errno
            close(current)
            guard next >= 0 else {
                if code == ELOOP || code == ENOTDIR {
                    throw ApplyError.unsafePath(path: path, "is a symlink or not a directory")
                }
                throw SystemCallError(call: "open \(display)/\(path)", code: code)
            }
            current = next
        }
        return SafeTree(fd: current, display: path.isEmpty ? display : display + "/" + path, observer: observer)
    }

    /// The directory holding `path` (opened component by component, never through a symlink) and
    /// the last component. The caller closes the descriptor unless it is `fd`.
    func parent(of path: String) throws -> (Int32, String) {
        let components = path.split(separator: "/").map(String.init)
        guard let last = components.last else { return (fd, ".") }
        var current = fd
        for component in components.dropLast() {
            let next = openat(current, component, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            let code = errno
            if current != fd { close(current) }
            guard next >= 0 else {
                if code == ELOOP || code == ENOTDIR {
                    throw ApplyError.unsafePath(path: path, "a parent directory is a symlink or not a directory")
                }
                throw SystemCallError(call: "open \(display)/\(component)", code: code)
            }
            current = next
        }
        return (current, last)
    }

    /// Runs `body` with the parent descriptor and last component of `path`.
    func withParent<T>(_ path: String, _ body: (Int32, String) throws -> T) throws -> T {
        let (parentFD, name) = try parent(of: path)
        defer { if parentFD != fd { close(parentFD) } }
        return try body(parentFD, name)
    }

    /// `lstat` of `path`, or nil when it does not exist (a missing parent counts as missing).
    func lstat(_ path: String) -> stat? {
        guard
            let result = try? withParent(
                path,
                { parentFD, name -> stat? in
                    var info = stat()
                    return fstatat(parentFD, name, &info, AT_SYMLINK_NOFOLLOW) == 0 ? info : nil
                }
            )
        else { return nil }
        return result
    }

    func exists(_ path: String) -> Bool { lstat(path) != nil }

    func mkdir(_ path: String, mode: UInt32) throws {
        try observer.willMutate("mkdir \(path)")
        try withParent(path) { parentFD, name in
            guard mkdirat(parentFD, name, 0o700) == 0 else {
                throw SystemCallError(call: "mkdir \(display)/\(path)", code: errno)
            }
        }
        try chmod(path, mode: mode)
    }

    /// Sets permission bits exactly (no umask), refusing symlinks.
    func chmod(_ path: String, mode: UInt32) throws {
        try observer.willMutate("chmod \(path)")
        try withParent(path) { parentFD, name in
            let target = openat(parentFD, name, upgrade_o_path() | O_NOFOLLOW | O_CLOEXEC)
            guard target >= 0 else { throw SystemCallError(call: "open \(display)/\(path)", code: errno) }
            defer { close(target) }
            var info = stat()
            guard fstat(target, &info) == 0 else { throw SystemCallError(call: "stat \(display)/\(path)", code: errno) }
            guard info.st_mode & S_IFMT != S_IFLNK else {
                throw ApplyError.unsafePath(path: path, "is a symlink; refusing to chmod through it")
            }
            // A file with other hard links may share its inode with a path outside the root
            // (anyone who can write the root can plant one): give this path its own copy with the
            // new mode instead of changing the shared inode.
            if info.st_mode & S_IFMT == S_IFREG && info.st_nlink > 1 {
                try replaceWithOwnCopy(parentFD, name, of: target, mode: mode, path: path)
                return
            }
            // fchmod does not take O_PATH descriptors; the /proc link names this exact inode.
            guard Glibc.chmod("/proc/self/fd/\(target)", mode_t(mode)) == 0 else {
                throw SystemCallError(call: "chmod \(display)/\(path)", code: errno)
            }
        }
    }

    /// Replaces `name` in `parentFD` with a private copy of the inode `target` (an O_PATH
    /// descriptor) that has `mode`: written as an unnamed O_TMPFILE inode, fsynced, linked under
    /// a random name and renamed over `name`, so the path is the old or the new inode at any
    /// instant and the shared inode is never touched.
    private func replaceWithOwnCopy(
        _ parentFD: Int32,
        _ name: String,
        of target: Int32,
        mode: UInt32,
        path: String
    )
        throws
    {
        let source = open("/proc/self/fd/\(target)", O_RDONLY | O_CLOEXEC)
        guard source >= 0 else { throw SystemCallError(call: "open \(display)/\(path)", code: errno) }
        defer { close(source) }
        let copy = openat(parentFD, ".", upgrade_o_tmpfile() | O_WRONLY | O_CLOEXEC, 0o600)
        guard copy >= 0 else {
            throw SystemCallError(call: "open a temporary file beside \(display)/\(path)", code: errno)
        }
        defer { close(copy) }
        try Posix.readChunks(source, chunkSize: 1 << 16, what: "\(display)/\(path)") { chunk in
            try Posix.writeAll(copy, chunk, what: "a copy of \(display)/\(path)")
        }
        guard fchmod(copy, mode_t(mode)) == 0 else {
            throw SystemCallError(call: "chmod a copy of \(display)/\(path)", code: errno)
        }
        guard fsync(copy) == 0 else { throw SystemCallError(call: "fsync a copy of \(display)/\(path)", code: errno) }
        let temporary = ".\(name.prefix(200)).upgrade-\(UInt64.random(in: 0...UInt64.max))"
        guard linkat(AT_FDCWD, "/proc/self/fd/\(copy)", parentFD, temporary, AT_SYMLINK_FOLLOW) == 0 else {
            throw SystemCallError(call: "link a copy of \(display)/\(path)", code: errno)
        }
        guard renameat(parentFD, temporary, parentFD, name) == 0 else {
            let code = errno
            unlinkat(parentFD, temporary, 0)
            throw SystemCallError(call: "rename a copy over \(display)/\(path)", code: code)
        }
        guard fsync(parentFD) == 0 else {
            throw SystemCallError(call: "fsync the directory of \(display)/\(path)", code: errno)
        }
    }

    /// Moves `from` (in `source`) to `to` (in this tree). With `replace` false the target must
    /// not exist (renameat2 RENAME_NOREPLACE).
    func rename(from: String, in source: SafeTree, to: String, replace: Bool) throws {
        try observer.willMutate("rename \(from) -> \(to)")
        try source.withParent(from) { fromFD, fromName in
            try withParent(to) { toFD, toName in
                let result =
                    replace
                    ? renameat(fromFD, fromName, toFD, toName)
                    : upgrade_rename_noreplace(fromFD, fromName, toFD, toName)
                guard result == 0 else {
                    throw SystemCallError(call: "rename \(source.display)/\(from) to \(display)/\(to)", code: errno)
                }
            }
        }
    }

    /// Sets owner and extended attributes (``MetadataIO/apply``), then `mode` again (a new owner
    /// clears set-id bits).
    func setMetadata(_ path: String, _ meta: EntryMetadata, mode: UInt32?) throws {
        try observer.willMutate("metadata \(path)")
        try withParent(path) { parentFD, name in
            try MetadataIO.apply(meta, to: parentFD, name, display: "\(display)/\(path)")
            if let mode, fchmodat(parentFD, name, mode_t(mode), 0) != 0 {
                throw SystemCallError(call: "chmod \(display)/\(path)", code: errno)
            }
            // The mode change may have dropped attributes a new owner cleared: set them last.
            if mode != nil, !meta.xattrs.isEmpty {
                try MetadataIO.apply(
                    EntryMetadata(xattrs: meta.xattrs),
                    to: parentFD,
                    name,
                    display: "\(display)/\(path)"
                )
            }
        }
    }

    /// Removes extended attributes (one that is already gone is not an error).
    func removeXattrs(_ path: String, _ names: [String]) throws {
        try observer.willMutate("remove xattrs \(path)")
        try withParent(path) { parentFD, name in
            let proc = "/proc/self/fd/\(parentFD)/\(name)"
            for xattr in names where upgrade_lremovexattr(proc, xattr) != 0 && errno != ENODATA {
                throw SystemCallError(call: "removexattr \(xattr) on \(display)/\(path)", code: errno)
            }
        }
    }

    /// Undoes ``setMetadata(_:_:mode:)``: the old owner and attribute values, and the attributes
    /// `after` added removed.
    func restoreMetadata(_ path: String, _ before: EntryMetadata, replacing after: EntryMetadata, mode: UInt32?) throws
    {
        try observer.willMutate("restore metadata \(path)")
        try withParent(path) { parentFD, name in
            let proc = "/proc/self/fd/\(parentFD)/\(name)"
            for xattr in after.xattrs where !before.xattrs.contains(where: { $0.name == xattr.name }) {
                if upgrade_lremovexattr(proc, xattr.name) != 0 && errno != ENODATA {
                    throw SystemCallError(call: "removexattr \(xattr.name) on \(display)/\(path)", code: errno)
                }
            }
            try MetadataIO.apply(before, to: parentFD, name, display: "\(display)/\(path)")
            if let mode, fchmodat(parentFD, name, mode_t(mode), 0) != 0 {
                throw SystemCallError(call: "chmod \(display)/\(path)", code: errno)
            }
        }
    }

    /// Hard-links `from` (in this tree, not following a symlink) as `to` in `target`.
    func link(_ from: String, into target: SafeTree, as to: String) throws {
        try observer.willMutate("link \(from) -> \(to)")
        try withParent(from) { fromFD, fromName in
            try target.withParent(to) { toFD, toName in
                guard linkat(fromFD, fromName, toFD, toName, 0) == 0 else {
                    throw SystemCallError(call: "link \(display)/\(from) to \(target.display)/\(to)", code: errno)
                }
            }
        }
    }

    func unlink(_ path: String, directory: Bool = false) throws {
        try observer.willMutate("unlink \(path)")
        try withParent(path) { parentFD, name in
            guard unlinkat(parentFD, name, directory ? AT_REMOVEDIR : 0) == 0 else {
                throw SystemCallError(call: "remove \(display)/\(path)", code: errno)
            }
        }
    }

    /// Removes `path` and everything beneath it (never following links); missing is fine.
    func removeTree(_ path: String) throws {
        guard let info = lstat(path) else { return }
        if info.st_mode & S_IFMT == S_IFDIR {
            let child = try subdirectory(path)
            for name in try child.list() { try child.removeTree(name) }
            try unlink(path, directory: true)
        } else {
            try unlink(path)
        }
    }

    /// fsync of the directory holding `path` (or of this directory for "").
    func syncParent(of path: String) throws {
        try withParent(path.isEmpty ? "." : path) { parentFD, _ in
            guard fsync(parentFD) == 0 else { throw SystemCallError(call: "fsync \(display)", code: errno) }
        }
    }

    /// Names in this directory (not `.`/`..`).
    func list() throws -> [String] {
        try withExtendedLifetime(self) { try Posix_list(fd) }
    }

    func sync() throws {
        guard fsync(fd) == 0 else { throw SystemCallError(call: "fsync \(display)", code: errno) }
    }
}

/// Names in a directory descriptor (not `.`/`..`).
func Posix_list(_ fd: Int32) throws -> [String] {
    let duplicate = dup(fd)
    guard duplicate >= 0, let stream = fdopendir(duplicate) else { throw SystemCallError(call: "opendir", code: errno) }
    defer { closedir(stream) }
    rewinddir(stream)
    var names = [String]()
    while let entry = readdir(stream) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) {
            String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        if name != "." && name != ".." { names.append(name) }
    }
    return names
}
