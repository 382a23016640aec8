import Crypto
import Foundation
import Synchronization
import UpgradeApply
import UpgradeCore
import UpgradePeer
import UpgradeTrust

#if canImport(Glibc)
import Glibc
#endif

/// A peer that holds a release the client wants, checked: the signed header it serves is the
/// one it announced.
struct PeerSource: Sendable {
    let url: String
    /// Holds every file of the release (its installed one, verified); a 404 from it is a lie.
    let complete: Bool
}

/// A signed release some peers hold, verified against the trusted keys.
struct PeerRelease: Sendable {
    let headerBytes: [UInt8]
    let header: ReleaseHeader
    let digest: String
    var sources: [PeerSource]
}

/// The peers of one run: what each offered, what it delivered, and which were dropped.
final class PeerBoard: Sendable {
    let state = Mutex<[String: PeerOutcome]>([:])
    let order = Mutex<[String]>([])

    func note(_ url: String, version: String?, status: PeerStatus) {
        state.withLock { outcomes in
            if outcomes[url] == nil { order.withLock { $0.append(url) } }
            var outcome = outcomes[url] ?? PeerOutcome(url: url, version: version, status: status)
            // A drop is final for the run.
            if !outcome.dropped { outcome.status = status }
            if version != nil { outcome.version = version }
            outcomes[url] = outcome
        }
    }

    func drop(_ url: String, _ reason: String) { note(url, version: nil, status: .dropped(reason)) }

    /// Notes every peer holding a release other than the target one as ignored.
    func ignore(_ releases: [String: PeerRelease], except target: String) {
        for (digest, release) in releases where digest != target {
            for source in release.sources {
                note(
                    source.url,
                    version: release.header.version,
                    status: .ignored("holds \(release.header.version), not the target")
                )
            }
        }
    }

    func isDropped(_ url: String) -> Bool { state.withLock { $0[url]?.dropped ?? false } }

    func delivered(_ url: String, bytes: UInt64) {
        state.withLock { outcomes in
            outcomes[url]?.bytes += bytes
            outcomes[url]?.objects += 1
            if outcomes[url]?.dropped == false { outcomes[url]?.status = .used }
        }
    }

    var outcomes: [PeerOutcome] {
        let order = order.withLock { $0 }
        return state.withLock { outcomes in order.compactMap { outcomes[$0] } }
    }
}
