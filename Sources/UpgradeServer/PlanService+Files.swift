import Foundation
import Hummingbird
import UpgradeCore
import UpgradeProtocol
import UpgradeRepository
import UpgradeTrust

/// The repository's files, served at the paths a static mirror uses.
extension PlanService {
    // MARK: Files

    /// `GET /objects/ab/<sha>`: immutable content named by its SHA-256.
    func object(_ request: Request, context: BasicRequestContext) async throws -> Response {
        let fanout = context.parameters.get("fanout") ?? ""
        guard let name = context.parameters.get("sha"), let sha = SHA256Hash(hex: name), sha.hex == name,
            name.hasPrefix(fanout), fanout.count == 2
        else { throw HTTPError(.notFound) }
        let path = layout.object(sha)
        return try await immutableFile(path: path, etag: sha.hex, request: request, context: context)
    }

    /// `POST /v1/objects`: small objects in one streamed response (``ObjectPack``). Each frame
    /// is read from disk as it is sent, so a pack costs one object's memory.
    func pack(_ request: Request, context: BasicRequestContext) async throws -> Response {
        let list = try await packList(request, ObjectPack.Request.self, what: "object")
        guard list.objects.count <= ObjectPack.maximumCount else {
            throw HTTPError(.contentTooLarge, message: "at most \(ObjectPack.maximumCount) objects per pack")
        }
        var shas = [SHA256Hash]()
        for name in list.objects {
            guard let sha = SHA256Hash(hex: name), sha.hex == name else {
                throw HTTPError(.badRequest, message: "not a SHA-256: \(String(name.prefix(80)).debugDescription)")
            }
            shas.append(sha)
        }
        let layout = self.layout
        let wanted = shas
        return Response(
            status: .ok,
            headers: [.contentType: ObjectPack.contentType, .cacheControl: "no-store"],
            body: .init { writer in
                for sha in wanted {
                    // Small objects only: a large one is reported missing and fetched alone.
                    let path = layout.object(sha)
                    let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? UInt64) ?? nil
                    let bytes =
                        size.map { $0 <= ObjectPack.smallObject } == true
                        ? FileManager.default.contents(atPath: path).map { [UInt8]($0) } : nil
                    try await writer.write(ByteBuffer(bytes: PackFrame(name: sha.bytes, bytes: bytes?[...]).encoded()))
                }
                try await writer.finish(nil)
            }
        )
    }

    /// `POST /v1/deltas`: small deltas in one streamed response (``DeltaPack``), read from disk
    /// as each frame is sent.
    func deltaPack(_ request: Request, context: BasicRequestContext) async throws -> Response {
        let list = try await packList(request, DeltaPack.Request.self, what: "delta")
        guard list.deltas.count <= DeltaPack.maximumCount else {
            throw HTTPError(.contentTooLarge, message: "at most \(DeltaPack.maximumCount) deltas per pack")
        }
        var pairs = [(base: SHA256Hash, target: SHA256Hash)]()
        for name in list.deltas {
            let parts = name.split(separator: "-")
            guard parts.count == 2, let base = SHA256Hash(hex: parts[0]), let target = SHA256Hash(hex: parts[1]),
                base.hex == parts[0], target.hex == parts[1]
            else {
                throw HTTPError(.badRequest, message: "not a delta name: \(String(name.prefix(140)).debugDescription)")
            }
            pairs.append((base, target))
        }
        let store = DeltaStore(repository: configuration.repository)
        let wanted = pairs
        return Response(
            status: .ok,
            headers: [.contentType: DeltaPack.contentType, .cacheControl: "no-store"],
            body: .init { writer in
                for (base, target) in wanted {
                    let path = store.path(base: base, target: target)
                    let small = self.fileSize(path).map { $0 > 0 && $0 <= DeltaPack.smallDelta } ?? false
                    let bytes = small ? self.read(path) : nil
                    try await writer.write(
                        ByteBuffer(bytes: PackFrame(name: base.bytes + target.bytes, bytes: bytes?[...]).encoded())
                    )
                }
                try await writer.finish(nil)
            }
        )
    }

    /// The JSON list of a pack request (at most 256 KiB).
    private func packList<T: Decodable>(_ request: Request, _ type: T.Type, what: String) async throws -> T {
        let body = try await request.body.collect(upTo: 256 << 10)
        do {
            return try JSONDecoder().decode(type, from: body)
        } catch {
            throw HTTPError(.badRequest, message: "malformed \(what) list: \(JSON.describe(error))")
        }
    }

    /// `GET /deltas/ab/<base>-<target>`: an immutable delta, served like an object.
    func delta(_ request: Request, context: BasicRequestContext) async throws -> Response {
        let fanout = context.parameters.get("fanout") ?? ""
        guard let name = context.parameters.get("name") else { throw HTTPError(.notFound) }
        let parts = name.split(separator: "-")
        guard parts.count == 2, let base = SHA256Hash(hex: parts[0]), let target = SHA256Hash(hex: parts[1]),
            base.hex == parts[0], target.hex == parts[1], target.hex.hasPrefix(fanout), fanout.count == 2
        else { throw HTTPError(.notFound) }
        let path = DeltaStore(repository: configuration.repository).path(base: base, target: target)
        return try await immutableFile(path: path, etag: name, request: request, context: context)
    }

    /// Serves a content-addressed file: strong ETag, immutable caching, one byte range, 304 on
    /// If-None-Match.
    private func immutableFile(
        path: String,
        etag name: String,
        request: Request,
        context: BasicRequestContext
    ) async throws -> Response {
        guard let size = fileSize(path), size > 0 else { throw HTTPError(.notFound) }
        let etag = "\"\(name)\""
        var headers: HTTPFields = [
            .eTag: etag, .cacheControl: "public, max-age=31536000, immutable", .acceptRanges: "bytes",
            .contentType: "application/zstd",
        ]
        if request.headers[.ifNoneMatch] == etag { return Response(status: .notModified, headers: headers) }
        var range = 0...Int(size - 1)
        var status = HTTPResponse.Status.ok
        if let header = request.headers[.range] {
            guard let requested = Self.parseRange(header, size: Int(size)) else {
                headers[.contentRange] = "bytes */\(size)"
                return Response(status: .rangeNotSatisfiable, headers: headers)
            }
            range = requested
            status = .partialContent
            headers[.contentRange] = "bytes \(range.lowerBound)-\(range.upperBound)/\(size)"
        }
        headers[.contentLength] = String(range.count)
        metrics.countObjectBytes(range.count)
        return Response(
            status: status,
            headers: headers,
            body: try await FileIO().loadFile(path: path, range: range, context: context)
        )
    }

    /// `bytes=a-b`, `bytes=a-` or `bytes=-n`; one range only.
    static func parseRange(_ header: String, size: Int) -> ClosedRange<Int>? {
        guard header.hasPrefix("bytes="), !header.contains(",") else { return nil }
        let spec = header.dropFirst(6).split(separator: "-", omittingEmptySubsequences: false)
        guard spec.count == 2 else { return nil }
        if spec[0].isEmpty {
            guard let suffix = Int(spec[1]), suffix > 0 else { return nil }
            return max(0, size - suffix)...(size - 1)
        }
        guard let start = Int(spec[0]), start < size else { return nil }
        let end = spec[1].isEmpty ? size - 1 : min(Int(spec[1]) ?? -1, size - 1)
        guard end >= start else { return nil }
        return start...end
    }

    func releaseFile(_ context: BasicRequestContext) throws -> Response {
        guard let product = context.parameters.get("product"), let version = context.parameters.get("version"),
            let file = context.parameters.get("file"), Names.isValid(product), Version(version) != nil,
            file == "header" || file == "manifest" || file == "manifest.zst",
            let bytes = read(layout.release(product, version) + "/" + file)
        else { throw HTTPError(.notFound) }
        return Response(
            status: .ok,
            headers: [.contentType: "application/octet-stream"],
            body: .init(byteBuffer: ByteBuffer(bytes: bytes))
        )
    }

    /// `GET releases/P/V/manifest-from/SHA.zst`: the patch from an older manifest (immutable).
    func manifestPatch(_ context: BasicRequestContext) throws -> Response {
        guard let product = context.parameters.get("product"), let version = context.parameters.get("version"),
            let file = context.parameters.get("file"), Names.isValid(product), Version(version) != nil,
            file.hasSuffix(".zst"), SHA256Hash(hex: String(file.dropLast(4))) != nil,
            let bytes = read(layout.manifestPatch(product, version, from: String(file.dropLast(4))))
        else { throw HTTPError(.notFound) }
        return Response(
            status: .ok,
            headers: [.contentType: "application/octet-stream", .cacheControl: "public, max-age=31536000, immutable"],
            body: .init(byteBuffer: ByteBuffer(bytes: bytes))
        )
    }

    func channelFile(_ context: BasicRequestContext) throws -> Response {
        guard let product = context.parameters.get("product"), let channel = context.parameters.get("channel"),
            Names.isValid(product), Names.isValid(channel), let bytes = read(layout.channel(product, channel))
        else { throw HTTPError(.notFound) }
        return Response(
            status: .ok,
            headers: [.contentType: "application/json", .cacheControl: "no-cache"],
            body: .init(byteBuffer: ByteBuffer(bytes: bytes))
        )
    }

    /// `GET /roots/N.json`: the repository's root of trust, version N (clients walk N+1, N+2…).
    func rootFile(_ context: BasicRequestContext) throws -> Response {
        guard let file = context.parameters.get("file"), file.hasSuffix(".json"),
            let version = UInt64(file.dropLast(5)), String(version) + ".json" == file,
            let bytes = read(layout.root(version))
        else { throw HTTPError(.notFound) }
        return Response(
            status: .ok,
            headers: [.contentType: "application/json", .cacheControl: "no-cache"],
            body: .init(byteBuffer: ByteBuffer(bytes: bytes))
        )
    }
}
