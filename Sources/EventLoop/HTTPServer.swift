// HTTPServer: a small evhttp server on the proxy's own event loop (the stats endpoint). Requests are answered
// synchronously from the handler; nothing here blocks the loop.
internal import CLibevent
import Glibc

/// Answers one HTTP request: the path (without the query), returns status, content type and body.
open class HTTPHandler {
    public init() {}
    open func respond(method: String, path: String) -> (status: Int32, contentType: String, body: [UInt8]) {
        (404, "text/plain", Array("not found\n".utf8))
    }
}

public final class HTTPServer {
    private var raw: OpaquePointer?
    private let handler: HTTPHandler
    public private(set) var address: SocketAddress?

    public init(base: EventBase, host: String, port: Int, handler: HTTPHandler) throws(SystemError) {
        self.handler = handler
        guard let http = evhttp_new(base.raw) else { throw SystemError("evhttp_new", errno: 0) }
        guard let bound = evhttp_bind_socket_with_handle(http, host, UInt16(port)) else {
            let e = SystemError("listen on \(host):\(port) (stats)")
            evhttp_free(http)
            throw e
        }
        raw = http
        address = Socket.localAddress(evhttp_bound_socket_get_fd(bound))
        evhttp_set_allowed_methods(http, UInt16(EVHTTP_REQ_GET.rawValue | EVHTTP_REQ_HEAD.rawValue))
        evhttp_set_gencb(http, { req, arg in
            guard let req, let arg else { return }
            Unmanaged<HTTPHandler>.fromOpaque(arg)._withUnsafeGuaranteedRef { h in HTTPServer.serve(req, h) }
        }, Unmanaged.passUnretained(handler).toOpaque())
    }

    private static func serve(_ req: OpaquePointer, _ handler: HTTPHandler) {
        let uri = evhttp_request_get_uri(req).map { String(cString: $0) } ?? "/"
        let path = String(uri.prefix { $0 != "?" })
        let method = evhttp_request_get_command(req) == EVHTTP_REQ_HEAD ? "HEAD" : "GET"
        let (status, contentType, body) = handler.respond(method: method, path: path)
        if let headers = evhttp_request_get_output_headers(req) {
            evhttp_add_header(headers, "Content-Type", contentType)
            evhttp_add_header(headers, "Cache-Control", "no-store")
        }
        let out = evhttp_request_get_output_buffer(req)
        body.withUnsafeBytes { if $0.count > 0 { evbuffer_add(out, $0.baseAddress, $0.count) } }
        evhttp_send_reply(req, status, status == 200 ? "OK" : status == 503 ? "Service Unavailable" : "Not Found", nil)
    }

    public func close() {
        if let raw { evhttp_free(raw) }
        raw = nil
    }

    deinit { close() }
}
