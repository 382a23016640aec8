#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// File kind bits of a `stat`.
extension stat {
    var fileType: UInt32 { st_mode & S_IFMT }
    var permissions: UInt32 { st_mode & 0o7777 }
}
