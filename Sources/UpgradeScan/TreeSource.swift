public import UpgradeCore
public import UpgradeSystem

#if canImport(Glibc)
import Glibc
#endif

/// Where a manifest comes from on the command line: a directory to scan or a manifest file.
public enum TreeSource {
    /// Where the stat cache of a scan lives.
    public enum CacheLocation: Sendable, Equatable {
        /// `ROOT/.upgrade/statcache`, used only when the state directory already exists, so that
        /// scanning a directory never creates files in it.
        case stateDirectory
        /// An explicit file, created when missing.
        case file(String)
        /// No cache: hash everything, write nothing.
        case none
        /// An existing file, read but never written (read-only commands such as `verify`).
        case readOnly(String)
    }

    /// The default state directory name inside a root.
    public static let stateDirectoryName = ".upgrade"

    /// A manifest from `path`: scanned when it is a directory, decoded when it is a file.
    public static func load(
        _ path: String,
        options: ScanOptions = ScanOptions(),
        cache: CacheLocation = .stateDirectory
    ) async throws -> (manifest: Manifest, scan: ScanResult?) {
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw TreeSourceError.missing(path: path, SystemCallError(call: "stat", code: errno))
        }
        if info.st_mode & S_IFMT == S_IFDIR {
            let result = try await scan(path, options: options, cache: cache)
            return (result.manifest, result)
        }
        let bytes: [UInt8]
        do {
            bytes = try AtomicFile.read(path)
        } catch {
            throw TreeSourceError.missing(path: path, error)
        }
        do {
            return (try Manifest(decoding: bytes), nil)
        } catch {
            throw TreeSourceError.badManifest(path: path, error)
        }
    }

    /// Scans a root, reading and updating its stat cache.
    public static func scan(
        _ root: String,
        options: ScanOptions = ScanOptions(),
        cache location: CacheLocation = .stateDirectory
    ) async throws -> ScanResult {
        let cacheFile: String?
        switch location {
        case .none: cacheFile = nil
        case .file(let file): cacheFile = file
        case .readOnly(let file): cacheFile = file
        case .stateDirectory:
            let state = root + "/" + stateDirectoryName
            var info = stat()
            let exists = lstat(state, &info) == 0 && info.st_mode & S_IFMT == S_IFDIR
            cacheFile = exists ? state + "/statcache" : nil
        }
        let cache = cacheFile.flatMap { try? AtomicFile.read($0) }.flatMap(StatCache.init(encoded:)) ?? StatCache()
        let result = try await Scanner(options: options).scan(root: root, cache: cache)
        if let cacheFile, result.statCacheChanged, location != .readOnly(cacheFile) {
            // A cache that cannot be written costs the next scan time, not correctness.
            try? AtomicFile.write(result.statCache.encoded(), to: cacheFile, mode: 0o600)
        }
        return result
    }
}

/// A command-line tree source that cannot be used.
public enum TreeSourceError: Error, CustomStringConvertible {
    /// The path does not exist or cannot be read.
    case missing(path: String, SystemCallError)
    /// The file is not a valid manifest.
    case badManifest(path: String, ManifestDecodingError)

    public var description: String {
        switch self {
        case .missing(let path, let error): "cannot read \(path.debugDescription): \(error)"
        case .badManifest(let path, let error): "\(path.debugDescription): \(error)"
        }
    }
}
