internal import CZstd

/// Binary deltas: a zstd frame of the new content compressed with the old content as a
/// referenced prefix (`ZSTD_CCtx_refPrefix`), long-distance matching on and the window sized to
/// the file — the in-process equivalent of `zstd --single-thread --patch-from=OLD NEW`.
public enum ZstdDelta {
    /// Files larger than this travel whole (both sides hold base and target in memory).
    public static let maximumSize = 512 << 20

    /// The delta that turns `base` into `target`.
    public static func encode(target: [UInt8], base: [UInt8], level: Int32 = 19) throws(ZstdError) -> [UInt8] {
        guard let context = ZSTD_createCCtx() else { throw .library(operation: "create", message: "out of memory") }
        defer { ZSTD_freeCCtx(context) }
        let windowLog = Self.windowLog(max(target.count, base.count))
        try Zstd.check(ZSTD_CCtx_setParameter(context, ZSTD_c_compressionLevel, level), "set level")
        try Zstd.check(
            ZSTD_CCtx_setParameter(context, ZSTD_c_enableLongDistanceMatching, 1),
            "enable long distance matching"
        )
        try Zstd.check(ZSTD_CCtx_setParameter(context, ZSTD_c_windowLog, windowLog), "set window")
        // The frame checksum, as the zstd CLI writes it: a wrong base fails inside zstd already.
        try Zstd.check(ZSTD_CCtx_setParameter(context, ZSTD_c_checksumFlag, 1), "enable checksum")
        var output = [UInt8](repeating: 0, count: ZSTD_compressBound(target.count))
        let written = base.withUnsafeBytes { baseBytes in
            target.withUnsafeBytes { targetBytes in
                output.withUnsafeMutableBytes { out -> Int in
                    let referenced = ZSTD_CCtx_refPrefix(context, baseBytes.baseAddress, baseBytes.count)
                    if ZSTD_isError(referenced) != 0 { return referenced }
                    return ZSTD_compress2(
                        context,
                        out.baseAddress,
                        out.count,
                        targetBytes.baseAddress,
                        targetBytes.count
                    )
                }
            }
        }
        try Zstd.check(written, "compress delta")
        output.removeSubrange(written...)
        return output
    }

    /// Applies `delta` to `base`; refuses to produce more than `maxSize` bytes.
    public static func decode(_ delta: [UInt8], base: [UInt8], maxSize: Int) throws(ZstdError) -> [UInt8] {
        guard let context = ZSTD_createDCtx() else { throw .library(operation: "create", message: "out of memory") }
        defer { ZSTD_freeDCtx(context) }
        try Zstd.check(
            ZSTD_DCtx_setParameter(context, ZSTD_d_windowLogMax, Self.windowLog(max(maxSize, base.count))),
            "set window"
        )
        // The referenced base must stay valid while the frame decodes.
        let decoded = base.withUnsafeBytes { baseBytes in
            Result { () throws(ZstdError) -> [UInt8] in
                try Zstd.check(ZSTD_DCtx_refPrefix(context, baseBytes.baseAddress, baseBytes.count), "reference base")
                return try Zstd.decodeFrames(context, input: delta, maxSize: maxSize, operation: "decompress delta")
            }
        }
        return try decoded.get()
    }

    /// ceil(log2(size)), within zstd's limits.
    static func windowLog(_ size: Int) -> Int32 {
        var log: Int32 = 10
        while (1 << log) < size && log < 31 { log += 1 }
        return min(log, 31)
    }
}
