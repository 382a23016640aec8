internal import CXXHash
public import UpgradeCore

/// Streaming XXH3-128 (seed 0), shaped like swift-crypto's `HashFunction`.
///
/// On x86_64 it calls libxxhash's runtime-dispatched entry points, which pick AVX2 or AVX-512
/// when the CPU has them: measured ~5× the plain SSE2 `XXH3_128bits_update` on Debian's 0.8.1.
public struct XXH128Hasher: ~Copyable {
    private let state: OpaquePointer

    /// A fresh hasher.
    public init() {
        // XXH3_createState only fails when malloc does.
        guard let state = XXH3_createState() else { fatalError("XXH3_createState: out of memory") }
        XXH3_128bits_reset(state)
        self.state = state
    }

    deinit { XXH3_freeState(state) }

    /// Starts over, keeping the allocation.
    public mutating func reset() {
        XXH3_128bits_reset(state)
    }

    /// Feeds bytes.
    public mutating func update(bufferPointer: UnsafeRawBufferPointer) {
        guard let base = bufferPointer.baseAddress, bufferPointer.count > 0 else { return }
        #if arch(x86_64)
        _ = XXH3_128bits_update_dispatch(state, base, bufferPointer.count)
        #else
        _ = XXH3_128bits_update(state, base, bufferPointer.count)
        #endif
    }

    /// Feeds bytes.
    public mutating func update(data: some Sequence<UInt8>) {
        if let done: Void = data.withContiguousStorageIfAvailable({ update(bufferPointer: UnsafeRawBufferPointer($0)) })
        {
            return done
        }
        let copy = Array(data)
        copy.withUnsafeBytes { update(bufferPointer: $0) }
    }

    /// The digest of everything fed so far.
    public func finalize() -> XXH128Digest {
        Self.digest(XXH3_128bits_digest(state))
    }

    /// One-shot hash: faster than streaming for small inputs.
    public static func hash(bufferPointer: UnsafeRawBufferPointer) -> XXH128Digest {
        #if arch(x86_64)
        let value = XXH3_128bits_dispatch(bufferPointer.baseAddress, bufferPointer.count)
        #else
        let value = XXH3_128bits(bufferPointer.baseAddress, bufferPointer.count)
        #endif
        return digest(value)
    }

    /// One-shot hash of bytes.
    public static func hash(data: some Sequence<UInt8>) -> XXH128Digest {
        Array(data).withUnsafeBytes { hash(bufferPointer: $0) }
    }

    private static func digest(_ value: XXH128_hash_t) -> XXH128Digest {
        XXH128Digest(high: value.high64, low: value.low64)
    }
}
