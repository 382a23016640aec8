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

/// The files to fetch from peers. Each file is some peer's share (round robin, so every peer
/// that holds the release is asked); it moves to another peer only when its own peer failed it
/// or was dropped. A file goes back to the queue when a peer fails it.
final class PeerQueue: Sendable {
    struct State {
        var pending: [Int]
        var inFlight = 0
        var failedBy: [Int: Set<String>] = [:]
        var done: [Int] = []
    }

    enum Next {
        case fetch(Int)
        /// Nothing for this peer now, but files in flight may come back.
        case wait
        case finished
    }

    let state: Mutex<State>
    let owners: [String]

    init(count: Int, owners: [String]) {
        state = Mutex(State(pending: Array(0..<count)))
        self.owners = owners
    }

    func next(for url: String, isDropped: (String) -> Bool) -> Next {
        state.withLock { state in
            let available = state.pending.firstIndex { index in
                let failed = state.failedBy[index] ?? []
                let owner = owners[index % owners.count]
                return !failed.contains(url) && (owner == url || isDropped(owner) || failed.contains(owner))
            }
            if let available {
                state.inFlight += 1
                return .fetch(state.pending.remove(at: available))
            }
            let someoneMayTakeIt = state.pending.contains { !(state.failedBy[$0]?.contains(url) ?? false) }
            return state.inFlight > 0 || someoneMayTakeIt ? .wait : .finished
        }
    }

    func finish(_ index: Int, source url: String, done: Bool) {
        state.withLock { state in
            state.inFlight -= 1
            if done {
                state.done.append(index)
            } else {
                state.failedBy[index, default: []].insert(url)
                state.pending.append(index)
            }
        }
    }

    var doneIndices: [Int] { state.withLock { $0.done } }
}
