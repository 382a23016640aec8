import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A static mirror on 127.0.0.1 port 0 that serves a repository's files and misbehaves on
/// chosen path prefixes: trickles, stalls, or answers with other bytes. One thread per
/// connection, HTTP/1.1 with `Connection: close`, Range ignored (200 with the whole body).
final class HostileMirror: @unchecked Sendable {
    /// What the mirror does for requests whose path starts with a prefix.
    enum Behaviour: Sendable {
        /// Sends the file one byte every `interval` seconds.
        case trickle(interval: Double)
        /// Reads the request and never answers.
        case stall
        /// Sends `body` instead of the file.
        case replace(Data)
        /// Sends zeros without end (no Content-Length).
        case endless
    }

    let directory: String
    let rules: [(prefix: String, behaviour: Behaviour)]
    let port: Int
    var url: String { "http://127.0.0.1:\(port)" }
    private let listener: Int32
    private let requests = NSLock()
    private var seen = [String]()

    /// Paths requested so far, in order.
    var requested: [String] { requests.withLock { seen } }

    init(directory: String, _ rules: [(String, Behaviour)]) throws {
        self.directory = directory
        self.rules = rules.map { (prefix: $0.0, behaviour: $0.1) }
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.listener = listener
        var yes: Int32 = 1
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, length) }
        }
        guard bound == 0, listen(listener, 64) == 0 else {
            close(listener)
            throw POSIXError(.EADDRINUSE)
        }
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) }
        }
        port = Int(UInt16(bigEndian: address.sin_port))
        let accepting = Thread { [self] in acceptLoop() }
        accepting.start()
    }

    /// Stops accepting; connections in progress end with the test process.
    func stop() {
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }

    private func acceptLoop() {
        while true {
            let connection = accept(listener, nil, nil)
            if connection < 0 {
                if errno == EINTR { continue }
                return
            }
            let worker = Thread { [self] in serve(connection) }
            worker.start()
        }
    }

    private func serve(_ connection: Int32) {
        defer { close(connection) }
        var request = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !request.suffix(4).elementsEqual("\r\n\r\n".utf8) && request.count < 65536 {
            let count = read(connection, &buffer, buffer.count)
            guard count > 0 else { return }
            request += buffer[0..<count]
        }
        let line = String(decoding: request.prefix { $0 != 0x0d }, as: UTF8.self).split(separator: " ")
        guard line.count >= 2 else { return }
        let path = String(line[1])
        requests.withLock { seen.append(path) }
        let behaviour = rules.first { path.hasPrefix($0.prefix) }?.behaviour
        if case .stall = behaviour {
            // Hold the connection open, answering nothing, until the client gives up.
            while read(connection, &buffer, buffer.count) > 0 {}
            return
        }
        if case .endless = behaviour {
            guard send(connection, Data("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".utf8)) else { return }
            let zeros = Data(count: 64 << 10)
            while send(connection, zeros) {}
            return
        }
        var body: Data
        if case .replace(let replacement) = behaviour {
            body = replacement
        } else if !path.contains(".."), let data = FileManager.default.contents(atPath: directory + path) {
            body = data
        } else {
            send(connection, Data("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".utf8))
            return
        }
        let head = "HTTP/1.1 200 OK\r\nContent-Length: \(body.count)\r\nConnection: close\r\n\r\n"
        guard send(connection, Data(head.utf8)) else { return }
        if case .trickle(let interval) = behaviour {
            for byte in body {
                guard send(connection, Data([byte])) else { return }
                usleep(UInt32(interval * 1_000_000))
            }
            return
        }
        _ = send(connection, body)
    }

    @discardableResult
    private func send(_ connection: Int32, _ data: Data) -> Bool {
        data.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let sent = Glibc.send(connection, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                if sent < 0 && errno == EINTR { continue }
                guard sent > 0 else { return false }
                offset += sent
            }
            return true
        }
    }
}
