import UpgradeSystem
public import UpgradeTrust

#if canImport(Glibc)
import Glibc
#endif

/// Key files on disk.
public enum KeyFiles {
    /// Writes a new key pair: the private key to `path` (mode 0600, created exclusively unless
    /// `overwrite`), the public key to `path.pub`. Returns the public key.
    public static func generate(at path: String, overwrite: Bool) throws -> PublicKey {
        let key = PrivateKey()
        let publicPath = path + ".pub"
        if !overwrite {
            for existing in [path, publicPath] where FileSystem.exists(existing) {
                throw KeyFileError.exists(existing)
            }
        }
        // The private key never exists with a looser mode: the temporary file is created 0600
        // and exclusively, before any byte is written.
        let temporary = "\(path).tmp-\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw SystemCallError(call: "open \(temporary)", code: errno) }
        do {
            defer { close(fd) }
            try Posix.writeAll(fd, Array(key.text.utf8), what: temporary)
            guard fsync(fd) == 0 else { throw SystemCallError(call: "fsync \(temporary)", code: errno) }
        } catch {
            unlink(temporary)
            throw error
        }
        // link() fails when the target exists: a key created meanwhile is never replaced.
        if overwrite {
            guard rename(temporary, path) == 0 else { throw SystemCallError(call: "rename \(path)", code: errno) }
        } else {
            defer { unlink(temporary) }
            guard link(temporary, path) == 0 else {
                if errno == EEXIST { throw KeyFileError.exists(path) }
                throw SystemCallError(call: "link \(path)", code: errno)
            }
        }
        try AtomicFile.write(Array((key.publicKey.text + "\n").utf8), to: publicPath, mode: 0o644)
        return key.publicKey
    }

    /// Reads a private key file; refuses one that others can read.
    public static func loadPrivate(_ path: String) throws -> PrivateKey {
        var info = stat()
        guard stat(path, &info) == 0 else { throw SystemCallError(call: "stat \(path)", code: errno) }
        if info.st_mode & 0o077 != 0 { throw KeyFileError.tooOpen(path, mode: info.st_mode & 0o777) }
        let text = String(decoding: try AtomicFile.read(path), as: UTF8.self)
        do {
            return try PrivateKey(text: text)
        } catch {
            throw KeyFileError.unreadable(path, "\(error)")
        }
    }

    /// Trusted keys from `--trust` values: each is a key in text form (`ed25519:…`) or the path
    /// of a file holding one key per line. Commas separate several values.
    ///
    /// A file holding a signed root of trust (`upgrade root init` writes `REPO/roots/1.json`) is
    /// the anchor instead: it must carry a threshold of its own root keys, and from it a client
    /// walks forward to the repository's newest root. Roots and bare keys do not mix.
    public static func loadTrusted(_ values: [String]) throws -> TrustedKeys {
        var keys = [PublicKey]()
        var roots = [(String, RootDocument)]()
        for value in values.flatMap({ $0.split(separator: ",").map(String.init) }) {
            if value.hasPrefix("ed25519:") {
                do {
                    keys.append(try PublicKey(text: value))
                } catch {
                    throw KeyFileError.unreadable("--trust ed25519:…", "\(error)")
                }
                continue
            }
            let bytes = try AtomicFile.read(value)
            if bytes.first(where: { $0 != 0x20 && $0 != 0x0a && $0 != 0x09 }) == UInt8(ascii: "{") {
                do {
                    roots.append((value, try RootDocument.verifyAnchor(SignedEnvelope(encoded: bytes))))
                } catch {
                    throw KeyFileError.unreadable(value, "not a valid signed root: \(error)")
                }
                continue
            }
            let text = String(decoding: bytes, as: UTF8.self)
            for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated()
            where !line.trimmingPrefix(" ").isEmpty && !line.hasPrefix("#") {
                do {
                    keys.append(try PublicKey(text: String(line)))
                } catch {
                    throw KeyFileError.unreadable("\(value):\(number + 1)", "\(error)")
                }
            }
        }
        if let (path, newest) = roots.max(by: { $0.1.version < $1.1.version }) {
            guard keys.isEmpty else {
                throw KeyFileError.unreadable(path, "a root of trust cannot be combined with bare --trust keys")
            }
            return TrustedKeys(root: newest)
        }
        guard !keys.isEmpty else { throw KeyFileError.noTrustedKey }
        return TrustedKeys(keys)
    }
}

/// A key file that cannot be used.
public enum KeyFileError: Error, CustomStringConvertible {
    case exists(String)
    case tooOpen(String, mode: UInt32)
    case unreadable(String, String)
    case noTrustedKey

    public var description: String {
        switch self {
        case .exists(let path):
            "\(path.debugDescription) already exists; refusing to overwrite a key (pass --force to replace it)"
        case .tooOpen(let path, let mode):
            "private key \(path.debugDescription) has mode \(String(mode, radix: 8)); run chmod 600 on it"
        case .unreadable(let path, let why): "\(path.debugDescription): \(why)"
        case .noTrustedKey: "no trusted key given (--trust ed25519:… or a file of keys)"
        }
    }
}
