import Foundation
import Hummingbird
import UpgradeCore
import UpgradeProtocol
import UpgradeZstd

/// What a lying or broken server does, for the tests (`upgrade serve --fault NAME`, hidden).
/// Each is applied by ``FaultMiddleware`` to the honest handlers' answers; the handlers hold no
/// fault branches, and the middleware is on the router only when some fault is named.
public enum ServerFault: String, CaseIterable, Sendable {
    /// The plan adds a file the signed manifest does not hold.
    case extraFile = "extra-file"
    /// The plan's first added file names a SHA-256 nothing has.
    case wrongHash = "wrong-hash"
    /// Every delta describes its base wrongly, as if the base changed after the scan.
    case staleBase = "stale-base"
    /// The plan, then whitespace without end (valid JSON, if it ever ended).
    case paddedPlan = "padded-plan"
    /// One bit of each object served is flipped.
    case tamperObject = "tamper-object"
    /// Each object is served half long, as if that were all of it.
    case truncateObject = "truncate-object"
    /// Each object is zeros without end.
    case endlessObject = "endless-object"
    /// A whole-object response over 64 KiB stops half-way and the connection goes down.
    case cutObject = "cut-object"
    /// Every delta is missing (404; missing frames in packs).
    case missingDelta = "missing-delta"
    /// One byte of every delta is wrong (in packs too).
    case corruptDelta = "corrupt-delta"
}

/// Applies ``ServerFault``s to what the plan server answers.
struct FaultMiddleware<Context: RequestContext>: RouterMiddleware {
    let faults: Set<ServerFault>

    func handle(
        _ request: Request,
        context: Context,
        next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        let path = request.uri.path
        let isDelta = path.hasPrefix("/deltas/")
        if isDelta && faults.contains(.missingDelta) { throw HTTPError(.notFound) }
        let response = try await next(request, context)
        guard response.status == .ok || response.status == .partialContent else { return response }
        if path == "/v1/plan" { return try await lie(inPlan: response) }
        if path == "/" + DeltaPack.path { return try await spoil(deltaPack: response) }
        if path.hasPrefix("/objects/") {
            return try await lie(aboutObject: response, ranged: request.headers[.range] != nil)
        }
        if isDelta && faults.contains(.corruptDelta) { return try await corrupt(delta: response) }
        return response
    }

    // MARK: Plans

    private func lie(inPlan original: Response) async throws -> Response {
        let planFaults: Set<ServerFault> = [.extraFile, .wrongHash, .staleBase, .paddedPlan]
        guard !faults.isDisjoint(with: planFaults) else { return original }
        var response = original
        let compressed = response.headers[.contentEncoding] == "zstd"
        var bytes = try await collect(&response)
        if compressed { bytes = try Zstd.decompress(bytes, maxSize: 1 << 30) }
        var plan = try JSONDecoder().decode(PlanResponse.self, from: Data(bytes))
        // A first install's plan is the client's to compute: nothing to lie about.
        if plan.localPlan != true { try lie(about: &plan) }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let json = [UInt8](try encoder.encode(plan))
        response.headers[.contentLength] = nil
        if faults.contains(.paddedPlan) {
            response.headers[.contentEncoding] = nil
            response.body = .init { writer in
                try await writer.write(ByteBuffer(bytes: json))
                let spaces = ByteBuffer(repeating: 0x20, count: 64 << 10)
                while true { try await writer.write(spaces) }
            }
        } else {
            response.body = .init(byteBuffer: ByteBuffer(bytes: compressed ? try Zstd.compress(json, level: 3) : json))
        }
        return response
    }

    private func lie(about response: inout PlanResponse) throws {
        let inline = response.planJSON != nil
        var plan =
            if let document = response.planJSON {
                try Plan(document: document)
            } else {
                try Plan(json: Data(base64Encoded: response.plan) ?? Data())
            }
        if faults.contains(.extraFile) {
            let content = plan.operations.lazy.compactMap(\.writtenContent).first
            plan.operations.append(
                .add(
                    path: "planted-by-server",
                    mode: 0o755,
                    content: content ?? FileContent(size: 1, xxh128: XXH128Digest(high: 1, low: 1))
                )
            )
        }
        if faults.contains(.wrongHash),
            let index = plan.operations.firstIndex(where: { if case .add = $0 { true } else { false } }),
            case .add(let path, let mode, var content) = plan.operations[index]
        {
            content.sha256 = SHA256Hash(bytes: [UInt8](repeating: 0x42, count: 32))
            plan.operations[index] = .add(path: path, mode: mode, content: content)
        }
        if faults.contains(.staleBase), var deltas = response.deltas {
            for path in deltas.keys { deltas[path]?.baseXXH128 = String(repeating: "0", count: 32) }
            response.deltas = deltas
        }
        if inline {
            response.planJSON = PlanJSON(plan)
        } else {
            response.plan = plan.jsonEncoded().base64EncodedString()
        }
    }

