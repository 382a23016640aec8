import Crypto
public import UpgradeCore
import UpgradeScan

#if canImport(Glibc)
import Glibc
#endif

/// Reads what `fd` holds from its start to its end in 1 MiB chunks (`pread`, so the file
/// position is left alone); returns the byte count.
@discardableResult
public func readChunks(_ fd: Int32, what: String, _ body: (UnsafeRawBufferPointer) throws -> Void) throws -> UInt64 {
    var buffer = [UInt8](repeating: 0, count: 1 << 20)
    var offset: UInt64 = 0
    while true {
        let n = pread(fd, &buffer, buffer.count, off_t(offset))
        if n < 0 && errno == EINTR { continue }
        guard n >= 0 else { throw SystemCallError(call: "read \(what)", code: errno) }
        if n == 0 { return offset }
        try buffer.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[..<n])) }
        offset += UInt64(n)
    }
}

/// The SHA-256 and length of what `fd` holds.
public func sha256(of fd: Int32, what: String) throws -> (SHA256Hash, UInt64) {
    var hasher = SHA256()
    let count = try readChunks(fd, what: what) { hasher.update(bufferPointer: $0) }
    return (SHA256Hash(bytes: Array(hasher.finalize()))!, count)
}
