internal import CUpgradeSys
public import UpgradeCore

#if canImport(Glibc)
import Glibc
#endif

/// Reading and writing what a manifest's ``EntryMetadata`` describes: owners (by name, numeric
/// fallback), extended attributes (through `/proc/self/fd/N/NAME` with the `l*xattr` calls, so
/// neither a parent nor the entry itself is followed as a symlink), inode identity and
/// sparseness.
public enum MetadataIO {
    /// What an entry has on disk.
    public struct Observed: Sendable {
        public var uid: UInt32
        public var gid: UInt32
        /// Permission bits.
        public var mode: UInt32
        public var isSymlink: Bool
        public var device: UInt64
        public var inode: UInt64
        public var links: UInt64
        /// Allocated bytes below the size: a file with holes.
        public var sparse: Bool
        public var xattrs: [ExtendedAttribute]
    }

    /// The entry `name` in the directory `parentFD`; nil when it does not exist.
    public static func observe(_ parentFD: Int32, _ name: String, xattrs: Bool) -> Observed? {
        var info = stat()
        guard fstatat(parentFD, name, &info, AT_SYMLINK_NOFOLLOW) == 0 else { return nil }
        let isFile = info.st_mode & S_IFMT == S_IFREG
        return Observed(
            uid: info.st_uid,
            gid: info.st_gid,
            mode: UInt32(info.st_mode & 0o7777),
            isSymlink: info.st_mode & S_IFMT == S_IFLNK,
            device: UInt64(info.st_dev),
            inode: UInt64(info.st_ino),
            links: UInt64(info.st_nlink),
            sparse: isFile && info.st_size > 0 && Int64(info.st_blocks) * 512 < Int64(info.st_size),
            xattrs: xattrs ? read(procPath(parentFD, name)) : []
        )
    }

    /// The owner with names where this machine has them.
    public static func owner(uid: UInt32, gid: UInt32) -> Owner {
        Owner(user: userName(uid), uid: uid, group: groupName(gid), gid: gid)
    }

    /// The ids `owner` stands for here: its names looked up, else its numbers.
    public static func ids(_ owner: Owner) -> (uid: UInt32, gid: UInt32) {
        (owner.user.flatMap(userID) ?? owner.uid, owner.group.flatMap(groupID) ?? owner.gid)
    }

    /// Sets owner (not following a symlink), then the attributes the release names. Ownership
    /// first: a change of owner clears set-id bits and `security.capability`, which the caller
    /// restores (mode) and this sets (attributes) afterwards.
    public static func apply(
        _ meta: EntryMetadata,
        to parentFD: Int32,
        _ name: String,
        display: String
    ) throws(MetadataError) {
        if let owner = meta.owner, geteuid() == 0 {
            let (uid, gid) = ids(owner)
            guard fchownat(parentFD, name, uid, gid, AT_SYMLINK_NOFOLLOW) == 0 else {
                throw MetadataError(call: "chown \(display) to \(owner)", code: errno)
            }
        }
        let path = procPath(parentFD, name)
        for xattr in meta.xattrs {
            let result = xattr.value.withUnsafeBytes { upgrade_lsetxattr(path, xattr.name, $0.baseAddress, $0.count) }
            guard result == 0 else { throw MetadataError(call: "setxattr \(xattr.name) on \(display)", code: errno) }
        }
    }

    /// True when what is on disk is what `meta` asks for (owner, the named attributes; links and
    /// holes are the caller's).
    public static func satisfies(_ observed: Observed, _ meta: EntryMetadata) -> Bool {
        if let owner = meta.owner, geteuid() == 0 {
            let (uid, gid) = ids(owner)
            if observed.uid != uid || observed.gid != gid { return false }
        }
        for xattr in meta.xattrs where !observed.xattrs.contains(xattr) { return false }
        return true
    }

    /// Every extended attribute of `path` (a `/proc/self/fd` path), sorted by name.
    static func read(_ path: String) -> [ExtendedAttribute] {
        var size = upgrade_llistxattr(path, nil, 0)
        guard size > 0 else { return [] }
        var names = [CChar](repeating: 0, count: size + 256)
        size = upgrade_llistxattr(path, &names, names.count)
        guard size > 0 else { return [] }
        var result = [ExtendedAttribute]()
        for raw in names[..<size].split(separator: 0) {
            let name = String(decoding: raw.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let length = upgrade_lgetxattr(path, name, nil, 0)
            guard length >= 0 else { continue }
            var value = [UInt8](repeating: 0, count: length)
            let got = value.withUnsafeMutableBytes { upgrade_lgetxattr(path, name, $0.baseAddress, length) }
            guard got >= 0 else { continue }
            result.append(ExtendedAttribute(name: name, value: Array(value[..<got])))
        }
        return result.sorted { PathRules.byteOrder($0.name, $1.name) }
    }

    static func procPath(_ parentFD: Int32, _ name: String) -> String { "/proc/self/fd/\(parentFD)/\(name)" }

    private static func userName(_ uid: UInt32) -> String? {
        var entry = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 4096)
        guard getpwuid_r(uid, &entry, &buffer, buffer.count, &result) == 0, result != nil else { return nil }
        return String(cString: entry.pw_name)
    }

    private static func groupName(_ gid: UInt32) -> String? {
        var entry = group()
        var result: UnsafeMutablePointer<group>?
        var buffer = [CChar](repeating: 0, count: 4096)
        guard getgrgid_r(gid, &entry, &buffer, buffer.count, &result) == 0, result != nil else { return nil }
        return String(cString: entry.gr_name)
    }

    private static func userID(_ name: String) -> UInt32? {
        var entry = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 4096)
        guard getpwnam_r(name, &entry, &buffer, buffer.count, &result) == 0, result != nil else { return nil }
        return entry.pw_uid
    }

    private static func groupID(_ name: String) -> UInt32? {
        var entry = group()
        var result: UnsafeMutablePointer<group>?
        var buffer = [CChar](repeating: 0, count: 4096)
        guard getgrnam_r(name, &entry, &buffer, buffer.count, &result) == 0, result != nil else { return nil }
        return entry.gr_gid
    }
}

/// A metadata system call that failed.
public struct MetadataError: Error, CustomStringConvertible {
    public let call: String
    public let code: Int32

    public var description: String { "\(call): \(String(cString: strerror(code)))" }
}