    // MARK: Objects and deltas

    private func lie(aboutObject original: Response, ranged: Bool) async throws -> Response {
        let objectFaults: Set<ServerFault> = [.tamperObject, .truncateObject, .endlessObject, .cutObject]
        guard !faults.isDisjoint(with: objectFaults) else { return original }
        var response = original
        var bytes = try await collect(&response)
        if faults.contains(.tamperObject) {
            bytes[bytes.count / 2] ^= 0x01
            response.body = .init(byteBuffer: ByteBuffer(bytes: bytes))
        } else if faults.contains(.truncateObject) {
            let half = Array(bytes.prefix(max(1, bytes.count / 2)))
            response.headers[.contentLength] = nil
            response.body = .init(byteBuffer: ByteBuffer(bytes: half))
        } else if faults.contains(.endlessObject) {
            response.headers[.contentLength] = nil
            response.body = .init { writer in
                let zeros = ByteBuffer(repeating: 0, count: 64 << 10)
                while true { try await writer.write(zeros) }
            }
        } else if !ranged && bytes.count > 64 << 10 {
            // cut-object: the whole length is announced, half is sent, then the connection goes.
            let half = Array(bytes.prefix(bytes.count / 2))
            response.body = .init(contentLength: bytes.count) { writer in
                try await writer.write(ByteBuffer(bytes: half))
                // Let the half reach the client before the connection goes down.
                try await Task.sleep(nanoseconds: 300_000_000)
                throw HTTPError(.internalServerError, message: "connection cut by the cut-object fault")
            }
        } else {
            response.body = .init(byteBuffer: ByteBuffer(bytes: bytes))
        }
        return response
    }

    /// The byte in the middle of the whole delta flipped, where the range served holds it.
    private func corrupt(delta original: Response) async throws -> Response {
        var response = original
        var bytes = try await collect(&response)
        var (start, total) = (0, bytes.count)
        if let range = response.headers[.contentRange], let slash = range.lastIndex(of: "/"),
            let dash = range.firstIndex(of: "-")
        {
            start = Int(range[range.index(range.startIndex, offsetBy: 6)..<dash]) ?? 0
            total = Int(range[range.index(after: slash)...]) ?? total
        }
        let middle = total / 2 - start
        if bytes.indices.contains(middle) { bytes[middle] ^= 0x10 }
        response.body = .init(byteBuffer: ByteBuffer(bytes: bytes))
        return response
    }

    /// The same frames with their deltas missing or one byte wrong.
    private func spoil(deltaPack original: Response) async throws -> Response {
        guard !faults.isDisjoint(with: [.missingDelta, .corruptDelta]) else { return original }
        var response = original
        var spoiled = [UInt8]()
        for var frame in PackFrame.frames(in: try await collect(&response), nameSize: 64) {
            if faults.contains(.missingDelta) { frame.bytes = nil }
            if faults.contains(.corruptDelta), let delta = frame.bytes, !delta.isEmpty {
                frame.bytes?[delta.startIndex + delta.count / 2] ^= 0x10
            }
            spoiled += frame.encoded()
        }
        response.body = .init(byteBuffer: ByteBuffer(bytes: spoiled))
        return response
    }

    /// The whole body of `response` (test responses are small; an endless one is not asked for).
    private func collect(_ response: inout Response) async throws -> [UInt8] {
        let collector = Collector()
        let body = response.body
        response.body = .init()
        try await body.write(collector)
        return collector.box.bytes
    }
}

/// A body writer that keeps what is written.
private struct Collector: ResponseBodyWriter {
    final class Box { var bytes = [UInt8]() }
    let box = Box()

    mutating func write(_ buffer: ByteBuffer) async throws { box.bytes += buffer.readableBytesView }
    consuming func finish(_ trailingHeaders: HTTPFields?) async throws {}
}

extension PlanOperation {
    /// The content an `add` or `replace` writes.
    fileprivate var writtenContent: FileContent? {
        switch self {
        case .add(_, _, let content), .replace(_, _, let content): content
        default: nil
        }
    }
}
