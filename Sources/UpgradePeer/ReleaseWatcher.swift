import Dispatch
import Foundation
import Logging
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#endif

/// Keeps a share's idea of the installed release current: a service of the share's group that
/// refreshes ``ShareService`` when the root's state directory changes (inotify: `current`
/// rewritten when a release commits, the journal gone when a transaction ends), so an upgrade
/// of the shared root is announced at once and nothing looks in between. Where inotify cannot
/// be had (no such directory yet, out of watches), it looks every `interval` seconds instead.
public struct ReleaseWatcher: Service {
    let service: ShareService
    let interval: Double

    public init(_ service: ShareService, every interval: Double) {
        self.service = service
        self.interval = interval
    }

    public func run() async {
        let directory = service.configuration.root + "/" + service.configuration.stateDirectoryName
        await cancelWhenGracefulShutdown {
            guard let changes = Self.changes(of: directory) else {
                service.logger.notice("no inotify watch on \(directory); looking every \(interval) s")
                while !Task.isCancelled {
                    try? await Task.sleep(for: .seconds(interval))
                    refresh()
                }
                return
            }
            for await _ in changes { refresh() }
        }
    }

    private func refresh() {
        do { try service.refresh() } catch { service.logger.warning("cannot read the installed release: \(error)") }
    }

    /// One element per burst of changes to the entries of `directory` (not below it), until the
    /// task that iterates is cancelled; nil when the directory cannot be watched.
    static func changes(of directory: String) -> AsyncStream<Void>? {
        let fd = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        guard fd >= 0 else { return nil }
        let mask = UInt32(IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE)
        guard inotify_add_watch(fd, directory, mask) >= 0 else {
            close(fd)
            return nil
        }
        let (stream, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        let source = DispatchSource.makeReadSource(
            fileDescriptor: fd,
            queue: DispatchQueue(label: "upgrade-share-watch")
        )
        source.setEventHandler {
            // Drain what is queued; the events themselves do not matter, only that some came.
            var buffer = [UInt8](repeating: 0, count: 4096)
            while read(fd, &buffer, buffer.count) > 0 {}
            continuation.yield()
        }
        source.setCancelHandler { close(fd) }
        let cancel = Cancel(source)
        continuation.onTermination = { _ in cancel.run() }
        source.resume()
        return stream
    }

    /// Cancels a dispatch source from any thread (which `DispatchSource.cancel` allows; the
    /// type is not marked `Sendable`).
    private final class Cancel: @unchecked Sendable {
        private let source: any DispatchSourceRead
        init(_ source: any DispatchSourceRead) { self.source = source }
        func run() { source.cancel() }
    }
}
