import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Why a peer socket could not be set up; the command line reports these as usage errors when
/// the value was given by the user.
public struct PeerSetupError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// An IPv4 `HOST:PORT` (numeric host).
public struct IPv4Endpoint: Sendable, Hashable, CustomStringConvertible {
    public let address: in_addr_t
    public let port: UInt16

    public init(parsing text: String, what: String) throws {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        var raw = in_addr()
        guard parts.count == 2, let port = UInt16(parts[1]), inet_pton(AF_INET, String(parts[0]), &raw) == 1 else {
            throw PeerSetupError("\(what) \(text.debugDescription) is not an IPv4 ADDRESS:PORT")
        }
        address = raw.s_addr
        self.port = port
    }

    public init(address: in_addr_t, port: UInt16) {
        self.address = address
        self.port = port
    }

    init(_ socketAddress: sockaddr_in) {
        address = socketAddress.sin_addr.s_addr
        port = UInt16(bigEndian: socketAddress.sin_port)
    }

    public var host: String {
        var raw = in_addr(s_addr: address)
        var buffer = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
        inet_ntop(AF_INET, &raw, &buffer, socklen_t(buffer.count))
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public var description: String { "\(host):\(port)" }

    public var isMulticast: Bool { (UInt32(bigEndian: address) >> 28) == 0xE }

    var socketAddress: sockaddr_in {
        var result = sockaddr_in()
        result.sin_family = sa_family_t(AF_INET)
        result.sin_port = port.bigEndian
        result.sin_addr = in_addr(s_addr: address)
        return result
    }
}

/// The interface multicast goes out of and is joined on: an IPv4 address of it (`127.0.0.1`)
/// or its name (`eth1`).
public struct MulticastInterface: Sendable, CustomStringConvertible {
    let request: ip_mreqn
    public let description: String

    public init(parsing text: String) throws {
        var request = ip_mreqn()
        var raw = in_addr()
        if inet_pton(AF_INET, text, &raw) == 1 {
            request.imr_address = raw
        } else {
            let index = if_nametoindex(text)
            guard index != 0 else { throw PeerSetupError("--interface \(text.debugDescription): no such interface") }
            request.imr_ifindex = Int32(index)
        }
        self.request = request
        description = text
    }
}

/// A UDP socket for announcements: bound, optionally joined to a group, sending multicast with
/// TTL 1 out of one pinned interface. Reads use a fixed buffer, so a flood costs CPU, not memory.
public final class UDPSocket: @unchecked Sendable {
    let fd: Int32

    /// Binds to `port` on every address (0: an ephemeral port); `shared` lets several processes
    /// of a host listen on the group's port.
    public init(port: UInt16, shared: Bool) throws {
        fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw PeerSetupError("socket: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        if shared {
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        var address = IPv4Endpoint(address: INADDR_ANY, port: port).socketAddress
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0 else {
            let code = errno
            close(fd)
            throw PeerSetupError("bind UDP port \(port): \(String(cString: strerror(code)))")
        }
    }

    deinit { close(fd) }

    /// Multicast leaves by `interface` only, with TTL 1 (never routed off the link).
    public func pin(to interface: MulticastInterface?) throws {
        var ttl: UInt8 = 1
        setsockopt(fd, Int32(IPPROTO_IP), IP_MULTICAST_TTL, &ttl, 1)
        var loop: UInt8 = 1
        setsockopt(fd, Int32(IPPROTO_IP), IP_MULTICAST_LOOP, &loop, 1)
        guard var request = interface?.request else { return }
        guard setsockopt(fd, Int32(IPPROTO_IP), IP_MULTICAST_IF, &request, socklen_t(MemoryLayout<ip_mreqn>.size)) == 0
        else {
            throw PeerSetupError("--interface \(interface!): \(String(cString: strerror(errno)))")
        }
    }

    /// Receives the group's datagrams on `interface` (the kernel's choice when nil).
    public func join(_ group: IPv4Endpoint, on interface: MulticastInterface?) throws {
        guard group.isMulticast else { throw PeerSetupError("\(group.host) is not a multicast group (224.0.0.0/4)") }
        var request = interface?.request ?? ip_mreqn()
        request.imr_multiaddr = in_addr(s_addr: group.address)
        guard
            setsockopt(fd, Int32(IPPROTO_IP), IP_ADD_MEMBERSHIP, &request, socklen_t(MemoryLayout<ip_mreqn>.size)) == 0
        else {
            throw PeerSetupError(
                "joining \(group.host) on \(interface?.description ?? "the default interface"): \(String(cString: strerror(errno)))"
            )
        }
    }

    /// The bound port.
    public var port: UInt16 {
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return UInt16(bigEndian: address.sin_port)
    }

    /// Sends one datagram; errors are returned, not thrown (announcing is best effort).
    @discardableResult
    public func send(_ bytes: [UInt8], to endpoint: IPv4Endpoint) -> Int32 {
        var address = endpoint.socketAddress
        let sent = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                sendto(fd, bytes, bytes.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        return sent < 0 ? errno : 0
    }

    /// Waits up to `timeout` seconds for one datagram; nil on timeout. Datagrams larger than
    /// `buffer` are truncated (and then fail to parse).
    public func receive(into buffer: inout [UInt8], timeout: Double) -> (count: Int, from: IPv4Endpoint)? {
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let ready = poll(&poller, 1, Int32(max(0, min(timeout, 3600)) * 1000))
        guard ready > 0 else { return nil }
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let count = buffer.withUnsafeMutableBytes { raw in
            withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    recvfrom(fd, raw.baseAddress, raw.count, Int32(MSG_DONTWAIT), $0, &length)
                }
            }
        }
        guard count >= 0 else { return nil }
        return (count, IPv4Endpoint(address))
    }
}
