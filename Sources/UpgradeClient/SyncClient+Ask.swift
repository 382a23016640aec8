import Crypto
import Foundation
import NIOHTTP1
import UpgradeApply
import UpgradeCore
import UpgradeProtocol
import UpgradeTrust
import UpgradeZstd

/// Asking the server and checking what it signed: the plan request, the bound on its answer,
/// the channel record and header, the signed manifest.
extension SyncClient {
    static func askForPlan(
        _ request: PlanRequest,
        localEntries: Int,
        options: SyncOptions,
        transport: HTTPTransport
    ) async throws -> (PlanResponse?, Int, Int) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        var body = [UInt8](try encoder.encode(request))
        var headers = [("Content-Type", "application/json")] + authorization(options)
        if body.count > 16 << 10 {
            body = try Zstd.compress(body, level: 3)
            headers.append(("Content-Encoding", "zstd"))
        }
        let url = options.server.trimmingSuffix("/") + "/v1/plan"
        let sent = body
        let halted = HaltedHead()
        let (status, bytes) = try await transport.retrying("POST \(url)") {
            let (status, bytes) = try await transport.fetch(
                url,
                method: .POST,
                headers: headers,
                body: sent,
                limit: 256 << 20,
                limitFromHead: { head in
                    halted.version.withLock { $0 = head.first(name: FleetHeaders.halted) }
                    return try planResponseLimit(head, localEntries: localEntries, options: options)
                },
                acceptZstd: true
            )
            if status >= 500 { throw SyncError.server(status: status, message: Self.message(bytes)) }
            return (status, bytes)
        }
        if status == 409, halted.version.withLock({ $0 }) != nil { throw ReleaseHalted(reason: message(bytes)) }
        if status == 409 && request.delta != nil { return (nil, body.count, bytes.count) }
        if status == 401 {
            throw SyncError.refused(
                "the server wants a device token for \(request.device.id) (\(message(bytes))); pass --token-file"
            )
        }
        if status == 404 { throw SyncError.notFound("\(options.server): \(message(bytes))") }
        guard status == 200 else { throw SyncError.server(status: status, message: message(bytes)) }
        do {
            return (try JSONDecoder().decode(PlanResponse.self, from: Data(bytes)), body.count, bytes.count)
        } catch {
            throw SyncError.verification("the server's plan response is malformed (\(JSON.describe(error)))")
        }
    }

    /// How many bytes the plan response may have, from the signed release header the server
    /// sends in its response head (`Upgrade-Release-Header`): each operation, object and delta
    /// of the plan is about an entry of the target or of the local tree, so the plan is bounded
    /// by the manifest's signed length and the two entry counts. nil (no such head, an older
    /// server) keeps the fixed cap.
    static func planResponseLimit(_ head: HTTPHeaders, localEntries: Int, options: SyncOptions) throws -> Int? {
        guard let encoded = head.first(name: PlanHeaders.releaseHeader) else { return nil }
        let header: ReleaseHeader
        do {
            guard let bytes = Data(base64Encoded: encoded) else { throw TrustError.malformed("not base64") }
            header = try ReleaseHeader.verify(
                SignedEnvelope(encoded: [UInt8](bytes)),
                trusted: options.trusted,
                now: options.now
            )
        } catch {
            throw SyncError.verification("the plan response's release header does not verify: \(error)")
        }
        guard header.product == options.product else {
            throw SyncError.verification("the plan response's release header is for \(header.product)")
        }
        let manifest = header.manifestBytes ?? header.entries * 512
        return (1 << 20) + 4 * manifest + 1024 * (header.entries + localEntries)
    }

    static func verifySigned(
        _ response: PlanResponse,
        options: SyncOptions,
        session: RootSession
    ) throws -> (ChannelRecord, [UInt8], ReleaseHeader) {
        guard let channelBytes = Data(base64Encoded: response.channel),
            let headerData = Data(base64Encoded: response.header)
        else {
            throw SyncError.verification("channel record or header is not base64")
        }
        let floor = session.channelFloor(channelKey(options), root: options.trusted.root)
        let record: ChannelRecord
        let header: ReleaseHeader
        do {
            record = try ChannelRecord.verify(
                SignedEnvelope(encoded: [UInt8](channelBytes)),
                trusted: options.trusted,
                now: options.now,
                minimumSequence: floor
            )
            guard record.product == options.product, record.channel == options.channel else {
                throw TrustError.mismatch(
                    "the channel record is for \(record.product)/\(record.channel), not \(options.product)/\(options.channel)"
                )
            }
            let headerBytes = [UInt8](headerData)
            guard
                options.targetVersion != nil
                    || SHA256Hash(bytes: Array(SHA256.hash(data: headerBytes)))!.hex == record.headerSHA256
            else {
                throw TrustError.mismatch("the release header is not the one the channel record names")
            }
            header = try ReleaseHeader.verify(
                SignedEnvelope(encoded: headerBytes),
                trusted: options.trusted,
                now: options.now
            )
            if let version = options.targetVersion {
                // `--version`: a signed release of the product; the record still sets the floor.
                guard header.product == options.product, header.version == version else {
                    throw TrustError.mismatch(
                        "the server sent \(header.product) \(header.version), not \(options.product) \(version)"
                    )
                }
            } else {
                guard header.product == options.product, header.version == record.version,
                    header.sequence == record.releaseSequence
                else {
                    throw TrustError.mismatch("the release header does not match the channel record")
                }
            }
        } catch let error as TrustError {
            throw SyncError.verification("\(error)")
        }
        return (record, [UInt8](headerData), header)
    }

    /// The signed manifest, in the smallest form a source has: a zstd patch from the installed
    /// release's manifest (`manifest-from/SHA.zst`, a size that follows the change), else the
    /// compressed manifest (`manifest.zst`), else the plain one (repositories published before
    /// either existed). Whatever arrives is checked against the signed SHA-256 and is never
    /// longer than the signed length; a form that fails the check falls through to the next.
    static func fetchManifest(
        _ path: String,
        header: ReleaseHeader,
        base: (sha256: String, bytes: [UInt8])?,
        options: SyncOptions,
        transport: HTTPTransport
    ) async throws -> (bytes: [UInt8], form: String, received: Int) {
        guard !path.contains(".."), path.hasPrefix("releases/") else {
            throw SyncError.verification("manifest path \(path.debugDescription) is not a release path")
        }
        let limit = header.manifestByteLimit
        let siblings = RepositoryPaths.manifestSiblings(path, from: base?.sha256)
        var forms: [(form: String, path: String, decode: ([UInt8]) throws -> [UInt8])] = []
        if let base, let patch = siblings.patch {
            forms.append(("patch", patch, { try ZstdDelta.decode($0, base: base.bytes, maxSize: limit) }))
        }
        forms.append(("compressed", siblings.compressed, { try Zstd.decompress($0, maxSize: limit) }))
        forms.append(("plain", path, { $0 }))
        var sources = [options.server]
        if let mirror = options.mirror { sources.insert(mirror, at: 0) }
        var lastError: (any Error)?
        for base in sources {
            for form in forms {
                let url = base.trimmingSuffix("/") + "/" + form.path
                do {
                    let received = try await transport.retrying("GET \(url)") {
                        // No more than the signed header allows: an endless or padded body is cut off.
                        let (status, bytes) = try await transport.fetch(url, limit: limit + limit / 128 + 1024)
                        guard status == 200 else { throw SyncError.server(status: status, message: "GET \(url)") }
                        return bytes
                    }
                    let bytes = try form.decode(received)
                    guard SHA256Hash(bytes: Array(SHA256.hash(data: bytes)))!.hex == header.manifestSHA256 else {
                        throw SyncError.verification(
                            "the manifest (\(form.form)) from \(base) does not match the signed digest"
                        )
                    }
                    return (bytes, form.form, received.count)
                } catch {
                    lastError = error
                }
            }
        }
        throw lastError ?? SyncError.network("no source for the manifest")
    }

    /// The channel record's bytes in a plan response (empty when not base64).
    static func channelBytesOf(_ response: PlanResponse) -> [UInt8] {
        Data(base64Encoded: response.channel).map { [UInt8]($0) } ?? []
    }
}
