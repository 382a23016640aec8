#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A thin, throwing face over the POSIX calls the project makes: every loop that retries
/// `EINTR` or a short read or write is here, once. Paths are relative to an open directory
/// descriptor where a call takes one, and never follow a symlink in the last component unless
/// the caller's flags say so. `what` names the file in an error ("read /srv/app/lib/a.so"); an
/// empty `what` leaves the naming to the caller's own error.
public enum Posix {
    /// The message for an errno value.
    public static func message(_ code: Int32) -> String { String(cString: strerror(code)) }

    /// `openat` (with `O_CLOEXEC`) that retries on EINTR.
    public static func openAt(
        _ directory: Int32,
        _ name: String,
        _ flags: Int32,
        mode: mode_t = 0o644,
        what: String? = nil
    ) throws(SystemCallError) -> Int32 {
        while true {
            let fd = openat(directory, name, flags | O_CLOEXEC, mode)
            if fd >= 0 { return fd }
            if errno != EINTR { throw .last("open \(what ?? name)") }
        }
    }

    /// `fstatat(..., AT_SYMLINK_NOFOLLOW)`.
    public static func statAt(_ directory: Int32, _ name: String) throws(SystemCallError) -> stat {
        var info = Glibc.stat()
        guard fstatat(directory, name, &info, AT_SYMLINK_NOFOLLOW) == 0 else { throw .last("stat") }
        return info
    }

    /// `fstat`.
    public static func stat(_ fd: Int32) throws(SystemCallError) -> stat {
        var info = Glibc.stat()
        guard fstat(fd, &info) == 0 else { throw .last("fstat") }
        return info
    }

