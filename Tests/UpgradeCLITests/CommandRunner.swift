import Foundation

/// Runs the built `upgrade` binary, as a user or a script would.
struct CommandResult {
    let status: Int32
    let stdout: Data
    let stderr: String
    var text: String { String(decoding: stdout, as: UTF8.self) }
}

enum Upgrade {
    /// The binary next to the test bundle (`.build/<triple>/debug/upgrade`), or `$UPGRADE_BINARY`.
    static let binary: String = {
        if let explicit = ProcessInfo.processInfo.environment["UPGRADE_BINARY"] { return explicit }
        var directory = Bundle.main.bundleURL
        for _ in 0..<3 {
            let candidate = directory.appendingPathComponent("upgrade").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            directory.deleteLastPathComponent()
        }
        let fallback = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../.build/debug/upgrade").standardized.path
        return fallback
    }()

    @discardableResult
    static func run(
        _ arguments: [String],
        stdin: Data? = nil,
        environment: [String: String]? = nil
    ) throws
        -> CommandResult
    {
        try runProgram(binary, arguments, environment: environment)
    }
}

/// `environment` adds to (or, with an empty value, removes from) the test process's own.
func runProgram(
    _ executable: String,
    _ arguments: [String],
    environment: [String: String]? = nil
) throws
    -> CommandResult
{
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    if let environment {
        var merged = ProcessInfo.processInfo.environment
        for (name, value) in environment { merged[name] = value.isEmpty ? nil : value }
        process.environment = merged
    }
    let out = Pipe()
    let err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    // Read both pipes concurrently so a chatty stderr cannot block the child.
    nonisolated(unsafe) var errorData = Data()
    let reader = Thread { errorData = err.fileHandleForReading.readDataToEndOfFile() }
    reader.start()
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    while !reader.isFinished { usleep(1000) }
    return CommandResult(
        status: process.terminationStatus,
        stdout: outData,
        stderr: String(decoding: errorData, as: UTF8.self)
    )
}

/// `xxhsum -H2` of every file under `root`, keyed by path relative to `root`.
func referenceHashes(_ root: String) throws -> [String: String] {
    let result = try runProgram(
        "/bin/sh",
        ["-c", "cd \"$1\" && find . -type f -print0 | xargs -0 -r xxhsum -H2", "sh", root]
    )
    precondition(result.status == 0, "xxhsum failed: \(result.stderr) (install the Debian package xxhash)")
    var hashes = [String: String]()
    for line in result.text.split(separator: "\n") {
        // "<32 hex>  ./path"
        let hash = String(line.prefix(32))
        var path = String(line.dropFirst(34))
        if path.hasPrefix("./") { path.removeFirst(2) }
        hashes[path] = hash
    }
    return hashes
}

/// `upgrade status --root ROOT --json`, read the way a script would.
struct StatusDocument {
    let json: [String: Any]

    init(root: String) throws {
        let result = try Upgrade.run(["status", "--root", root, "--json"])
        json = (try? JSONSerialization.jsonObject(with: result.stdout) as? [String: Any]) ?? [:]
    }

    /// The installed version, nil when nothing is installed.
    var version: String? { (json["installed"] as? [String: Any])?["version"] as? String }
    var pendingJournal: [String: Any]? { json["pendingJournal"] as? [String: Any] }
}
