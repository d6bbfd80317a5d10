// Socket: the POSIX socket calls the proxy needs (read, connect, options, addresses), each failure a SystemError.
internal import CLibevent
import Glibc

public enum ReadResult {
    case data(Int)
    case wouldBlock
    case eof
    case failed(SystemError)
}

public enum Socket {
    /// One read() into `buffer`.
    @inline(__always)
    public static func read(_ fd: Int32, into buffer: UnsafeMutableRawPointer, capacity: Int) -> ReadResult {
        let n = Glibc.read(fd, buffer, capacity)
        if n > 0 { return .data(n) }
        if n == 0 { return .eof }
        let e = respool_errno()
        if respool_is_again(e) != 0 { return .wouldBlock }
        return .failed(SystemError("read", errno: e))
    }

    /// One send(); returns the bytes written, 0 when the socket is full or on error (the flush reports errors).
    @inline(__always)
    public static func write(_ fd: Int32, _ p: UnsafeRawPointer, count: Int) -> Int {
        let n = Glibc.send(fd, p, count, Int32(MSG_NOSIGNAL))
        return n > 0 ? n : 0
    }

    /// Best-effort small write (used for a last error line to a client that is being refused).
    public static func writeBestEffort(_ fd: Int32, _ bytes: StaticString) {
        _ = Glibc.send(fd, bytes.utf8Start, bytes.utf8CodeUnitCount, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
    }

    public static func close(_ fd: Int32) { _ = Glibc.close(fd) }

    public static func setNoDelay(_ fd: Int32) {
        var one: Int32 = 1
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    /// TCP keepalive: first probe after `idle` seconds, then every `interval`, `count` probes.
    public static func setKeepAlive(_ fd: Int32, idle: Int32 = 60, interval: Int32 = 15, count: Int32 = 4) {
        var one: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, socklen_t(MemoryLayout<Int32>.size))
        var v = idle
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_KEEPIDLE, &v, socklen_t(MemoryLayout<Int32>.size))
        v = interval
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_KEEPINTVL, &v, socklen_t(MemoryLayout<Int32>.size))
        v = count
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_KEEPCNT, &v, socklen_t(MemoryLayout<Int32>.size))
    }

    /// The pending error of a socket whose non-blocking connect finished (0 = connected).
    public static func pendingError(_ fd: Int32) -> Int32 {
        var err: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 { return respool_errno() }
        return err
    }

    public enum ConnectStart {
        case connected(Int32)
        case inProgress(Int32)
    }

    /// Starts a non-blocking connect to `address`.
    public static func startConnect(_ address: SocketAddress) throws(SystemError) -> ConnectStart {
        let fd = socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        if fd < 0 { throw SystemError("socket") }
        let rc = address.withSockAddr { sa, len in Glibc.connect(fd, sa, len) }
        if rc == 0 { return .connected(fd) }
        let e = respool_errno()
        if e == EINPROGRESS || e == EINTR { return .inProgress(fd) }
        Glibc.close(fd)
        throw SystemError("connect", errno: e)
    }

    /// Local and peer address of a connected socket as "host:port" (or the unix path).
    public static func peerName(_ fd: Int32) -> String {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &len) }
        }
        return rc == 0 ? SocketAddress(storage: storage, length: len).description : "?"
    }

    public static func localName(_ fd: Int32) -> String {
        localAddress(fd)?.description ?? "?"
    }

    public static func localAddress(_ fd: Int32) -> SocketAddress? {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        return rc == 0 ? SocketAddress(storage: storage, length: len) : nil
    }
}

/// An IPv4, IPv6 or unix socket address.
public struct SocketAddress: CustomStringConvertible, Sendable {
    var storage: sockaddr_storage
    var length: socklen_t

    init(storage: sockaddr_storage, length: socklen_t) {
        self.storage = storage
        self.length = length
    }

    public var family: Int32 { Int32(storage.ss_family) }
    public var isUnix: Bool { family == AF_UNIX }

    /// Resolves `host` (numeric or a name, via getaddrinfo) with `port`. Prefers the first address returned.
    public static func resolve(host: String, port: Int) throws(SystemError) -> SocketAddress {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_family = AF_UNSPEC
        var res: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &res)
        guard rc == 0, let first = res else {
            throw SystemError("getaddrinfo(\(host))", errno: rc == EAI_SYSTEM ? respool_errno() : 0)
        }
        defer { freeaddrinfo(res) }
        var storage = sockaddr_storage()
        withUnsafeMutableBytes(of: &storage) { dst in
            dst.copyMemory(from: UnsafeRawBufferPointer(start: first.pointee.ai_addr, count: Int(first.pointee.ai_addrlen)))
        }
        return SocketAddress(storage: storage, length: first.pointee.ai_addrlen)
    }

    public static func unix(path: String) throws(SystemError) -> SocketAddress {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let cap = MemoryLayout.size(ofValue: addr.sun_path)
        guard bytes.count < cap else { throw SystemError("unix socket path too long (\(bytes.count) bytes, max \(cap - 1))", errno: ENAMETOOLONG) }
        withUnsafeMutableBytes(of: &addr.sun_path) { dst in
            dst.copyBytes(from: bytes)
            dst[bytes.count] = 0
        }
        var storage = sockaddr_storage()
        withUnsafeMutableBytes(of: &storage) { dst in
            withUnsafeBytes(of: addr) { dst.copyMemory(from: $0) }
        }
        return SocketAddress(storage: storage, length: socklen_t(MemoryLayout<sockaddr_un>.size))
    }

    func withSockAddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        withUnsafePointer(to: storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) }
        }
    }

    public var port: Int {
        withUnsafePointer(to: storage) { p -> Int in
            switch Int32(p.pointee.ss_family) {
            case AF_INET: return p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin_port)) }
            case AF_INET6: return p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin6_port)) }
            default: return 0
            }
        }
    }

    public var description: String {
        withUnsafePointer(to: storage) { p -> String in
            switch Int32(p.pointee.ss_family) {
            case AF_INET:
                return p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { sin -> String in
                    var a = sin.pointee.sin_addr
                    var buf = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
                    inet_ntop(AF_INET, &a, &buf, socklen_t(buf.count))
                    return "\(cString(buf)):\(UInt16(bigEndian: sin.pointee.sin_port))"
                }
            case AF_INET6:
                return p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { sin -> String in
                    var a = sin.pointee.sin6_addr
                    var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
                    inet_ntop(AF_INET6, &a, &buf, socklen_t(buf.count))
                    return "[\(cString(buf))]:\(UInt16(bigEndian: sin.pointee.sin6_port))"
                }
            case AF_UNIX:
                return p.withMemoryRebound(to: sockaddr_un.self, capacity: 1) { sun -> String in
                    var path = sun.pointee.sun_path
                    return withUnsafeBytes(of: &path) { raw in
                        let bytes = raw.prefix { $0 != 0 }
                        return bytes.isEmpty ? "unix" : String(decoding: bytes, as: UTF8.self)
                    }
                }
            default: return "?"
            }
        }
    }
}

private func cString(_ buf: [CChar]) -> String {
    String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
