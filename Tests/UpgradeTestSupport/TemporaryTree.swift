import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A scratch directory removed when the test ends.
public final class TemporaryTree: Sendable {
    public let root: String

    public init() throws {
        var template = Array((NSTemporaryDirectory() + "/upgrade-test-XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else { throw POSIXError(.EIO) }
        root = String(cString: made)
    }

    deinit {
        // Make everything writable and removable first (tests create read-only directories).
        _ = try? run("/bin/chmod", ["-R", "u+rwx", root])
        try? FileManager.default.removeItem(atPath: root)
    }

    public func path(_ relative: String) -> String { root + "/" + relative }

    @discardableResult
    public func file(_ relative: String, _ content: [UInt8], mode: Int = 0o644) throws -> String {
        let full = path(relative)
        try FileManager.default.createDirectory(
            atPath: (full as NSString).deletingLastPathComponent,
            withIntermediateDirectories: true
        )
        guard FileManager.default.createFile(atPath: full, contents: Data(content)) else { throw POSIXError(.EIO) }
        chmod(full, mode_t(mode))
        return full
    }

    public func file(_ relative: String, _ text: String, mode: Int = 0o644) throws {
        try file(relative, Array(text.utf8), mode: mode)
    }

    public func directory(_ relative: String, mode: Int = 0o755) throws {
        try FileManager.default.createDirectory(atPath: path(relative), withIntermediateDirectories: true)
        chmod(path(relative), mode_t(mode))
    }

    public func symlink(_ relative: String, to target: String) throws {
        try FileManager.default.createSymbolicLink(atPath: path(relative), withDestinationPath: target)
    }
}

/// Runs a program and returns its standard output; throws on a non-zero exit.
@discardableResult
public func run(_ executable: String, _ arguments: [String]) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else { throw POSIXError(.ECHILD) }
    return String(decoding: data, as: UTF8.self)
}

/// Deterministic pseudo-random bytes.
public func noise(_ count: Int, seed: UInt64) -> [UInt8] {
    var state = seed &+ 0x9E37_79B9_7F4A_7C15
    var out = [UInt8]()
    out.reserveCapacity(count)
    while out.count < count {
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        withUnsafeBytes(of: state) { out.append(contentsOf: $0.prefix(count - out.count)) }
    }
    return out
}
