internal import CZstd

/// zstd compression of whole buffers (libzstd), with decompression that refuses to produce more
/// than an expected size: payload sizes come from signed manifests, and a frame that runs past
/// them is cut off rather than trusted.
public enum Zstd {
    /// Compresses `input` at `level` (1...19; 19 suits publish-once, download-many).
    public static func compress(_ input: [UInt8], level: Int32 = 19) throws(ZstdError) -> [UInt8] {
        let bound = ZSTD_compressBound(input.count)
        var output = [UInt8](repeating: 0, count: bound)
        let written = output.withUnsafeMutableBytes { out in
            input.withUnsafeBytes { inp in
                ZSTD_compress(out.baseAddress, out.count, inp.baseAddress, inp.count, level)
            }
        }
        try check(written, "compress")
        output.removeSubrange(written...)
        return output
    }

    /// Decompresses one or more frames, failing when the output would exceed `maxSize` bytes.
    public static func decompress(_ input: [UInt8], maxSize: Int) throws(ZstdError) -> [UInt8] {
        guard let context = ZSTD_createDCtx() else { throw .library(operation: "create", message: "out of memory") }
        defer { ZSTD_freeDCtx(context) }
        return try decodeFrames(context, input: input, maxSize: maxSize, operation: "decompress")
    }

    /// The streaming decode loop shared by whole objects and deltas: feeds `input` to `context`
    /// and collects at most `maxSize` bytes.
    static func decodeFrames(
        _ context: OpaquePointer,
        input: [UInt8],
        maxSize: Int,
        operation: String
    ) throws(ZstdError) -> [UInt8] {
        var output = [UInt8]()
        // One byte past the limit is enough to detect an overrun; never more than zstd's block.
        let chunkSize = maxSize < ZSTD_DStreamOutSize() ? maxSize + 1 : ZSTD_DStreamOutSize()
        var chunk = [UInt8](repeating: 0, count: max(1, chunkSize))
        var lastResult = 0
        var consumed = 0
        while true {
            let (result, produced, read): (Int, Int, Int) = input.withUnsafeBytes { inp in
                chunk.withUnsafeMutableBytes { out in
                    var inBuffer = ZSTD_inBuffer(
                        src: inp.baseAddress?.advanced(by: consumed),
                        size: inp.count - consumed,
                        pos: 0
                    )
                    var outBuffer = ZSTD_outBuffer(dst: out.baseAddress, size: out.count, pos: 0)
                    let result = ZSTD_decompressStream(context, &outBuffer, &inBuffer)
                    return (result, outBuffer.pos, inBuffer.pos)
                }
            }
            try check(result, operation)
            consumed += read
            lastResult = result
            if output.count + produced > maxSize { throw .tooLarge(limit: maxSize) }
            output.append(contentsOf: chunk[..<produced])
            // Done when the last frame is complete and all input is consumed. With input left
            // or output still buffered inside zstd (it may hold decoded data even after taking
            // all the input), call again; no progress at all means the data ends early.
            if result == 0 && consumed == input.count { break }
            if read == 0 && produced == 0 { break }
        }
        guard lastResult == 0 else { throw .truncated }
        return output
    }

    /// The libzstd version string.
    public static var version: String { String(cString: ZSTD_versionString()) }

    static func check(_ code: Int, _ operation: String) throws(ZstdError) {
        if ZSTD_isError(code) != 0 {
            throw .library(operation: operation, message: String(cString: ZSTD_getErrorName(code)))
        }
    }
}

/// A zstd failure.
public enum ZstdError: Error, Hashable, Sendable, CustomStringConvertible {
    /// libzstd reported an error.
    case library(operation: String, message: String)
    /// The output would exceed the size the caller expects.
    case tooLarge(limit: Int)
    /// The input ended inside a frame.
    case truncated

    public var description: String {
        switch self {
        case .library(let operation, let message): "zstd \(operation) failed: \(message)"
        case .tooLarge(let limit): "zstd data decompresses to more than the expected \(limit) bytes"
        case .truncated: "zstd data ends inside a frame"
        }
    }
}
