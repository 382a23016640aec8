import Foundation
import NIOCore
import NIOPosix
import Synchronization

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

/// A UDP socket for announcements, set up with the calls NIO has no option for: bound (shared
/// by the processes of a host on the group's port), sending multicast with TTL 1 out of one
/// pinned interface, optionally joined to a group. Set up synchronously, so a bad group or
/// interface fails before anything runs; then handed to NIO as a datagram channel with a
/// handler (``channel(on:handler:)``), which owns it from there on.
public final class UDPSocket: Sendable {
    private let descriptor: Int32
    /// Whether a channel took the descriptor (and closes it).
    private let handedOver = Atomic<Bool>(false)

    /// Binds to `port` on every address (0: an ephemeral port); `shared` lets several processes
    /// of a host listen on the group's port.
    public init(port: UInt16, shared: Bool) throws {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw PeerSetupError("socket: \(String(cString: strerror(errno)))") }
        descriptor = fd
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

    deinit { if !handedOver.load(ordering: .acquiring) { close(descriptor) } }

    /// Multicast leaves by `interface` only, with TTL 1 (never routed off the link).
    public func pin(to interface: MulticastInterface?) throws {
        var ttl: UInt8 = 1
        setsockopt(descriptor, Int32(IPPROTO_IP), IP_MULTICAST_TTL, &ttl, 1)
        var loop: UInt8 = 1
        setsockopt(descriptor, Int32(IPPROTO_IP), IP_MULTICAST_LOOP, &loop, 1)
        guard var request = interface?.request else { return }
        let size = socklen_t(MemoryLayout<ip_mreqn>.size)
        guard setsockopt(descriptor, Int32(IPPROTO_IP), IP_MULTICAST_IF, &request, size) == 0 else {
            throw PeerSetupError("--interface \(interface!): \(String(cString: strerror(errno)))")
        }
    }

    /// Receives the group's datagrams on `interface` (the kernel's choice when nil).
    public func join(_ group: IPv4Endpoint, on interface: MulticastInterface?) throws {
        guard group.isMulticast else { throw PeerSetupError("\(group.host) is not a multicast group (224.0.0.0/4)") }
        var request = interface?.request ?? ip_mreqn()
        request.imr_multiaddr = in_addr(s_addr: group.address)
        let size = socklen_t(MemoryLayout<ip_mreqn>.size)
        guard setsockopt(descriptor, Int32(IPPROTO_IP), IP_ADD_MEMBERSHIP, &request, size) == 0 else {
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
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
        }
        return UInt16(bigEndian: address.sin_port)
    }

    /// Hands the socket to NIO, once, with `handler` in its pipeline: datagrams are read into
    /// buffers of one datagram's size (``PeerWire/maxDatagram`` + 1, so a longer one arrives cut
    /// and fails to parse) and handled on the event loop as they come, so a flood costs CPU, not
    /// memory, and a busy task pool delays nothing that is counted.
    public func channel(
        on group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        handler: @escaping @Sendable () -> any ChannelHandler
    ) async throws -> any Channel {
        guard !handedOver.exchange(true, ordering: .acquiringAndReleasing) else {
            throw PeerSetupError("a UDP socket can be handed to one channel only")
        }
        do {
            // The future-based hand-over: the async one fails with "operation unsupported" for
            // an already bound datagram socket in NIO 2.101.
            return try await DatagramBootstrap(group: group)
                .channelOption(
                    .recvAllocator,
                    value: FixedSizeRecvByteBufferAllocator(capacity: PeerWire.maxDatagram + 1)
                )
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(handler()) }
                }
                .withBoundSocket(descriptor).get()
        } catch {
            throw PeerSetupError("UDP port \(port): \(error)")
        }
    }
}

extension IPv4Endpoint {
    /// The endpoint as NIO names it.
    var nioAddress: SocketAddress { SocketAddress(socketAddress, host: host) }

    /// An IPv4 NIO address as an endpoint; nil for any other family.
    init?(_ address: SocketAddress) {
        guard case .v4(let v4) = address else { return nil }
        self.init(v4.address)
    }
}

extension AddressedEnvelope<ByteBuffer> {
    /// A datagram of `bytes` to `endpoint`.
    init(_ bytes: [UInt8], to endpoint: IPv4Endpoint) {
        self.init(remoteAddress: endpoint.nioAddress, data: ByteBuffer(bytes: bytes))
    }
}
