internal import CZstd

/// Streaming zstd compression: feed chunks, collect compressed output through a sink.
/// Not thread-safe; one per task.
public final class ZstdCompressor {
    private let context: OpaquePointer
    private var output: [UInt8]

    /// A single-threaded compressor at `level`.
    public init(level: Int32) throws(ZstdError) {
        guard let context = ZSTD_createCCtx() else { throw .library(operation: "create", message: "out of memory") }
        self.context = context
        output = [UInt8](repeating: 0, count: ZSTD_CStreamOutSize())
        let code = ZSTD_CCtx_setParameter(context, ZSTD_c_compressionLevel, level)
        if ZSTD_isError(code) != 0 {
            ZSTD_freeCCtx(context)
            throw .library(operation: "set level", message: String(cString: ZSTD_getErrorName(code)))
        }
    }

    deinit { ZSTD_freeCCtx(context) }

    /// Declares the total input size up front (lets zstd size its window and record it in the frame).
    public func setPledgedSize(_ size: UInt64) {
        _ = ZSTD_CCtx_setPledgedSrcSize(context, size)
    }

    /// Compresses `input`; with `end`, finishes the frame. Output goes to `sink` in pieces.
    public func compress(
        _ input: UnsafeRawBufferPointer,
        end: Bool,
        sink: ([UInt8]) throws -> Void
    ) throws {
        var inBuffer = ZSTD_inBuffer(src: input.baseAddress, size: input.count, pos: 0)
        while true {
            let (remaining, produced): (Int, Int) = output.withUnsafeMutableBytes { out in
                var outBuffer = ZSTD_outBuffer(dst: out.baseAddress, size: out.count, pos: 0)
                let remaining = ZSTD_compressStream2(context, &outBuffer, &inBuffer, end ? ZSTD_e_end : ZSTD_e_continue)
                return (remaining, outBuffer.pos)
            }
            if ZSTD_isError(remaining) != 0 {
                throw ZstdError.library(operation: "compress", message: String(cString: ZSTD_getErrorName(remaining)))
            }
            if produced > 0 { try sink(Array(output[..<produced])) }
            if end ? remaining == 0 : inBuffer.pos == inBuffer.size { return }
        }
    }
}

/// Streaming zstd decompression with a hard bound on the output: the expected size comes from a
/// signed manifest, and a frame that decodes past it is cut off (no endless-data attack).
public final class ZstdDecompressor {
    private let stream: OpaquePointer
    private var output: [UInt8]
    private let limit: UInt64
    /// Bytes produced so far.
    public private(set) var produced: UInt64 = 0
    /// True once a whole frame has been decoded.
    public private(set) var finished = false

    /// A decompressor that refuses to produce more than `limit` bytes.
    public init(limit: UInt64) throws(ZstdError) {
        guard let stream = ZSTD_createDStream() else { throw .library(operation: "create", message: "out of memory") }
        ZSTD_initDStream(stream)
        self.stream = stream
        self.limit = limit
        output = [UInt8](repeating: 0, count: ZSTD_DStreamOutSize())
    }

    deinit { ZSTD_freeDStream(stream) }

    /// Decompresses `input`; output goes to `sink`. Throws when the output would pass the limit.
    public func decompress(_ input: UnsafeRawBufferPointer, sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        var inBuffer = ZSTD_inBuffer(src: input.baseAddress, size: input.count, pos: 0)
        while true {
            let outputCount = output.count
            let (result, count): (Int, Int) = output.withUnsafeMutableBytes { out in
                var outBuffer = ZSTD_outBuffer(dst: out.baseAddress, size: out.count, pos: 0)
                let result = ZSTD_decompressStream(stream, &outBuffer, &inBuffer)
                return (result, outBuffer.pos)
            }
            if ZSTD_isError(result) != 0 {
                throw ZstdError.library(operation: "decompress", message: String(cString: ZSTD_getErrorName(result)))
            }
            produced += UInt64(count)
            if produced > limit { throw ZstdError.tooLarge(limit: Int(clamping: limit)) }
            if count > 0 { try output.withUnsafeBytes { try sink(UnsafeRawBufferPointer(rebasing: $0[..<count])) } }
            if result == 0 { finished = true }
            if inBuffer.pos == inBuffer.size && count < outputCount { return }
        }
    }
}
