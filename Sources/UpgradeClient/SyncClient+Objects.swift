import Crypto
import Foundation
import UpgradeCore
import UpgradeProtocol
import UpgradeZstd

#if canImport(Glibc)
import Glibc
#endif

extension SyncClient {
    /// Downloads every needed object (mirror first, then the server) in parallel; each complete
    /// download is decompressed and hashed before it counts, and a bad one is fetched again.
    static func fetchObjects(
        _ needed: [FileContent],
        into directory: String,
        held: HeldPayloads,
        response: PlanResponse,
        options: SyncOptions,
        transport: HTTPTransport
    ) async throws -> (bytes: UInt64, objects: Int, resumed: Int) {
        let total = needed.reduce(UInt64(0)) { $0 + (response.objects[$1.sha256!.hex] ?? $1.size) }
        let counters = DownloadCounters()
        // Small objects first, many per request from the server (a mirror has no packs): what a
        // pack does not deliver is fetched alone below, like everything else.
        if options.mirror == nil {
            await fetchPacks(
                needed.filter { (response.objects[$0.sha256!.hex] ?? $0.size) <= ObjectPack.smallObject },
                into: directory,
                held: held,
                options: options,
                transport: transport,
                counters: counters,
                total: (total, needed.count)
            )
        }
        var sources = [options.server]
        if let mirror = options.mirror { sources.insert(mirror, at: 0) }
        let bases = sources
        let next = counters
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<max(1, min(options.parallelDownloads, needed.count)) {
                group.addTask {
                    while true {
                        let index = next.takeIndex()
                        guard index < needed.count else { return }
                        let content = needed[index]
                        let sha = content.sha256!
                        let final = directory + "/" + sha.hex
                        if held.holds(sha)
                            || FileManager.default.fileExists(atPath: final) && verifyObject(final, content)
                        {
                            counters.state.withLock { $0.done += 1 }
                            continue
                        }
                        let part = final + ".part"
                        // zstd's worst case for incompressible data, so an endless body is cut off.
                        let limit = content.size + content.size / 128 + 1024
                        var lastError: (any Error)?
                        var done = false
                        for base in bases where !done {
                            let url = base.trimmingSuffix("/") + "/objects/\(sha.hex.prefix(2))/\(sha.hex)"
                            do {
                                try await transport.retrying("GET \(url)") {
                                    let (_, resumed) = try await transport.download(url, to: part, limit: limit) {
                                        count in
                                        // Progress moves with the bytes, not once per finished file.
                                        let progress = counters.advance(objectsTotal: needed.count, bytesTotal: total) {
                                            $0.bytes += UInt64(count)
                                        }
                                        options.progress?(progress)
                                    }
                                    if resumed { counters.state.withLock { $0.resumed += 1 } }
                                    if let mismatch = mismatch(part, content, source: url) {
                                        unlink(part)
                                        throw SyncError.corruptPayload(mismatch)
                                    }
                                }
                                guard rename(part, final) == 0 else {
                                    throw SyncError.network("rename \(part): \(String(cString: strerror(errno)))")
                                }
                                done = true
                            } catch {
                                lastError = error
                            }
                        }
                        guard done else { throw lastError ?? SyncError.network("no source for object \(sha.hex)") }
                        let progress = counters.advance(objectsTotal: needed.count, bytesTotal: total) {
                            $0.objects += 1
                            $0.done += 1
                        }
                        options.progress?(progress)
                    }
                }
            }
            try await group.waitForAll()
        }
        return counters.state.withLock { ($0.bytes, $0.objects, $0.resumed) }
    }

    /// Fetches `small` objects in packs of up to ``ObjectPack/maximumCount`` objects and 4 MiB,
    /// as many packs at once as parallel downloads. Each object is checked like a single
    /// download; a pack that fails (an older server: 404) leaves its objects to the single path.
    static func fetchPacks(
        _ small: [FileContent],
        into directory: String,
        held: HeldPayloads,
        options: SyncOptions,
        transport: HTTPTransport,
        counters: DownloadCounters,
        total: (bytes: UInt64, objects: Int)
    ) async {
        let missing = small.filter { !FileManager.default.fileExists(atPath: directory + "/" + $0.sha256!.hex) }
        guard missing.count > 1 else { return }
        // At least one pack per parallel download: each object is decompressed and hashed as it
        // arrives, CPU work that one pack would leave to one task.
        let parallel = max(1, options.parallelDownloads)
        let perPack = min(ObjectPack.maximumCount, max(16, (missing.count + parallel - 1) / parallel))
        var packs = [[FileContent]]()
        var current = [FileContent]()
        var bytes: UInt64 = 0
        for content in missing {
            if current.count == perPack || bytes + content.size > 4 << 20, !current.isEmpty {
                packs.append(current)
                current = []
                bytes = 0
            }
            current.append(content)
            bytes += min(content.size, ObjectPack.smallObject)
        }
        if !current.isEmpty { packs.append(current) }
        let url = options.server.trimmingSuffix("/") + "/" + ObjectPack.path
        let queue = DownloadCounters()
        let frozen = packs
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<max(1, min(options.parallelDownloads, frozen.count)) {
                group.addTask {
                    while true {
                        let index = queue.takeIndex()
                        guard index < frozen.count else { return }
                        try? await fetchPack(
                            frozen[index],
                            url: url,
                            into: directory,
                            held: held,
                            transport: transport
                        ) { size in
                            let progress = counters.state.withLock { c -> SyncProgress in
                                c.bytes += UInt64(size)
                                c.objects += 1
                                return SyncProgress(
                                    objectsDone: c.done + c.objects,
                                    objectsTotal: total.objects,
                                    bytesDone: c.bytes,
                                    bytesTotal: total.bytes
                                )
                            }
                            options.progress?(progress)
                        }
                    }
                }
            }
        }
    }

    /// One pack: request, frames, each object decompressed and checked, then held in memory for
    /// the install or (past the budget) kept compressed in `directory`.
    private static func fetchPack(
        _ contents: [FileContent],
        url: String,
        into directory: String,
        held: HeldPayloads,
        transport: HTTPTransport,
        delivered: (Int) -> Void
    ) async throws {
        let limit = contents.reduce(0) {
            $0 + ObjectPack.headSize + Int(min($1.size + $1.size / 128 + 1024, ObjectPack.smallObject))
        }
        let (status, bytes) = try await transport.postJSON(
            url,
            ObjectPack.Request(objects: contents.map { $0.sha256!.hex }),
            limit: limit
        )
        guard status == 200 else { return }
        // Frames come in request order, each naming its object: anything else ends the pack.
        for (content, frame) in zip(contents, PackFrame.frames(in: bytes, nameSize: 32)) {
            guard frame.name == content.sha256!.bytes else { return }
            guard let compressed = frame.bytes else { continue }
            // Checked like any download: decompressed and hashed against the signed SHA-256.
            guard let decoded = decode(compressed, content) else { continue }
            if !held.hold(decoded, as: content.sha256!) {
                let final = directory + "/" + content.sha256!.hex
                let part = final + ".pack"
                guard DownloadedObjects.keep(compressed, at: part), rename(part, final) == 0 else {
                    unlink(part)
                    continue
                }
            }
            delivered(compressed.count)
        }
    }

    /// True when the compressed file decodes to exactly `content`.
    static func verifyObject(_ path: String, _ content: FileContent) -> Bool {
        guard let data = FileManager.default.contents(atPath: path) else { return false }
        return decode([UInt8](data)[...], content) != nil
    }

    /// What is wrong with the downloaded file at `path`, or nil when it decodes to `content`.
    static func mismatch(_ path: String, _ content: FileContent, source: String) -> PayloadMismatch? {
        let received = FileManager.default.contents(atPath: path).map { [UInt8]($0) } ?? []
        let decoded = try? Zstd.decompress(received, maxSize: Int(content.size))
        if let decoded, matches(decoded, content) { return nil }
        return PayloadMismatch(expected: content, source: source, received: received, decoded: decoded)
    }

    /// What `compressed` decodes to, when that is exactly `content`.
    static func decode(_ compressed: ArraySlice<UInt8>, _ content: FileContent) -> [UInt8]? {
        guard let decoded = try? Zstd.decompress(Array(compressed), maxSize: Int(content.size)),
            matches(decoded, content)
        else {
            return nil
        }
        return decoded
    }

    /// True when `decoded` is exactly the signed size and SHA-256 of `content`.
    static func matches(_ decoded: [UInt8], _ content: FileContent) -> Bool {
        UInt64(decoded.count) == content.size && SHA256Hash(bytes: Array(SHA256.hash(data: decoded))) == content.sha256
    }
}
