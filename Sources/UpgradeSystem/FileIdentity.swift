#if canImport(Glibc)
import Glibc
#endif

/// What a file looked like when it was last read: equal identity means equal content, as in
/// git's index. The inode, device and ctime make a copy, a rename or a `touch -d` visible.
public struct FileIdentity: Hashable, Sendable {
    public var device: UInt64
    public var inode: UInt64
    public var size: UInt64
    public var mtimeSeconds: Int64
    public var mtimeNanoseconds: UInt32
    public var ctimeSeconds: Int64
    public var ctimeNanoseconds: UInt32

    /// An identity from its parts (as a stat cache stores them).
    public init(
        device: UInt64,
        inode: UInt64,
        size: UInt64,
        mtimeSeconds: Int64,
        mtimeNanoseconds: UInt32,
        ctimeSeconds: Int64,
        ctimeNanoseconds: UInt32
    ) {
        self.device = device
        self.inode = inode
        self.size = size
        self.mtimeSeconds = mtimeSeconds
        self.mtimeNanoseconds = mtimeNanoseconds
        self.ctimeSeconds = ctimeSeconds
        self.ctimeNanoseconds = ctimeNanoseconds
    }

    /// The identity `stat` describes.
    public init(_ info: stat) {
        device = UInt64(info.st_dev)
        inode = UInt64(info.st_ino)
        size = UInt64(info.st_size)
        mtimeSeconds = Int64(info.st_mtim.tv_sec)
        mtimeNanoseconds = UInt32(info.st_mtim.tv_nsec)
        ctimeSeconds = Int64(info.st_ctim.tv_sec)
        ctimeNanoseconds = UInt32(info.st_ctim.tv_nsec)
    }
}
