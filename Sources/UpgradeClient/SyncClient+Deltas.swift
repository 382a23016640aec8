import Crypto
import Foundation
import UpgradeApply
import UpgradeCore
import UpgradeProtocol
import UpgradeZstd

#if canImport(Glibc)
import Glibc
#endif

/// How one file travels, for `--json` and dry runs.
public struct FileTransfer: Codable, Sendable {
    public var path: String
    /// `whole`, `delta from BASE`, or `whole (delta failed)`.
    public var transfer: String
    public var bytes: UInt64
    public var sha256: String
}

extension SyncClient {
    /// The deltas worth trying (by target SHA-256), how each written file will travel, and the
    /// deltas refused before any download because the local base is not what the server diffed.
    static func usableDeltas(
        plan: Plan,
        local: Manifest,
        response: PlanResponse
    ) -> ([SHA256Hash: DeltaChoice], [FileTransfer], [String]) {
        let index = local.index()
        var usable = [SHA256Hash: DeltaChoice]()
        var transfers = [FileTransfer]()
        var skipped = [String]()
        for operation in plan.operations {
            let content: FileContent
            switch operation {
            case .add(_, _, let c), .replace(_, _, let c): content = c
            default: continue
            }
            guard let sha = content.sha256 else { continue }
            var transfer = FileTransfer(
                path: operation.path,
                transfer: "whole",
                bytes: response.objects[sha.hex] ?? content.size,
                sha256: sha.hex
            )
            if let choice = response.deltas?[operation.path], choice.targetSHA256 == sha.hex {
                if let base = index[choice.base]?.file, base.size == choice.baseSize,
                    base.xxh128.hex == choice.baseXXH128,
                    !choice.path.contains(".."), choice.path.hasPrefix("deltas/")
                {
                    if usable[sha] == nil { usable[sha] = choice }
                    transfer.transfer = "delta from \(choice.base)"
                    transfer.bytes = choice.size
                } else {
                    skipped.append(
                        "\(operation.path): the base \(choice.base) is not the content the server diffed against; fetching it whole"
                    )
                }
            }
            transfers.append(transfer)
        }
        return (usable, transfers, skipped)
    }

    /// Downloads each delta, applies it to its base and checks the result's SHA-256; a delta that
    /// fails (missing, corrupt, base changed since the scan) is dropped and its file fetched whole.
    static func fetchDeltas(
        _ deltas: [SHA256Hash: DeltaChoice],
        into directory: String,
        root: String,
        options: SyncOptions,
        transport: HTTPTransport
    ) async throws -> (applied: [SHA256Hash: String], bytes: UInt64, fallbacks: [String]) {
        var applied = [SHA256Hash: String]()
        var bytes: UInt64 = 0
        var fallbacks = [String]()
        var sources = [options.server]
        if let mirror = options.mirror { sources.insert(mirror, at: 0) }
        for (sha, choice) in deltas.sorted(by: { $0.key < $1.key }) {
            let file = directory + "/" + sha.hex + ".delta"
            let limit = choice.size + choice.size / 128 + 1024
            var failure = "no source"
            var done = false
            for base in sources where !done {
                let url = base.trimmingSuffix("/") + "/" + choice.path
                unlink(file)
                do {
                    _ = try await transport.download(url, to: file, limit: limit) { count in bytes += UInt64(count) }
                    let delta = [UInt8](FileManager.default.contents(atPath: file) ?? Data())
                    let result = try ZstdDelta.decode(
                        delta,
                        base: try DeltaBase.read(root: root, path: choice.base),
                        maxSize: Int.max
                    )
                    guard SHA256Hash(bytes: Array(SHA256.hash(data: result)))! == sha else {
                        failure = "the result does not match the signed SHA-256"
                        continue
                    }
                    applied[sha] = choice.base
                    done = true
                } catch {
                    failure = "\(error)"
                }
            }
            if !done {
                unlink(file)
                fallbacks.append(
                    "delta for \(sha.hex.prefix(12)) from \(choice.base) failed (\(failure)); fetched whole"
                )
            }
        }
        return (applied, bytes, fallbacks)
    }
}
