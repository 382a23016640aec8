import Crypto
import Foundation
import NIOConcurrencyHelpers
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
    public var transfer: Transfer
    public var bytes: UInt64
    public var sha256: String
}

/// How a file's content arrives. In JSON (and on the terminal) it is one string: `whole`,
/// `delta from BASE`, `whole from a peer`, `whole (delta failed)`.
public enum Transfer: Sendable, Hashable, Codable, CustomStringConvertible {
    /// The whole object, from the mirror or server.
    case whole
    /// A binary delta against the local file `base`.
    case delta(from: String)
    /// The whole file, from a LAN peer.
    case wholeFromPeer
    /// A delta was tried and failed; the whole object came instead.
    case wholeAfterFailedDelta

    public var isDelta: Bool { if case .delta = self { true } else { false } }

    public var description: String {
        switch self {
        case .whole: "whole"
        case .delta(let base): "delta from \(base)"
        case .wholeFromPeer: "whole from a peer"
        case .wholeAfterFailedDelta: "whole (delta failed)"
        }
    }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        switch text {
        case "whole": self = .whole
        case "whole from a peer": self = .wholeFromPeer
        case "whole (delta failed)": self = .wholeAfterFailedDelta
        case _ where text.hasPrefix("delta from "): self = .delta(from: String(text.dropFirst("delta from ".count)))
        default:
            throw DecodingError.dataCorrupted(
                .init(codingPath: decoder.codingPath, debugDescription: "transfer \(text)")
            )
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
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
                transfer: .whole,
                bytes: response.objects[sha.hex] ?? content.size,
                sha256: sha.hex
            )
            if let choice = response.deltas?[operation.path], choice.targetSHA256 == sha.hex {
                if let base = index[choice.base]?.file, base.size == choice.baseSize,
                    base.xxh128.hex == choice.baseXXH128,
                    !choice.path.contains(".."), choice.path.hasPrefix("deltas/")
                {
                    if usable[sha] == nil { usable[sha] = choice }
                    transfer.transfer = .delta(from: choice.base)
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

    /// Downloads the deltas in parallel, applies each to its base and checks the result against
    /// the signed size and SHA-256. A delta that fails (missing, corrupt, too slow, over its
    /// `deltaTimeout`, base changed since the scan) is dropped and its file fetched whole; a
    /// source that stalls or cannot be reached gets no more delta requests this run, so a mirror
    /// that hangs on `/deltas/` costs one timeout, not one per file. A verified delta stays in the
    /// downloads directory until the install, so a killed run's successor reuses it.
    static func fetchDeltas(
        _ deltas: [SHA256Hash: DeltaChoice],
        sizes: [SHA256Hash: UInt64],
        into directory: String,
        root: String,
        held: HeldPayloads,
        options: SyncOptions,
        transport: HTTPTransport
    ) async throws -> (applied: [SHA256Hash: String], bytes: UInt64, fallbacks: [String]) {
        var sources = [options.server]
        if let mirror = options.mirror { sources.insert(mirror, at: 0) }
        let job = DeltaJob(
            directory: directory,
            root: root,
            sources: sources,
            timeout: options.deltaTimeout,
            transport: transport,
            stalled: NIOLockedValueBox([]),
            held: held
        )
        var applied = [SHA256Hash: String]()
        var bytes: UInt64 = 0
        var fallbacks = [String]()
        var single = deltas
        // From the server, small deltas travel in packs; a mirror (static files) is asked for
        // each, as before. What a pack does not deliver, checked, goes the single way.
        if options.mirror == nil, deltas.count > 1 {
            let packed = try await fetchDeltaPacks(deltas, sizes: sizes, job: job, options: options)
            for (sha, base) in packed.applied {
                applied[sha] = base
                single[sha] = nil
            }
            bytes += packed.bytes
        }
        try await withThrowingTaskGroup(of: (SHA256Hash, DeltaChoice, DeltaOutcome).self) { group in
            var pending = single.sorted(by: { $0.key < $1.key }).makeIterator()
            func start(_ next: (key: SHA256Hash, value: DeltaChoice)?) {
                guard let (sha, choice) = next else { return }
                let size = sizes[sha] ?? 0
                group.addTask { (sha, choice, try await job.fetch(sha, choice, size: size)) }
            }
            for _ in 0..<max(1, options.parallelDownloads) { start(pending.next()) }
            while let (sha, choice, outcome) = try await group.next() {
                bytes += outcome.bytes
                if let failure = outcome.failure {
                    fallbacks.append(
                        "delta for \(sha.hex.prefix(12)) from \(choice.base) failed (\(failure)); fetched whole"
                    )
                } else {
                    applied[sha] = choice.base
                }
                start(pending.next())
            }
        }
        return (applied, bytes, fallbacks.sorted())
    }
}

/// What became of one delta.
struct DeltaOutcome: Sendable {
    /// Bytes received for it (also when it failed).
    var bytes: UInt64
    /// Why it was not used; nil when it was.
    var failure: String?
}

/// Fetching one delta: sources in order, two attempts each, within the delta's own deadline.
struct DeltaJob: Sendable {
    let directory: String
    let root: String
    let sources: [String]
    let timeout: Double
    let transport: HTTPTransport
    /// Sources that stalled or could not be reached on an earlier delta of this run.
    let stalled: NIOLockedValueBox<Set<String>>
    /// Where the results of packed deltas wait for the install.
    let held: HeldPayloads

    func fetch(_ sha: SHA256Hash, _ choice: DeltaChoice, size: UInt64) async throws -> DeltaOutcome {
        let file = directory + "/" + sha.hex + ".delta"
        let part = file + ".part"
        let base: [UInt8]
        do {
            base = try DeltaBase.read(root: root, path: choice.base)
        } catch {
            unlink(file)
            unlink(part)
            return DeltaOutcome(bytes: 0, failure: "the base cannot be read: \(error)")
        }
        // Kept from an earlier run that was interrupted after this delta arrived.
        if let kept = FileManager.default.contents(atPath: file) {
            if Self.check([UInt8](kept), base: base, sha: sha, size: size) == nil { return DeltaOutcome(bytes: 0) }
            unlink(file)
        }
        // zstd's worst case for incompressible data, so an endless body is cut off.
        let limit = choice.size + choice.size / 128 + 1024
        var bytes: UInt64 = 0
        var failures = [String]()
        for source in sources {
            var failure = "no answer"
            defer { failures.append("\(source): \(failure)") }
            if stalled.withLockedValue({ $0.contains(source) }) {
                failure = "stalled on an earlier delta"
                continue
            }
            let url = source.trimmingSuffix("/") + "/" + choice.path
            // Each source gets the delta's own deadline, inside the run's.
            var limits = transport.limits
            let ownDeadline = ContinuousClock.now + .milliseconds(Int64(timeout * 1000))
            limits.deadline = min(limits.deadline ?? ownDeadline, ownDeadline)
            for attempt in 1...2 {
                do {
                    _ = try await transport.download(url, to: part, limit: limit, limits: limits) {
                        bytes += UInt64($0)
                    }
                } catch {
                    try transport.limits.checkDeadline("fetching deltas")
                    if case .noSpace = error as? SyncError { throw error }
                    if case .timedOut = error as? SyncError {
                        failure = "took longer than --delta-timeout (\(Int(timeout)) s)"
                    } else {
                        failure = "\(error)"
                    }
                    if Self.stallsSource(error) {
                        stalled.withLockedValue { _ = $0.insert(source) }
                        break
                    }
                    if attempt == 1 { try await Task.sleep(for: .milliseconds(200)) }
                    continue
                }
                let delta = [UInt8](FileManager.default.contents(atPath: part) ?? Data())
                if let why = Self.check(delta, base: base, sha: sha, size: size) {
                    unlink(part)
                    failure = why
                    break
                }
                guard rename(part, file) == 0 else {
                    failure = "rename \(part): \(String(cString: strerror(errno)))"
                    break
                }
                return DeltaOutcome(bytes: bytes)
            }
        }
        unlink(part)
        return DeltaOutcome(bytes: bytes, failure: failures.joined(separator: "; "))
    }

    /// Nil when `delta` applied to `base` gives exactly the signed content (at most `size`
    /// bytes are ever produced); otherwise why not.
    static func check(_ delta: [UInt8], base: [UInt8], sha: SHA256Hash, size: UInt64) -> String? {
        if case .failure(let why) = apply(delta, base: base, sha: sha, size: size) { return why.text }
        return nil
    }

    /// The content `delta` makes of `base`, when it is exactly the signed size and SHA-256.
    static func apply(_ delta: [UInt8], base: [UInt8], sha: SHA256Hash, size: UInt64) -> Result<[UInt8], Refusal> {
        do {
            let result = try ZstdDelta.decode(delta, base: base, maxSize: Int(size))
            guard result.count == Int(size), SHA256Hash(bytes: Array(SHA256.hash(data: result)))! == sha else {
                return .failure(Refusal(text: "the result does not match the signed size and SHA-256"))
            }
            return .success(result)
        } catch {
            return .failure(Refusal(text: "\(error) (the signed size is \(size) bytes)"))
        }
    }

    /// Why a delta was not used.
    struct Refusal: Error {
        let text: String
    }

    /// True for failures that say the source is slow or unreachable (not merely missing one
    /// delta or sending a bad one): such a source gets no more delta requests this run.
    private static func stallsSource(_ error: any Error) -> Bool {
        switch error as? SyncError {
        case .server(let status, _): status >= 500
        case .verification, .corruptPayload: false
        default: true
        }
    }
}