    /// `readlinkat`: the target's bytes.
    public static func readLink(_ directory: Int32, _ name: String) throws(SystemCallError) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: 4_097)
        let count = buffer.withUnsafeMutableBufferPointer { raw in
            raw.withMemoryRebound(to: CChar.self) { readlinkat(directory, name, $0.baseAddress!, $0.count) }
        }
        guard count >= 0 else { throw .last("readlink") }
        return Array(buffer[..<count])
    }

    /// Calls `body` with each name of the directory `fd` (not `.` and `..`), in readdir order,
    /// as bytes valid only during the call: listing allocates nothing per name. Reads through a
    /// duplicate of `fd` (`fdopendir` takes that); the caller keeps and closes `fd`.
    public static func forEachName(
        _ fd: Int32,
        _ body: (UnsafeBufferPointer<UInt8>) throws(SystemCallError) -> Void
    ) throws(SystemCallError) {
        let duplicate = dup(fd)
        guard duplicate >= 0 else { throw .last("dup") }
        guard let stream = fdopendir(duplicate) else {
            let code = errno
            close(duplicate)
            throw SystemCallError(call: "opendir", code: code)
        }
        defer { closedir(stream) }
        // The duplicate shares the caller's directory position: start from the first entry.
        rewinddir(stream)
        while true {
            errno = 0
            guard let entry = readdir(stream) else {
                if errno != 0 { throw .last("readdir") }
                break
            }
            let length = strlen(&entry.pointee.d_name.0)
            try withUnsafeBytes(of: &entry.pointee.d_name) { (raw) throws(SystemCallError) in
                let name = UnsafeBufferPointer(start: raw.bindMemory(to: UInt8.self).baseAddress, count: length)
                if name.count == 1 && name[0] == 0x2e || name.count == 2 && name[0] == 0x2e && name[1] == 0x2e {
                    return
                }
                try body(name)
            }
        }
    }

    // MARK: Reading

    /// One `read` (or `pread` at `offset`) into `buffer[start ..< start + count]` (to the end of
    /// the buffer when `count` is nil), retried on EINTR; 0 at the end of the file.
    public static func read(
        _ fd: Int32,
        into buffer: inout [UInt8],
        from start: Int = 0,
        count: Int? = nil,
        at offset: UInt64? = nil,
        what: String
    ) throws(SystemCallError) -> Int {
        let wanted = count ?? (buffer.count - start)
        precondition(start >= 0 && wanted >= 0 && start + wanted <= buffer.count, "read past the buffer")
        guard wanted > 0 else { return 0 }
        while true {
            let done = buffer.withUnsafeMutableBytes { raw in readOnce(fd, raw.baseAddress! + start, wanted, offset) }
            if done >= 0 { return done }
            if errno != EINTR { throw .last(named("read", what)) }
        }
    }

    /// Fills `buffer` (from `offset` when given) unless the file ends first; returns the count.
    public static func readFully(
        _ fd: Int32,
        into buffer: inout [UInt8],
        at offset: UInt64? = nil,
        what: String
    ) throws(SystemCallError) -> Int {
        var done = 0
        while done < buffer.count {
            let count = try read(fd, into: &buffer, from: done, at: offset.map { $0 + UInt64(done) }, what: what)
            if count == 0 { break }
            done += count
        }
        return done
    }

    /// Calls `body` with what `fd` holds, chunk by chunk, to its end: from the file position,
    /// or with `pread` from `offset` (the position is then left alone). Returns the byte count.
    @discardableResult
    public static func readChunks(
        _ fd: Int32,
        from offset: UInt64? = nil,
        chunkSize: Int = 1 << 20,
        what: String,
        _ body: (UnsafeRawBufferPointer) throws -> Void
    ) throws -> UInt64 {
        var buffer = [UInt8](repeating: 0, count: chunkSize)
        var total: UInt64 = 0
        while true {
            let count = try read(fd, into: &buffer, at: offset.map { $0 + total }, what: what)
            if count == 0 { return total }
            try buffer.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[..<count])) }
            total += UInt64(count)
        }
    }

    /// Everything from the file position to the end.
    public static func readAll(_ fd: Int32, what: String) throws(SystemCallError) -> [UInt8] {
        // A regular file is read straight into one buffer of its size (a 56 MB stat cache in
        // ~1 ms instead of 900 appends and a doubling copy); what it grew by since, in chunks.
        var info = Glibc.stat()
        let expected = fstat(fd, &info) == 0 && info.st_mode & S_IFMT == S_IFREG ? Int(info.st_size) : 0
        var failure: SystemCallError?
        var out = [UInt8](unsafeUninitializedCapacity: expected) { buffer, initialized in
            while initialized < expected {
                let count = readOnce(fd, buffer.baseAddress! + initialized, expected - initialized, nil)
                if count < 0 && errno == EINTR { continue }
                if count < 0 { failure = .last(named("read", what)) }
                if count <= 0 { return }
                initialized += count
            }
        }
        if let failure { throw failure }
        guard out.count == expected else { return out }
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let count = try read(fd, into: &chunk, what: what)
            if count == 0 { return out }
            out.append(contentsOf: chunk[..<count])
        }
    }

    private static func readOnce(_ fd: Int32, _ base: UnsafeMutableRawPointer, _ count: Int, _ offset: UInt64?) -> Int {
        if let offset { pread(fd, base, count, off_t(offset)) } else { Glibc.read(fd, base, count) }
    }

    /// "read PATH", or "read" when the caller names the file itself.
    private static func named(_ call: String, _ what: String) -> String { what.isEmpty ? call : "\(call) \(what)" }

    // MARK: Writing

    /// Writes all of `bytes`, retrying EINTR and short writes.
    public static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, what: String) throws(SystemCallError) {
        guard let base = bytes.baseAddress else { return }
        var offset = 0
        while offset < bytes.count {
            let count = Glibc.write(fd, base + offset, bytes.count - offset)
            if count < 0 {
                if errno == EINTR { continue }
                throw .last(named("write", what))
            }
            offset += count
        }
    }

    /// Writes all of `bytes`, retrying EINTR and short writes.
    public static func writeAll(_ fd: Int32, _ bytes: [UInt8], what: String) throws(SystemCallError) {
        var offset = 0
        while offset < bytes.count {
            let count = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if count < 0 {
                if errno == EINTR { continue }
                throw .last(named("write", what))
            }
            offset += count
        }
    }
}
