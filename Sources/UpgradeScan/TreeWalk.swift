#if canImport(Glibc)
import Glibc
#endif
import UpgradeCore

/// One path found by the walk, before hashing.
struct WalkRecord {
    var path: String
    var kind: EntryKind
    var mode: UInt32
    var identity: FileIdentity
    var target: String = ""
    var xxh128 = XXH128Digest(high: 0, low: 0)
}

/// A file whose content must be read.
struct HashJob: Sendable {
    /// Index into the walk's records.
    var record: Int
    var path: String
    var identity: FileIdentity
}

/// Depth-first walk with `openat`/`fstatat` relative to open directory descriptors: no path is
/// resolved twice and no symlink is followed. Only the ancestors of the current directory are
/// open, so descriptors stay bounded by the depth limit.
struct TreeWalk {
    let options: ScanOptions
    let cache: StatCache
    var records: [WalkRecord] = []
    var pending: [HashJob] = []
    var warnings: [ScanWarning] = []
    var cacheHits = 0

    init(options: ScanOptions, cache: StatCache) {
        self.options = options
        self.cache = cache
    }

    mutating func walk(directoryFD: Int32, prefix: String) throws(ScanError) {
        let names: [[UInt8]]
        do {
            names = try Posix.listDirectory(directoryFD)
        } catch {
            throw .unreadable(path: prefix.isEmpty ? "." : prefix, error)
        }
        for rawName in names {
            guard let name = String(validating: rawName, as: UTF8.self) else {
                let shown = prefix.isEmpty ? String(decoding: rawName, as: UTF8.self) : prefix + "/" + String(decoding: rawName, as: UTF8.self)
                throw .invalidPath(PathError(path: shown, rule: .invalidUTF8))
            }
            let path = prefix.isEmpty ? name : prefix + "/" + name
            if options.excluded.contains(path) { continue }
            do {
                try PathRules.validate(path)
            } catch {
                throw .invalidPath(error)
            }
            let info: stat
            do {
                info = try Posix.statAt(directoryFD, name)
            } catch {
                // Vanished between readdir and stat: it is not part of the tree any more.
                if error.code == ENOENT { continue }
                throw .unreadable(path: path, error)
            }
            let identity = FileIdentity(info)
            switch info.fileType {
            case S_IFREG:
                let index = records.count
                records.append(WalkRecord(path: path, kind: .file, mode: info.permissions, identity: identity))
                if let hash = cache.hash(for: path, identity: identity) {
                    records[index].xxh128 = hash
                    cacheHits += 1
                } else {
                    pending.append(HashJob(record: index, path: path, identity: identity))
                }
            case S_IFDIR:
                records.append(WalkRecord(path: path, kind: .directory, mode: info.permissions, identity: identity))
                let child: Int32
                do {
                    child = try Posix.openAt(directoryFD, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
                } catch {
                    throw .unreadable(path: path, error)
                }
                defer { close(child) }
                try walk(directoryFD: child, prefix: path)
            case S_IFLNK:
                let raw: [UInt8]
                do {
                    raw = try Posix.readLink(directoryFD, name)
                } catch {
                    throw .unreadable(path: path, error)
                }
                guard let target = String(validating: raw, as: UTF8.self) else {
                    throw .invalidPath(PathError(path: path, rule: .invalidUTF8))
                }
                do {
                    try PathRules.validateSymlinkTarget(target, of: path)
                } catch {
                    throw .invalidPath(error)
                }
                records.append(WalkRecord(path: path, kind: .symlink, mode: 0, identity: identity, target: target))
            default:
                let kind = Self.describe(info.fileType)
                switch options.specialFiles {
                case .reject: throw .specialFile(path: path, kind: kind)
                case .skip: warnings.append(ScanWarning(path: path, reason: "it is a \(kind)"))
                }
            }
        }
    }

    static func describe(_ type: UInt32) -> String {
        switch type {
        case S_IFCHR: "character device"
        case S_IFBLK: "block device"
        case S_IFIFO: "FIFO"
        case S_IFSOCK: "socket"
        default: "file of unknown type"
        }
    }
}
