#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A thin, throwing face over the POSIX calls the scanner needs. Everything is relative to an
/// open directory descriptor and never follows a symlink in the last component.
enum Posix {
    /// The message for an errno value.
    static func message(_ code: Int32) -> String { String(cString: strerror(code)) }

    /// `openat` that retries on EINTR.
    static func openAt(_ directory: Int32, _ name: String, _ flags: Int32) throws(SystemCallError) -> Int32 {
        while true {
            let fd = openat(directory, name, flags | O_CLOEXEC)
            if fd >= 0 { return fd }
            if errno != EINTR { throw SystemCallError(call: "open \(name)", code: errno) }
        }
    }

    /// `fstatat(..., AT_SYMLINK_NOFOLLOW)`.
    static func statAt(_ directory: Int32, _ name: String) throws(SystemCallError) -> stat {
        var info = Glibc.stat()
        guard fstatat(directory, name, &info, AT_SYMLINK_NOFOLLOW) == 0 else {
            throw SystemCallError(call: "stat", code: errno)
        }
        return info
    }

    /// `fstat`.
    static func stat(_ fd: Int32) throws(SystemCallError) -> stat {
        var info = Glibc.stat()
        guard fstat(fd, &info) == 0 else { throw SystemCallError(call: "fstat", code: errno) }
        return info
    }

    /// `readlinkat` into a String; the target must be valid UTF-8.
    static func readLink(_ directory: Int32, _ name: String) throws(SystemCallError) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: 4_097)
        let count = buffer.withUnsafeMutableBufferPointer { raw in
            raw.withMemoryRebound(to: CChar.self) { readlinkat(directory, name, $0.baseAddress!, $0.count) }
        }
        guard count >= 0 else { throw SystemCallError(call: "readlink", code: errno) }
        return Array(buffer[..<count])
    }

    /// Reads the names of a directory's entries (not `.` or `..`) as raw bytes. Takes ownership
    /// of `fd` only through `fdopendir`'s duplicate; the caller keeps and closes `fd`.
    static func listDirectory(_ fd: Int32) throws(SystemCallError) -> [[UInt8]] {
        let duplicate = dup(fd)
        guard duplicate >= 0 else { throw SystemCallError(call: "dup", code: errno) }
        guard let stream = fdopendir(duplicate) else {
            let code = errno
            close(duplicate)
            throw SystemCallError(call: "opendir", code: code)
        }
        defer { closedir(stream) }
        var names = [[UInt8]]()
        while true {
            errno = 0
            guard let entry = readdir(stream) else {
                if errno != 0 { throw SystemCallError(call: "readdir", code: errno) }
                break
            }
            let name: [UInt8] = withUnsafeBytes(of: &entry.pointee.d_name) { raw in
                let bytes = raw.bindMemory(to: UInt8.self)
                let length = bytes.firstIndex(of: 0) ?? bytes.count
                return Array(bytes[..<length])
            }
            if name == [0x2e] || name == [0x2e, 0x2e] { continue }
            names.append(name)
        }
        return names
    }
}

/// A failed system call: which one and its errno.
public struct SystemCallError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The call, e.g. "open".
    public let call: String
    /// The errno value.
    public let code: Int32

    /// A failure of `call` with `code`.
    public init(call: String, code: Int32) {
        self.call = call
        self.code = code
    }

    public var description: String { "\(call): \(Posix.message(code))" }
}

/// File kind bits of a `stat`.
extension stat {
    var fileType: UInt32 { st_mode & S_IFMT }
    var permissions: UInt32 { st_mode & 0o7777 }
}
