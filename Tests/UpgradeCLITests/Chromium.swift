import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Debian's headless Chromium loading a page the way a person's browser would: scripts run,
/// fetches answered, then the DOM as it stands and a screenshot.
enum Chromium {
    static let binary: String? = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first {
        FileManager.default.isExecutableFile(atPath: $0)
    }

    /// Why the browser tests cannot run here, or nil.
    static let unavailable: String? = {
        guard binary != nil else { return "chromium is not installed (apt-get install chromium)" }
        return nil
    }()

    /// Where screenshots are kept after the run: `.build/test-artifacts/`.
    static let artifacts: String = {
        let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../.build/test-artifacts").standardized.path
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        return directory
    }()

    static func arguments(_ profile: String) -> [String] {
        [
            "60", binary ?? "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--user-data-dir=\(profile)", "--virtual-time-budget=5000",
        ]
    }

    /// The DOM after the page's scripts ran (at most 5 s of virtual time).
    static func dom(_ url: String, profile: String) throws -> CommandResult {
        try runProgram("/usr/bin/timeout", arguments(profile) + ["--dump-dom", url], environment: ["HOME": profile])
    }

    /// A 1280x900 screenshot of `url` at `path`.
    static func screenshot(_ url: String, to path: String, profile: String) throws -> CommandResult {
        try runProgram(
            "/usr/bin/timeout",
            arguments(profile) + ["--window-size=1280,900", "--hide-scrollbars", "--screenshot=\(path)", url],
            environment: ["HOME": profile]
        )
    }

    /// The text of the table with `id` in a dumped DOM, one string per body row, cells joined by " | ".
    static func rows(_ dom: String, table id: String) -> [String] {
        guard let start = dom.range(of: "id=\"\(id)\""),
            let body = dom.range(of: "<tbody>", range: start.upperBound..<dom.endIndex),
            let end = dom.range(of: "</tbody>", range: body.upperBound..<dom.endIndex)
        else { return [] }
        return dom[body.upperBound..<end.lowerBound].components(separatedBy: "</tr>").compactMap { row in
            let cells = row.components(separatedBy: "</td>").dropLast().map { cell in
                cell.replacingOccurrences(of: #"<[^>]*>"#, with: "", options: .regularExpression)
            }
            return cells.isEmpty ? nil : cells.joined(separator: " | ")
        }
    }
}
