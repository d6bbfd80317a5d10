// HTTPServer: a small evhttp server on the proxy's own event loop (the stats endpoint). Most requests are answered
// synchronously from the handler; one may also be answered later (an upstream PING for /healthz) through its
// HTTPReply. Nothing here blocks the loop.
internal import CLibevent
import Glibc

/// Answers one HTTP request: the path (without the query), returns status, content type and body.
open class HTTPHandler {
    public init() {}
    open func respond(method: String, path: String) -> (status: Int32, contentType: String, body: [UInt8]) {
        (404, "text/plain", Array("not found\n".utf8))
    }

    /// Answers now or later through `reply` (exactly once); by default with `respond(method:path:)`.
    open func respond(method: String, path: String, reply: HTTPReply) {
        let (status, contentType, body) = respond(method: method, path: path)
        reply.send(status: status, contentType: contentType, body: body)
    }
}

/// One request waiting for its answer. Sent once; the server answers any still unsent with 503 when it closes.
public final class HTTPReply {
    fileprivate var req: OpaquePointer?
    fileprivate weak var server: HTTPServer?

    fileprivate init(_ req: OpaquePointer, server: HTTPServer) {
        self.req = req
        self.server = server
    }

    /// Set once a streamed answer has begun (`start`); it is then finished with `end`.
    public private(set) var isStreaming = false

    public var isSent: Bool { req == nil }

    /// Sends a whole answer (not for one begun with `start`: that one is finished with `end`).
    public func send(status: Int32, contentType: String, body: [UInt8]) {
        guard let req, !isStreaming else { return }
        self.req = nil
        server?.pending.removeValue(forKey: ObjectIdentifier(self))
        setHeaders(req, contentType)
        let out = evhttp_request_get_output_buffer(req)
        body.withUnsafeBytes { if $0.count > 0 { evbuffer_add(out, $0.baseAddress, $0.count) } }
        // A request whose client has gone is freed by evhttp_send_reply without writing.
        evhttp_send_reply(req, status, HTTPReply.reason(status), nil)
    }

    /// Begins an answer sent in parts over several loop iterations (chunked for HTTP/1.1; HTTP/1.0 clients get
    /// the parts and a closed connection), so a large document never holds up the data path.
    public func start(status: Int32, contentType: String) {
        guard let req, !isStreaming else { return }
        isStreaming = true
        setHeaders(req, contentType)
        evhttp_send_reply_start(req, status, HTTPReply.reason(status))
    }

    /// One part of a streamed answer (dropped by evhttp if the client has gone).
    public func chunk(_ body: [UInt8]) {
        guard let req, isStreaming, !body.isEmpty, let buf = evbuffer_new() else { return }
        body.withUnsafeBytes { _ = evbuffer_add(buf, $0.baseAddress, $0.count) }
        evhttp_send_reply_chunk(req, buf)
        evbuffer_free(buf)
    }

    /// Finishes a streamed answer.
    public func end() {
        guard let req, isStreaming else { return }
        self.req = nil
        server?.pending.removeValue(forKey: ObjectIdentifier(self))
        evhttp_send_reply_end(req)
    }

    private func setHeaders(_ req: OpaquePointer, _ contentType: String) {
        if let headers = evhttp_request_get_output_headers(req) {
            evhttp_add_header(headers, "Content-Type", contentType)
            evhttp_add_header(headers, "Cache-Control", "no-store")
        }
    }

    private static func reason(_ status: Int32) -> String {
        status == 200 ? "OK" : status == 503 ? "Service Unavailable" : "Not Found"
    }
}

public final class HTTPServer {
    private var raw: OpaquePointer?
    private let handler: HTTPHandler
    public private(set) var address: SocketAddress?
    /// Requests answered later and not yet sent.
    fileprivate var pending: [ObjectIdentifier: HTTPReply] = [:]

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
            Unmanaged<HTTPServer>.fromOpaque(arg)._withUnsafeGuaranteedRef { $0.serve(req) }
        }, Unmanaged.passUnretained(self).toOpaque())
    }

    private func serve(_ req: OpaquePointer) {
        let uri = evhttp_request_get_uri(req).map { String(cString: $0) } ?? "/"
        let path = String(uri.prefix { $0 != "?" })
        let method = evhttp_request_get_command(req) == EVHTTP_REQ_HEAD ? "HEAD" : "GET"
        let reply = HTTPReply(req, server: self)
        pending[ObjectIdentifier(reply)] = reply
        handler.respond(method: method, path: path, reply: reply)
    }

    /// Answers what is still unanswered with 503 and ends streamed answers where they are. evhttp writes them in the
    /// following loop passes.
    public func answerPending() {
        for r in Array(pending.values) {
            if r.isStreaming { r.end() } else { r.send(status: 503, contentType: "text/plain; charset=utf-8", body: Array("closing\n".utf8)) }
        }
    }

    /// Answers what is still pending (see `answerPending`), then frees the server: call it after the loop has had a
    /// pass or two to write those answers, or they are lost.
    public func close() {
        answerPending()
        if let raw { evhttp_free(raw) }
        raw = nil
    }

    deinit { close() }
}
