import Foundation
import Hummingbird
import Synchronization

/// At most `permits` bodies run at once and at most `maxWaiting` wait for a turn; beyond that a
/// request is refused with 503 and `Retry-After`, so a burst costs a bounded queue, not memory
/// without end.
final class AdmissionQueue: Sendable {
    private struct State {
        var available: Int
        var waiting: [CheckedContinuation<Bool, Never>] = []
    }

    private let state: Mutex<State>
    let maxWaiting: Int
    /// Seconds a refused client is told to wait.
    let retryAfter: Int
    let what: String

    init(permits: Int, maxWaiting: Int, retryAfter: Int = 2, what: String) {
        state = Mutex(State(available: max(1, permits)))
        self.maxWaiting = max(0, maxWaiting)
        self.retryAfter = retryAfter
        self.what = what
    }

    /// Runs `body` once a permit is free; throws 503 when the queue is full.
    func run<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        guard await acquire() else {
            throw HTTPError(
                .serviceUnavailable,
                headers: [.retryAfter: String(retryAfter)],
                message: "too many \(what) in progress; retry after \(retryAfter) s"
            )
        }
        defer { release() }
        return try await body()
    }

    /// True once a permit is held; false at once when the queue is full. (The continuation
    /// returns the answer: an earlier shape that set a captured flag inside it crashed the
    /// 6.3.1 optimizer's coroutine splitting in the release build.)
    private func acquire() async -> Bool {
        await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            let answer = state.withLock { state -> Bool? in
                if state.available > 0 {
                    state.available -= 1
                    return true
                }
                guard state.waiting.count < maxWaiting else { return false }
                state.waiting.append(continuation)
                return nil
            }
            if let answer { continuation.resume(returning: answer) }
        }
    }

    private func release() {
        let next = state.withLock { state -> CheckedContinuation<Bool, Never>? in
            if state.waiting.isEmpty {
                state.available += 1
                return nil
            }
            return state.waiting.removeFirst()
        }
        next?.resume(returning: true)
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
struct TokenBucket: Sendable {
    let rate: Double
    let burst: Double
    private var tokens: Double
    private var updated: ContinuousClock.Instant

    init(rate: Double, burst: Double) {
        self.rate = rate
        self.burst = burst
        tokens = burst
        updated = .now
    }

    /// Takes `cost` tokens when there are that many.
    mutating func take(_ cost: Double = 1) -> Bool {
        let now = ContinuousClock.now
        let elapsed = updated.duration(to: now).components
        tokens = min(burst, tokens + (Double(elapsed.seconds) + Double(elapsed.attoseconds) / 1e18) * rate)
        updated = now
        guard tokens >= cost else { return false }
        tokens -= cost
        return true
    }
}

/// Reports a second: one bucket for the whole server and one per device id (at most `maxKeys`
/// remembered, the oldest forgotten first), so one device cannot flood the log or the counters.
final class ReportRateLimiter: Sendable {
    private struct State {
        var global: TokenBucket
        var perKey: [String: TokenBucket] = [:]
        var order: [String] = []
    }

    private let state: Mutex<State>
    private let keyRate: Double
    private let keyBurst: Double
    private let maxKeys: Int

    init(globalRate: Double, globalBurst: Double, keyRate: Double, keyBurst: Double, maxKeys: Int = 100_000) {
        state = Mutex(State(global: TokenBucket(rate: globalRate, burst: globalBurst)))
        self.keyRate = keyRate
        self.keyBurst = keyBurst
        self.maxKeys = maxKeys
    }

    /// Whether a report from `key` may be taken now.
    func admit(_ key: String) -> Bool {
        state.withLock { state in
            var bucket = state.perKey[key] ?? TokenBucket(rate: keyRate, burst: keyBurst)
            if state.perKey[key] == nil {
                state.order.append(key)
                if state.order.count > maxKeys {
                    state.perKey[state.order.removeFirst()] = nil
                }
            }
            guard bucket.take() else {
                state.perKey[key] = bucket
                return false
            }
            state.perKey[key] = bucket
            return state.global.take()
        }
    }
}

/// The on-demand delta work a server will do: per plan at most `perRequest` computations, and
/// over the whole server a bucket of `perMinute` computations refilled over a minute. What is
/// over budget travels whole this time; the computed deltas are cached, so later plans of the
/// same pair get them for free.
final class DeltaBudget: Sendable {
    let perRequest: Int
    private let bucket: Mutex<TokenBucket>

    init(perRequest: Int, perMinute: Int) {
        self.perRequest = perRequest
        bucket = Mutex(TokenBucket(rate: Double(perMinute) / 60, burst: Double(max(1, perMinute))))
    }

    /// Takes one computation from the server-wide budget.
    func take() -> Bool { bucket.withLock { $0.take() } }
}

/// Runs blocking work (zstd at level 19 for seconds) on a Dispatch thread, so the cooperative
/// pool that serves `/healthz`, files and other plans is never held by it.
func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        DispatchQueue.global(qos: .utility).async {
            continuation.resume(with: Result { try body() })
        }
    }
}
