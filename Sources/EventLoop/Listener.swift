// Listener: accepts client connections (evconnlistener) on TCP or a unix socket and hands each fd to its handler.
internal import CLibevent
import Glibc

/// Receives accepted sockets (already non-blocking).
open class AcceptHandler {
    public init() {}
    open func accepted(fd: Int32, isUnix: Bool) {}
    open func acceptFailed(_ error: SystemError) {}
}

public final class Listener {
    private var raw: OpaquePointer?
    public let address: SocketAddress
    public let unixPath: String?
    private let handler: AcceptHandler

    /// Binds and listens on TCP `host:port` (port 0 picks a free one; see `address` for the one chosen).
    public init(base: EventBase, host: String, port: Int, backlog: Int32 = 1024, handler: AcceptHandler) throws(SystemError) {
        let addr = try SocketAddress.resolve(host: host, port: port)
        self.handler = handler
        unixPath = nil
        let flags = UInt32(LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC)
        let arg = Unmanaged.passUnretained(handler).toOpaque()
        let l = addr.withSockAddr { sa, len in
            evconnlistener_new_bind(base.raw, Listener.acceptCallback, arg, flags, backlog, sa, Int32(len))
        }
        guard let l else { throw SystemError("listen on \(addr)") }
        raw = l
        address = Socket.localAddress(evconnlistener_get_fd(l)) ?? addr
        evconnlistener_set_error_cb(l, Listener.errorCallback)
    }

    /// Listens on a unix socket at `path` (a stale socket file there is replaced).
    public init(base: EventBase, unixPath path: String, backlog: Int32 = 1024, handler: AcceptHandler) throws(SystemError) {
        let addr = try SocketAddress.unix(path: path)
        self.handler = handler
        unixPath = path
        var st = stat()
        if lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFSOCK { unlink(path) }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        if fd < 0 { throw SystemError("socket(AF_UNIX)") }
        if addr.withSockAddr({ sa, len in bind(fd, sa, len) }) != 0 {
            let e = SystemError("bind \(path)")
            Glibc.close(fd)
            throw e
        }
        let flags = UInt32(LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC)
        let arg = Unmanaged.passUnretained(handler).toOpaque()
        guard let l = evconnlistener_new(base.raw, Listener.acceptCallback, arg, flags, backlog, fd) else {
            let e = SystemError("listen on \(path)")
            Glibc.close(fd)
            throw e
        }
        raw = l
        address = addr
        evconnlistener_set_error_cb(l, Listener.errorCallback)
    }

    private static let acceptCallback: evconnlistener_cb = { _, fd, sa, _, arg in
        let isUnix = sa.map { Int32($0.pointee.sa_family) == AF_UNIX } ?? false
        Unmanaged<AcceptHandler>.fromOpaque(arg!)._withUnsafeGuaranteedRef { $0.accepted(fd: fd, isUnix: isUnix) }
    }

    private static let errorCallback: evconnlistener_errorcb = { _, arg in
        let err = SystemError("accept")
        Unmanaged<AcceptHandler>.fromOpaque(arg!)._withUnsafeGuaranteedRef { $0.acceptFailed(err) }
    }

    public func pause() { if let raw { evconnlistener_disable(raw) } }
    public func resume() { if let raw { evconnlistener_enable(raw) } }

    /// Stops listening and closes the socket (and removes the unix socket file).
    public func close() {
        if let raw { evconnlistener_free(raw) }
        raw = nil
        if let unixPath { unlink(unixPath) }
    }

    deinit { close() }
}
