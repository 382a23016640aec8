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
        try check(ZSTD_CCtx_setParameter(context, ZSTD_c_compressionLevel, level), "set level")
        try check(
            ZSTD_CCtx_setParameter(context, ZSTD_c_enableLongDistanceMatching, 1),
            "enable long distance matching"
        )
        try check(ZSTD_CCtx_setParameter(context, ZSTD_c_windowLog, windowLog), "set window")
        // The frame checksum, as the zstd CLI writes it: a wrong base fails inside zstd already.
        try check(ZSTD_CCtx_setParameter(context, ZSTD_c_checksumFlag, 1), "enable checksum")
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
        try check(written, "compress delta")
        output.removeSubrange(written...)
        return output
    }

    /// Applies `delta` to `base`; refuses to produce more than `maxSize` bytes.
    public static func decode(_ delta: [UInt8], base: [UInt8], maxSize: Int) throws(ZstdError) -> [UInt8] {
        guard let context = ZSTD_createDCtx() else { throw .library(operation: "create", message: "out of memory") }
        defer { ZSTD_freeDCtx(context) }
        try check(
            ZSTD_DCtx_setParameter(context, ZSTD_d_windowLogMax, Self.windowLog(max(maxSize, base.count))),
            "set window"
        )
        var output = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: ZSTD_DStreamOutSize())
        var consumed = 0
        var last = 0
        do {
            try base.withUnsafeBytes { (baseBytes: UnsafeRawBufferPointer) throws in
                try check(ZSTD_DCtx_refPrefix(context, baseBytes.baseAddress, baseBytes.count), "reference base")
                while true {
                    let (result, produced, read): (Int, Int, Int) = delta.withUnsafeBytes { input in
                        chunk.withUnsafeMutableBytes { out in
                            var inBuffer = ZSTD_inBuffer(
                                src: input.baseAddress?.advanced(by: consumed),
                                size: input.count - consumed,
                                pos: 0
                            )
                            var outBuffer = ZSTD_outBuffer(dst: out.baseAddress, size: out.count, pos: 0)
                            let result = ZSTD_decompressStream(context, &outBuffer, &inBuffer)
                            return (result, outBuffer.pos, inBuffer.pos)
                        }
                    }
                    try check(result, "decompress delta")
                    consumed += read
                    last = result
                    if output.count + produced > maxSize { throw ZstdError.tooLarge(limit: maxSize) }
                    output.append(contentsOf: chunk[..<produced])
                    if result == 0 && consumed == delta.count { break }
                    if read == 0 && produced == 0 { break }
                }
            }
        } catch let error as ZstdError {
            throw error
        } catch {
            throw .library(operation: "decompress delta", message: "\(error)")
        }
        guard last == 0 else { throw .truncated }
        return output
    }

    /// ceil(log2(size)), within zstd's limits.
    static func windowLog(_ size: Int) -> Int32 {
        var log: Int32 = 10
        while (1 << log) < size && log < 31 { log += 1 }
        return min(log, 31)
    }

    private static func check(_ code: Int, _ operation: String) throws(ZstdError) {
        if ZSTD_isError(code) != 0 {
            throw .library(operation: operation, message: String(cString: ZSTD_getErrorName(code)))
        }
    }
}
