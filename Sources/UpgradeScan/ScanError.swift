public import UpgradeCore
public import UpgradeSystem

/// Why a scan failed. Every case names the path a person has to look at.
public enum ScanError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The root cannot be opened as a directory.
    case rootUnusable(root: String, SystemCallError)
    /// A device, FIFO or socket sits in the tree (use `--skip-special` to skip such files).
    case specialFile(path: String, kind: String)
    /// A path or symlink target breaks the path rules.
    case invalidPath(PathError)
    /// A path could not be read.
    case unreadable(path: String, SystemCallError)
    /// A file changed between being listed and being hashed.
    case changedDuringScan(path: String)

    public var description: String {
        switch self {
        case .rootUnusable(let root, let error):
            "cannot scan \(root.debugDescription): \(error)"
        case .specialFile(let path, let kind):
            "\(path.debugDescription) is a \(kind); only files, directories and symlinks can be part of a release "
                + "(pass --skip-special to skip it with a warning)"
        case .invalidPath(let error):
            "\(error)"
        case .unreadable(let path, let error):
            "cannot read \(path.debugDescription): \(error)"
        case .changedDuringScan(let path):
            "\(path.debugDescription) changed while it was being scanned; scan again when the tree is quiet"
        }
    }
}

/// Something a scan skipped on request.
public struct ScanWarning: Hashable, Sendable, CustomStringConvertible {
    /// The path skipped.
    public let path: String
    /// Why.
    public let reason: String

    /// A warning about `path`.
    public init(path: String, reason: String) {
        self.path = path
        self.reason = reason
    }

    public var description: String { "skipped \(path.debugDescription): \(reason)" }
}
