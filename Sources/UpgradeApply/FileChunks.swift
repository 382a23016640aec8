import Crypto
public import UpgradeCore
import UpgradeSystem

#if canImport(Glibc)
import Glibc
#endif

/// The SHA-256 and length of what `fd` holds from its start (the file position is left alone).
public func sha256(of fd: Int32, what: String) throws -> (SHA256Hash, UInt64) {
    var hasher = SHA256()
    let count = try Posix.readChunks(fd, from: 0, what: what) { hasher.update(bufferPointer: $0) }
    return (SHA256Hash(bytes: Array(hasher.finalize()))!, count)
}
