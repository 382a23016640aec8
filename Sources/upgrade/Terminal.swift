import Foundation
import UpgradeSystem

#if canImport(Glibc)
import Glibc
#endif

/// Output helpers: people get listings and summaries on a terminal; pipes get data only.
enum Terminal {
    /// True when standard output is a terminal.
    static var stdoutIsTerminal: Bool { isatty(STDOUT_FILENO) == 1 }

    /// A line on standard error, prefixed for grep-ability.
    static func error(_ message: String) {
        FileHandle.standardError.write(Data("upgrade: \(message)\n".utf8))
    }

    /// A warning on standard error.
    static func warning(_ message: String) {
        FileHandle.standardError.write(Data("upgrade: warning: \(message)\n".utf8))
    }

    /// Raw bytes on standard output.
    static func write(_ bytes: [UInt8]) throws {
        try Posix.writeAll(STDOUT_FILENO, bytes, what: "standard output")
    }

    /// Bytes for people: 1.5 MiB.
    static func bytes(_ count: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(count)
        var unit = 0
        while value >= 1024, unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return unit == 0 ? "\(count) B" : String(format: "%.1f %@", value, units[unit])
    }

    /// "1 file" / "2 files".
    static func count(_ n: Int, _ noun: String) -> String {
        "\(n) \(noun)\(n == 1 ? "" : "s")"
    }
}
