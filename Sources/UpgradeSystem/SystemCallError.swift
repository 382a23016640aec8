#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A failed system call: which one (with the path it worked on) and its errno.
public struct SystemCallError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The call, e.g. "open /srv/app/lib".
    public let call: String
    /// The errno value.
    public let code: Int32

    /// A failure of `call` with `code`.
    public init(call: String, code: Int32) {
        self.call = call
        self.code = code
    }

    /// A failure of `call` with the current `errno`.
    public static func last(_ call: String) -> SystemCallError { SystemCallError(call: call, code: errno) }

    /// True when the disk or the quota is full.
    public var isNoSpace: Bool { code == ENOSPC || code == EDQUOT }

    public var description: String { "\(call): \(Posix.message(code))" }
}
