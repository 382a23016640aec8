/// What identifies content before its SHA-256 is known: size and XXH3-128.
public struct ContentKey: Hashable, Sendable {
    public var size: UInt64
    public var xxh128: XXH128Digest

    public init(size: UInt64, xxh128: XXH128Digest) {
        self.size = size
        self.xxh128 = xxh128
    }

    /// The key of a file's content.
    public init(_ content: FileContent) {
        self.init(size: content.size, xxh128: content.xxh128)
    }
}

/// Choosing, for each file a plan writes, the file the client already has that a binary delta
/// can start from.
extension Plan {
    /// Target path → base path in `client`: a replaced file's own old content; for an added path,
    /// the most similar file of the client (same directory and extension, a name equal once
    /// version and hash runs are removed, e.g. `libfoo-1a2b.so` → `libfoo-3c4d.so`, and the
    /// closest size within a factor of two).
    public func deltaBases(client: Manifest) -> [String: String] {
        let index = client.index()
        var byDirectoryAndStem = [String: [(path: String, size: UInt64)]]()
        for entry in client.entries {
            guard let file = entry.file else { continue }
            byDirectoryAndStem[Self.similarityKey(entry.path), default: []].append((entry.path, file.size))
        }
        var bases = [String: String]()
        for operation in operations {
            switch operation {
            case .replace(let path, _, _):
                if index[path]?.file != nil { bases[path] = path }
            case .add(let path, _, let content):
                if index[path]?.file != nil {
                    bases[path] = path  // kind changed back to a file: unlikely, but the old bytes may help
                    continue
                }
                let candidates = byDirectoryAndStem[Self.similarityKey(path)] ?? []
                let close = candidates.filter { candidate in
                    candidate.size > 0 && content.size > 0 && candidate.size <= content.size * 2
                        && content.size <= candidate.size * 2
                }
                if let best = close.min(by: {
                    Self.distance($0.size, content.size) < Self.distance($1.size, content.size)
                }) {
                    bases[path] = best.path
                }
            default: break
            }
        }
        return bases
    }

    private static func distance(_ a: UInt64, _ b: UInt64) -> UInt64 { a > b ? a - b : b - a }

    /// Directory + name with digit runs and hash-like runs (4+ hex characters with a digit)
    /// removed: `lib/libfoo-1a2b.so.3` and `lib/libfoo-3c4d.so.4` share a key.
    static func similarityKey(_ path: String) -> String {
        let directory = PathRules.parent(of: path) ?? ""
        let name = path.split(separator: "/").last.map(String.init) ?? path
        var stem = ""
        var run = ""
        func flush() {
            let isHashLike = run.count >= 4 && run.contains(where: \.isNumber)
            let isNumber = run.allSatisfy(\.isNumber)
            if !(isHashLike || (isNumber && !run.isEmpty)) { stem += run }
            run = ""
        }
        for character in name {
            if character.isHexDigit && character.isASCII {
                run.append(character)
            } else {
                flush()
                stem.append(character)
            }
        }
        flush()
        return directory + "/" + stem
    }
}
