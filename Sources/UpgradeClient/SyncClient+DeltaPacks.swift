import Foundation
import UpgradeApply
import UpgradeCore
import UpgradeProtocol

#if canImport(Glibc)
import Glibc
#endif

extension SyncClient {
    /// Fetches the small ones of `deltas` from the server in packs of up to
    /// ``DeltaPack/maximumCount`` deltas and 4 MiB, as many packs at once as parallel downloads;
    /// each delta is applied to its base and checked like a single one, and its result held for
    /// the install (``HeldPayloads``). A pack that fails (an older server answers 404) leaves its
    /// deltas to the single path.
    static func fetchDeltaPacks(
        _ deltas: [SHA256Hash: DeltaChoice],
        sizes: [SHA256Hash: UInt64],
        job: DeltaJob,
        options: SyncOptions
    ) async throws -> (applied: [SHA256Hash: String], bytes: UInt64) {
        let wanted = deltas.sorted(by: { $0.key < $1.key }).filter { sha, choice in
            choice.size <= DeltaPack.smallDelta
                && !FileManager.default.fileExists(atPath: job.directory + "/" + sha.hex + ".delta")
        }
        // At least one pack per parallel download: applying and checking a delta is CPU work,
        // and one pack is one task (998 deltas in one pack took 1.5 s on one core).
        let perPack = min(
            DeltaPack.maximumCount,
            max(16, (wanted.count + options.parallelDownloads - 1) / max(1, options.parallelDownloads))
        )
        var packs = [[(SHA256Hash, DeltaChoice)]]()
        var current = [(SHA256Hash, DeltaChoice)]()
        var packBytes: UInt64 = 0
        for (sha, choice) in wanted {
            if current.count == perPack || packBytes + choice.size > 4 << 20, !current.isEmpty {
                packs.append(current)
                current = []
                packBytes = 0
            }
            current.append((sha, choice))
            packBytes += choice.size
        }
        if !current.isEmpty { packs.append(current) }
        guard !packs.isEmpty else { return ([:], 0) }
        let url = options.server.trimmingSuffix("/") + "/" + DeltaPack.path
        let queue = DownloadCounters()
        let frozen = packs
        return try await withThrowingTaskGroup(of: ([SHA256Hash: String], UInt64).self) { group in
            for _ in 0..<max(1, min(options.parallelDownloads, frozen.count)) {
                group.addTask {
                    var applied = [SHA256Hash: String]()
                    var bytes: UInt64 = 0
                    while true {
                        let index = queue.takeIndex()
                        guard index < frozen.count else { return (applied, bytes) }
                        let one = try await job.fetchPack(frozen[index], url: url, sizes: sizes)
                        applied.merge(one.applied) { first, _ in first }
                        bytes += one.bytes
                    }
                }
            }
            var applied = [SHA256Hash: String]()
            var bytes: UInt64 = 0
            for try await (some, count) in group {
                applied.merge(some) { first, _ in first }
                bytes += count
            }
            return (applied, bytes)
        }
    }
}

extension DeltaJob {
    /// One pack: request, frames, each delta applied to its base and checked; the result is held
    /// in memory for the install, or (past the budget) the delta kept as `<target>.delta`.
    /// Deltas the pack lacks or spoiled are left out of the result.
    func fetchPack(
        _ deltas: [(SHA256Hash, DeltaChoice)],
        url: String,
        sizes: [SHA256Hash: UInt64]
    ) async throws -> (applied: [SHA256Hash: String], bytes: UInt64) {
        let names = deltas.map { sha, choice in choice.baseSHA256 + "-" + sha.hex }
        let limit = deltas.reduce(0) { $0 + DeltaPack.headSize + Int($1.1.size + $1.1.size / 128 + 1024) }
        let received: (status: Int, bytes: [UInt8])
        do {
            received = try await transport.postJSON(url, DeltaPack.Request(deltas: names), limit: limit)
        } catch {
            try transport.limits.checkDeadline("fetching deltas")
            if case .noSpace = error as? SyncError { throw error }
            return ([:], 0)
        }
        let bytes = received.bytes
        guard received.status == 200 else { return ([:], UInt64(bytes.count)) }
        var applied = [SHA256Hash: String]()
        // Frames come in request order, each naming its pair: anything else ends the pack.
        for ((sha, choice), frame) in zip(deltas, PackFrame.frames(in: bytes, nameSize: 64)) {
            let expected = (SHA256Hash(hex: choice.baseSHA256)?.bytes ?? []) + sha.bytes
            guard frame.name == expected else { break }
            guard let delta = frame.bytes, let base = try? DeltaBase.read(root: root, path: choice.base) else {
                continue
            }
            guard case .success(let result) = Self.apply(Array(delta), base: base, sha: sha, size: sizes[sha] ?? 0)
            else { continue }
            if held.hold(result, as: sha) {
                applied[sha] = choice.base
                continue
            }
            let file = directory + "/" + sha.hex + ".delta"
            let part = file + ".pack"
            guard DownloadedObjects.keep(delta, at: part), rename(part, file) == 0 else {
                unlink(part)
                continue
            }
            applied[sha] = choice.base
        }
        return (applied, UInt64(bytes.count))
    }
}
