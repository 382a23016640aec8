import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// SIGTERM and SIGINT for commands that change a root. Outside a transaction the process ends
/// at once (every step before and after one is crash-safe; finished downloads are kept). Inside
/// one, the transaction decides: before its commit it is abandoned, a running hook's process
/// group is killed and the tree rolled back; after the commit it finishes. Then the process
/// ends with 128 + the signal number and a line that says which release the tree holds.
public enum Interruption {
    /// The signal received, 0 for none. Written by the signal handler (lock-free store only).
    private static let received = Atomic<Int32>(0)
    /// The write end of the pipe the watcher sleeps on: the handler writes a byte to it (write(2)
    /// is async-signal-safe), and so does the last transaction to end after a signal. -1 before
    /// ``install(exit:)``.
    private static let wakeFD = Atomic<Int32>(-1)
    /// A pipe that becomes readable, and stays so, once a signal has arrived (nobody reads it):
    /// code that sleeps in poll(2) on other descriptors adds ``signalledFD`` to wake for a
    /// signal delivered to another thread. -1 before ``install(exit:)``.
    private static let signalledWrite = Atomic<Int32>(-1)
    private static let signalledRead = Atomic<Int32>(-1)

    /// See ``signalledWrite``; nil before ``install(exit:)``.
    static var signalledFD: Int32? {
        let fd = signalledRead.load(ordering: .acquiring)
        return fd >= 0 ? fd : nil
    }

    private struct State {
        var transactions = 0
        var exiting = false
        /// What the last interrupted transaction did, for the final line.
        var note: String?
    }

    private static let state = Mutex(State())
    private static let leaving = Atomic<Bool>(false)
    private static let exitAction = Mutex<(@Sendable (Int32, String?) -> Never)?>(nil)

    /// The signal received so far, or nil.
    public static var signal: Int32? {
        let value = received.load(ordering: .relaxed)
        return value == 0 ? nil : value
    }

    /// The name of a signal for messages.
    public static func name(_ signal: Int32) -> String {
        switch signal {
        case SIGTERM: "SIGTERM"
        case SIGINT: "SIGINT"
        default: "signal \(signal)"
        }
    }

    /// Installs the handlers and a watcher that calls `exit(signal, note)` once a signal has
    /// arrived and no transaction runs; `note` says what an interrupted transaction did.
    public static func install(exit: @escaping @Sendable (Int32, String?) -> Never) {
        exitAction.withLock { $0 = exit }
        let ends = closeOnExecPipe()
        let flag = closeOnExecPipe()
        wakeFD.store(ends[1], ordering: .releasing)
        signalledRead.store(flag[0], ordering: .releasing)
        signalledWrite.store(flag[1], ordering: .releasing)
        for number in [SIGTERM, SIGINT] {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { number in
                Interruption.received.store(number, ordering: .relaxed)
                Interruption.wake()
                Interruption.writeByte(to: Interruption.signalledWrite.load(ordering: .acquiring))
            }
            action.sa_flags = SA_RESTART
            sigemptyset(&action.sa_mask)
            sigaction(number, &action, nil)
        }
        let wakeups = ends[0]
        // Sleeps until a signal or the end of a transaction wakes it: no polling.
        let watcher = Thread {
            var byte: UInt8 = 0
            while true {
                guard read(wakeups, &byte, 1) == 1 || errno == EINTR else { return }
                guard let signal = Interruption.signal else { continue }
                let leave = state.withLock { state -> String?? in
                    guard state.transactions == 0 else { return nil }
                    state.exiting = true
                    return .some(state.note)
                }
                if let note = leave { exitNow(signal, note: note) }
            }
        }
        watcher.start()
    }

    /// Wakes the watcher (from the signal handler too: only an atomic load and write(2)).
    private static func wake() { writeByte(to: wakeFD.load(ordering: .acquiring)) }

    /// One byte into the pipe end `fd` (async-signal-safe), when there is one.
    private static func writeByte(to fd: Int32) {
        var byte: UInt8 = 1
        if fd >= 0 { _ = write(fd, &byte, 1) }
    }

    /// A pipe whose ends are closed on exec (hooks do not inherit them): read end, then write end.
    private static func closeOnExecPipe() -> [Int32] {
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else { fatalError("pipe: \(String(cString: strerror(errno)))") }
        for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        return ends
    }

    /// Ends the process for `signal` through the installed action, once: the watcher and the
    /// command's error path may both get here.
    public static func exitNow(_ signal: Int32, note: String?) -> Never {
        if leaving.exchange(true, ordering: .acquiringAndReleasing) {
            while true { pause() }
        }
        guard let action = exitAction.withLock({ $0 }) else { Glibc.exit(128 + signal) }
        action(signal, note)
    }

    /// Marks a transaction as running; refuses to start one once a signal has arrived.
    static func enter() throws {
        try state.withLock { state in
            if let signal, state.transactions == 0 {
                throw ApplyError.interrupted(signal: signal, "before the transaction began; nothing was changed")
            }
            guard !state.exiting else {
                throw ApplyError.interrupted(signal: signal ?? SIGTERM, "nothing was changed")
            }
            state.transactions += 1
        }
    }

    /// Marks the transaction as over, with what it did when a signal arrived during it.
    static func leave(note: @autoclosure () -> String) {
        let interrupted = signal != nil
        let text = interrupted ? note() : nil
        state.withLock { state in
            state.transactions -= 1
            if let text { state.note = text }
        }
        // The watcher waits for the last transaction to end before it ends the process.
        if interrupted { wake() }
    }
}
