import Hummingbird
import Synchronization

/// How a peer misbehaves, for the tests of the client's defences (`upgrade share --fault NAME`,
/// hidden). The server's faults are applied by ``PeerFaultMiddleware``; `flood` by the announcer.
public enum PeerFault: String, CaseIterable, Sendable {
    /// The first object served has its first byte flipped (once per process).
    case wrongByte = "wrong-byte"
    /// Object bodies stop half-way and hang.
    case stall
    /// Announcements as fast as the socket takes them.
    case flood
}

/// Applies ``PeerFault``s to the objects `upgrade share` serves, as their bytes go out.
struct PeerFaultMiddleware<Context: RequestContext>: RouterMiddleware {
    let faults: Set<PeerFault>
    /// Whether `wrong-byte` has spoiled its one object.
    private let corrupted = Corrupted()

    init(faults: Set<PeerFault>) { self.faults = faults }

    func handle(
        _ request: Request,
        context: Context,
        next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        var response = try await next(request, context)
        guard request.uri.path.hasPrefix(PeerWire.objectPath("")), response.status == .ok,
            let size = response.body.contentLength, size > 0
        else { return response }
        let corrupt = faults.contains(.wrongByte) && !corrupted.flag.exchange(true, ordering: .relaxed)
        let stall = faults.contains(.stall)
        guard corrupt || stall else { return response }
        let body = response.body
        response.body = ResponseBody(contentLength: size) { writer in
            try await body.write(SpoilingWriter(parent: writer, corrupt: corrupt, stallAt: stall ? size / 2 : nil))
        }
        return response
    }
}

private final class Corrupted: Sendable {
    let flag = Atomic<Bool>(false)
}

/// Passes the body on, the first byte flipped (`corrupt`) or hanging once `stallAt` bytes went.
private struct SpoilingWriter: ResponseBodyWriter {
    var parent: any ResponseBodyWriter
    var corrupt: Bool
    let stallAt: Int?
    var written = 0

    init(parent: any ResponseBodyWriter, corrupt: Bool, stallAt: Int?) {
        self.parent = parent
        self.corrupt = corrupt
        self.stallAt = stallAt
    }

    mutating func write(_ buffer: ByteBuffer) async throws {
        var chunk = buffer
        if corrupt, let first = chunk.getInteger(at: chunk.readerIndex, as: UInt8.self) {
            chunk.setInteger(first ^ 0x20, at: chunk.readerIndex)
            corrupt = false
        }
        if let stallAt, written + chunk.readableBytes >= stallAt {
            if let head = chunk.readSlice(length: max(0, stallAt - written)), head.readableBytes > 0 {
                try await parent.write(head)
            }
            try await Task.sleep(for: .seconds(3600))
        }
        written += chunk.readableBytes
        try await parent.write(chunk)
    }

    consuming func finish(_ trailingHeaders: HTTPFields?) async throws {
        try await parent.finish(trailingHeaders)
    }
}
