import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// An HTTP proxy on 127.0.0.1 port 0 that answers `CONNECT HOST:PORT` (what AsyncHTTPClient
/// sends for http:// and https:// alike) by tunnelling to 127.0.0.1:`upstream`, whatever the
/// target, and records each target: a client that names an address only the proxy can reach
/// succeeds only through it. One thread per direction per connection.
final class ConnectProxy: @unchecked Sendable {
    let port: Int
    var url: String { "http://127.0.0.1:\(port)" }
    private let listener: Int32
    private let lock = NSLock()
    private var seen = [String]()

    /// `HOST:PORT` of every CONNECT so far.
    var targets: [String] { lock.withLock { seen } }

    let upstream: UInt16

    init(upstream: Int) throws {
        self.upstream = UInt16(upstream)
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.listener = listener
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, length) }
        }
        guard bound == 0, listen(listener, 64) == 0 else { throw POSIXError(.EADDRINUSE) }
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) }
        }
        port = Int(UInt16(bigEndian: address.sin_port))
        Thread { [self] in
            while true {
                let client = accept(listener, nil, nil)
                if client < 0 { return }
                Thread { [self] in serve(client) }.start()
            }
        }.start()
    }

    func stop() { shutdown(listener, Int32(SHUT_RDWR)) }

    private func serve(_ client: Int32) {
        var head = [UInt8]()
        var byte: UInt8 = 0
        while !head.suffix(4).elementsEqual(Array("\r\n\r\n".utf8)), head.count < 8192, read(client, &byte, 1) == 1 {
            head.append(byte)
        }
        let line = String(decoding: head, as: UTF8.self).split(separator: "\r\n").first ?? ""
        let parts = line.split(separator: " ")
        guard parts.count == 3, parts[0] == "CONNECT" else {
            reply(client, "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return
        }
        lock.withLock { seen.append(String(parts[1])) }
        let upstream = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = self.upstream.bigEndian
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(upstream, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0 else {
            close(upstream)
            reply(client, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        }
        let established = Array("HTTP/1.1 200 Connection established\r\n\r\n".utf8)
        _ = write(client, established, established.count)
        let done = DispatchSemaphore(value: 0)
        Thread {
            Self.pump(from: upstream, to: client)
            done.signal()
        }.start()
        Self.pump(from: client, to: upstream)
        done.wait()
        close(upstream)
        close(client)
    }

    private func reply(_ client: Int32, _ text: String) {
        let bytes = Array(text.utf8)
        _ = write(client, bytes, bytes.count)
        close(client)
    }

    private static func pump(from source: Int32, to sink: Int32) {
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(source, &buffer, buffer.count)
            if n <= 0 { break }
            var offset = 0
            while offset < n {
                let written = buffer[offset..<n].withUnsafeBytes { write(sink, $0.baseAddress!, n - offset) }
                if written <= 0 { break }
                offset += written
            }
        }
        shutdown(sink, Int32(SHUT_WR))
    }
}
