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
    ) async throws -> (PlanResponse?, Int) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        var body = [UInt8](try encoder.encode(request))
        var headers = [("Content-Type", "application/json")]
        if body.count > 16 << 10 {
            body = try Zstd.compress(body, level: 3)
            headers.append(("Content-Encoding", "zstd"))
        }
        let url = options.server.trimmingSuffix("/") + "/v1/plan"
        let sent = body
        let (status, bytes) = try await transport.retrying("POST \(url)") {
            let (status, bytes) = try await transport.fetch(
                url,
                method: .POST,
                headers: headers,
                body: sent,
                limit: 256 << 20,
                limitFromHead: { head in
                    try planResponseLimit(head, localEntries: localEntries, options: options)
                }
            )
            if status >= 500 { throw SyncError.server(status: status, message: Self.message(bytes)) }
            return (status, bytes)
        }
        if status == 409 && request.delta != nil { return (nil, body.count) }
        if status == 404 { throw SyncError.notFound("\(options.server): \(message(bytes))") }
        guard status == 200 else { throw SyncError.server(status: status, message: message(bytes)) }
        do {
            return (try JSONDecoder().decode(PlanResponse.self, from: Data(bytes)), body.count)
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
            guard SHA256Hash(bytes: Array(SHA256.hash(data: headerBytes)))!.hex == record.headerSHA256 else {
                throw TrustError.mismatch("the release header is not the one the channel record names")
            }
            header = try ReleaseHeader.verify(
                SignedEnvelope(encoded: headerBytes),
                trusted: options.trusted,
                now: options.now
            )
            guard header.product == options.product, header.version == record.version,
                header.sequence == record.releaseSequence
            else {
                throw TrustError.mismatch("the release header does not match the channel record")
            }
        } catch let error as TrustError {
            throw SyncError.verification("\(error)")
        }
        return (record, [UInt8](headerData), header)
    }

    static func fetchManifest(
        _ path: String,
        header: ReleaseHeader,
        options: SyncOptions,
        transport: HTTPTransport
    ) async throws -> [UInt8] {
        guard !path.contains(".."), path.hasPrefix("releases/") else {
            throw SyncError.verification("manifest path \(path.debugDescription) is not a release path")
        }
        var sources = [options.server]
        if let mirror = options.mirror { sources.insert(mirror, at: 0) }
        var lastError: (any Error)?
        for base in sources {
            let url = base.trimmingSuffix("/") + "/" + path
            do {
                let bytes = try await transport.retrying("GET \(url)") {
                    // No more than the signed header allows: an endless or padded manifest is cut off there.
                    let (status, bytes) = try await transport.fetch(url, limit: header.manifestByteLimit)
                    guard status == 200 else { throw SyncError.server(status: status, message: "GET \(url)") }
                    return bytes
                }
                guard SHA256Hash(bytes: Array(SHA256.hash(data: bytes)))!.hex == header.manifestSHA256 else {
                    throw SyncError.verification("the manifest from \(base) does not match the signed digest")
                }
                return bytes
            } catch {
                lastError = error
            }
        }
        throw lastError ?? SyncError.network("no source for the manifest")
    }

    /// The channel record's bytes in a plan response (empty when not base64).
    static func channelBytesOf(_ response: PlanResponse) -> [UInt8] {
        Data(base64Encoded: response.channel).map { [UInt8]($0) } ?? []
    }
}
