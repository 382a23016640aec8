import Foundation
import Hummingbird
import Logging
import Synchronization
import UpgradeCore
import UpgradeProtocol
import UpgradeRepository
import UpgradeTrust
import UpgradeZstd

#if canImport(Glibc)
import Glibc
#endif

/// A small LRU (decoded release manifests, release differences): plans for a fleet hit the same
/// two or three releases.
final class LRUCache<Value: Sendable>: Sendable {
    struct State {
        var entries: [String: Value] = [:]
        var order: [String] = []
    }

    let capacity: Int
    let state = Mutex(State())

    init(capacity: Int) { self.capacity = capacity }

    func get(_ key: String) -> Value? {
        state.withLock { state in
            guard let value = state.entries[key] else { return nil }
            state.order.removeAll { $0 == key }
            state.order.append(key)
            return value
        }
    }

    func put(_ key: String, _ value: Value) {
        state.withLock { state in
            state.entries[key] = value
            state.order.removeAll { $0 == key }
            state.order.append(key)
            while state.order.count > capacity { state.entries[state.order.removeFirst()] = nil }
        }
    }
}
