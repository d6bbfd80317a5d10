// A blocking RESP client over TCP or a unix socket, built on Glibc sockets and the RESP module's decoder.
// Every read has a timeout (SO_RCVTIMEO plus an overall deadline), so a proxy that hangs fails the test instead of
// hanging it.
import Foundation
import RESP
#if canImport(Glibc)
import Glibc
#endif

enum Endpoint: Sendable, CustomStringConvertible {
    case tcp(host: String, port: Int)
    case unix(path: String)

    static func loopback(_ port: Int) -> Endpoint { .tcp(host: "127.0.0.1", port: port) }

    var description: String {
        switch self {
        case .tcp(let host, let port): return "\(host):\(port)"
        case .unix(let path): return "unix:\(path)"
        }
    }
}

enum TestClientError: Error, CustomStringConvertible, Equatable {
    case connectFailed(String)
    case timeout(String)
    /// The peer closed the connection (EOF) or reset it; `pending` = bytes received but not forming a whole value.
    case closed(pending: Int, reset: Bool)
    case protocolError(String)
    case io(String)

    var description: String {
        switch self {
        case .connectFailed(let s): return "connect failed: \(s)"
        case .timeout(let s): return "timeout: \(s)"
        case .closed(let pending, let reset):
            return "connection \(reset ? "reset" : "closed") by peer" + (pending > 0 ? " (\(pending) bytes of an incomplete reply)" : "")
        case .protocolError(let s): return "reply does not parse: \(s)"
        case .io(let s): return "I/O error: \(s)"
        }
    }

    var isClosed: Bool {
        if case .closed = self { return true }
        return false
    }
}

private func errnoString(_ call: String) -> String { "\(call): \(String(cString: strerror(errno)))" }

final class TestClient: @unchecked Sendable {
    let endpoint: Endpoint
    /// Default timeout (seconds) of a read that expects a reply.
    let timeout: Double
    private(set) var fd: Int32
    private var buffer: [UInt8] = []
    private var start = 0
    /// When the buffer starts with an incomplete top-level bulk string, the byte count needed before decoding again.
    private var needed = 0
    private var scratch = [UInt8](repeating: 0, count: 256 << 10)

    init(_ endpoint: Endpoint, timeout: Double = 10) throws {
        self.endpoint = endpoint
        self.timeout = timeout
        switch endpoint {
        case .tcp(let host, let port):
            fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw TestClientError.connectFailed(errnoString("socket")) }
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = in_port_t(UInt16(port).bigEndian)
            guard inet_pton(AF_INET, host, &addr.sin_addr) == 1 else {
                Glibc.close(fd)
                throw TestClientError.connectFailed("bad IPv4 address \(host)")
            }
            let rc = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            if rc != 0 {
                let msg = errnoString("connect \(endpoint)")
                Glibc.close(fd)
                throw TestClientError.connectFailed(msg)
            }
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        case .unix(let path):
            fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw TestClientError.connectFailed(errnoString("socket")) }
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            let capacity = MemoryLayout.size(ofValue: addr.sun_path)
            guard bytes.count < capacity else {
                Glibc.close(fd)
                throw TestClientError.connectFailed("unix socket path too long: \(path)")
            }
            withUnsafeMutableBytes(of: &addr.sun_path) { raw in
                for (i, b) in bytes.enumerated() { raw[i] = b }
                raw[bytes.count] = 0
            }
            let rc = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
            if rc != 0 {
                let msg = errnoString("connect \(endpoint)")
                Glibc.close(fd)
                throw TestClientError.connectFailed(msg)
            }
        }
        setTimeout(SO_RCVTIMEO, timeout)
        setTimeout(SO_SNDTIMEO, timeout)
    }

    deinit { close() }

    private func setTimeout(_ option: Int32, _ seconds: Double) {
        var tv = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1e6))
        setsockopt(fd, SOL_SOCKET, option, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    func close() {
        if fd >= 0 {
            Glibc.close(fd)
            fd = -1
        }
    }

    /// Half-close: no more requests from us, replies still readable.
    func shutdownWrite() {
        if fd >= 0 { Glibc.shutdown(fd, Int32(SHUT_WR)) }
    }

    // MARK: writing

    func send(_ bytes: [UInt8]) throws {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { raw in
                Glibc.send(fd, raw.baseAddress! + off, raw.count - off, Int32(MSG_NOSIGNAL))
            }
            if n > 0 {
                off += n
            } else if n < 0 && errno == EINTR {
                continue
            } else if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                throw TestClientError.timeout("send blocked for \(timeout)s with \(bytes.count - off) of \(bytes.count) bytes unsent to \(endpoint)")
            } else if n < 0 && (errno == EPIPE || errno == ECONNRESET) {
                throw TestClientError.closed(pending: 0, reset: errno == ECONNRESET)
            } else {
                throw TestClientError.io(errnoString("send"))
            }
        }
    }

    func send(_ text: String) throws { try send(Array(text.utf8)) }

    func sendCommand(_ args: [String]) throws { try send(RESPWriter.command(args)) }

    /// Writes `bytes` on a background thread (for payloads larger than the socket buffers, so the reader on this
    /// thread keeps draining replies); call `wait()` on the result.
    func sendInBackground(_ bytes: [UInt8]) -> BackgroundWrite {
        let result = BackgroundWrite()
        let thread = Thread { [self] in
            do {
                try self.send(bytes)
                result.finish(nil)
            } catch {
                result.finish(error)
            }
        }
        thread.stackSize = 256 << 10
        thread.start()
        return result
    }

    // MARK: commands

    func command(_ args: String...) throws -> RESPValue { try command(args) }

    func command(_ args: [String]) throws -> RESPValue {
        try sendCommand(args)
        return try readValue()
    }

    func command(bytes args: [[UInt8]]) throws -> RESPValue {
        let payload = RESPWriter.command(args)
        if payload.count > 256 << 10 {
            let w = sendInBackground(payload)
            let v = try readValue()
            try w.wait()
            return v
        }
        try send(payload)
        return try readValue()
    }

    /// Writes every command (in one write), then reads one reply per command.
    func pipeline(_ commands: [[String]]) throws -> [RESPValue] {
        var payload: [UInt8] = []
        for c in commands { payload += RESPWriter.command(c) }
        return try pipeline(raw: payload, replies: commands.count)
    }

    func pipeline(raw payload: [UInt8], replies: Int) throws -> [RESPValue] {
        if payload.count > 256 << 10 {
            let w = sendInBackground(payload)
            let values = try readValues(replies)
            try w.wait()
            return values
        }
        try send(payload)
        return try readValues(replies)
    }

    // MARK: reading

    func readValues(_ n: Int, timeout: Double? = nil) throws -> [RESPValue] {
        var out: [RESPValue] = []
        out.reserveCapacity(n)
        for _ in 0..<n { out.append(try readValue(timeout: timeout)) }
        return out
    }

    /// The next complete reply; throws `.timeout` after `timeout` (default: the client's), `.closed` at EOF.
    func readValue(timeout: Double? = nil) throws -> RESPValue {
        let deadline = Deadline(timeout ?? self.timeout)
        while true {
            if let v = try decodeBuffered() { return v }
            try fill(deadline: deadline)
        }
    }

    /// The next complete reply as the bytes that arrived, framed by `RawReplyScanner` (no decoding, no depth limit),
    /// for byte-for-byte comparisons with redis-server.
    func readRawReply(timeout: Double? = nil) throws -> [UInt8] {
        let deadline = Deadline(timeout ?? self.timeout)
        while true {
            if start < buffer.count, let end = RawReplyScanner.end(of: buffer, from: start) {
                let reply = Array(buffer[start..<end])
                start = end
                if start == buffer.count {
                    buffer.removeAll(keepingCapacity: true)
                    start = 0
                }
                needed = 0
                return reply
            }
            try fill(deadline: deadline)
        }
    }

    func readRawReplies(_ n: Int, timeout: Double? = nil) throws -> [[UInt8]] {
        try (0..<n).map { _ in try readRawReply(timeout: timeout) }
    }

    /// Bytes received and not consumed by a decoded value.
    var bufferedByteCount: Int { buffer.count - start }

    /// Everything until the peer closes (for non-RESP peers such as the stats endpoint's HTTP), bounded by `timeout`.
    func readToEnd() -> [UInt8] {
        var data = Array(buffer[start...])
        buffer.removeAll()
        start = 0
        let deadline = monotonicNow() + timeout
        while monotonicNow() < deadline {
            let n = scratch.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 { data += scratch[0..<n] } else if n < 0 && errno == EINTR { continue } else { break }
        }
        return data
    }

    private func decodeBuffered() throws -> RESPValue? {
        let available = buffer.count - start
        guard available > 0, available >= needed else { return nil }
        let result: (value: RESPValue, consumed: Int)?
        do {
            result = try buffer.withUnsafeBytes { raw throws(RESPProtocolError) in
                try RESPDecoder.decode(UnsafeRawBufferPointer(rebasing: raw[start...]))
            }
        } catch {
            throw TestClientError.protocolError("\(error); buffered: \(preview(buffer[start...]))")
        }
        guard let (value, consumed) = result else {
            needed = bulkNeed() ?? (available + 1)
            return nil
        }
        start += consumed
        needed = 0
        if start == buffer.count {
            buffer.removeAll(keepingCapacity: buffer.count < 4 << 20)
            start = 0
        } else if start > 1 << 20 && start > buffer.count / 2 {
            buffer.removeSubrange(0..<start)
            start = 0
        }
        return value
    }

    /// For a buffered top-level "$<len>\r\n" header: total bytes the value needs (avoids re-scanning a 10 MB value
    /// on every read).
    private func bulkNeed() -> Int? {
        guard buffer[start] == UInt8(ascii: "$") else { return nil }
        var i = start + 1
        var len = 0
        while i < buffer.count, buffer[i] >= 48, buffer[i] <= 57, len < 1 << 40 {
            len = len * 10 + Int(buffer[i] - 48)
            i += 1
        }
        guard i + 1 < buffer.count, buffer[i] == 13, buffer[i + 1] == 10 else { return nil }
        return (i + 2 - start) + len + 2
    }

    /// One recv into the buffer; throws on timeout / EOF.
    private func fill(deadline: Deadline) throws {
        while true {
            if deadline.expired {
                throw TestClientError.timeout("no complete reply from \(endpoint) within the deadline; buffered: \(preview(buffer[start...]))")
            }
            let wait = min(deadline.remaining, timeout)
            guard try pollReadable(seconds: wait) else { continue }
            let n = scratch.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                buffer.append(contentsOf: scratch[0..<n])
                return
            }
            if n == 0 {
                throw TestClientError.closed(pending: buffer.count - start, reset: false)
            }
            switch errno {
            case EINTR, EAGAIN, EWOULDBLOCK: continue
            case ECONNRESET: throw TestClientError.closed(pending: buffer.count - start, reset: true)
            default: throw TestClientError.io(errnoString("recv"))
            }
        }
    }

    private func pollReadable(seconds: Double) throws -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let ms = Int32(max(0, min(seconds, 3600)) * 1000)
        let r = poll(&p, 1, ms)
        if r < 0 {
            if errno == EINTR { return false }
            throw TestClientError.io(errnoString("poll"))
        }
        return r > 0
    }

    /// Outcome of waiting for the peer to close.
    enum CloseOutcome: Equatable, CustomStringConvertible {
        case closed(reset: Bool)
        case reply(RESPValue)
        case stillOpen

        var description: String {
            switch self {
            case .closed(let reset): return reset ? "reset" : "EOF"
            case .reply(let v): return "reply \(show(v))"
            case .stillOpen: return "still open (no EOF)"
            }
        }
    }

    /// Reads until EOF/reset or a reply or `timeout`.
    func waitForClose(timeout: Double = 5) -> CloseOutcome {
        do {
            let v = try readValue(timeout: timeout)
            return .reply(v)
        } catch let e as TestClientError {
            switch e {
            case .closed(let pending, let reset):
                return pending == 0 ? .closed(reset: reset) : .reply(.error(Array("<\(pending) bytes of an incomplete reply before close>".utf8)))
            case .timeout: return .stillOpen
            default: return .reply(.error(Array("<\(e)>".utf8)))
            }
        } catch {
            return .reply(.error(Array("<\(error)>".utf8)))
        }
    }

    /// True when nothing at all arrives within `seconds` (not even EOF).
    func isSilent(for seconds: Double) throws -> Bool {
        if bufferedByteCount > 0 { return false }
        return try !pollReadable(seconds: seconds)
    }
}

/// Result of `TestClient.sendInBackground`.
final class BackgroundWrite: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private let error = Locked<(any Error)?>(nil)

    func finish(_ e: (any Error)?) {
        error.withLock { $0 = e }
        done.signal()
    }

    func wait(timeout: Double = 60) throws {
        if done.wait(timeout: .now() + timeout) == .timedOut {
            throw TestClientError.timeout("background write did not finish within \(timeout)s")
        }
        if let e = error.current { throw e }
    }
}

/// Printable preview of raw protocol bytes (escaped, truncated).
func preview<C: Collection>(_ bytes: C, limit: Int = 160) -> String where C.Element == UInt8 {
    var s = ""
    for b in bytes.prefix(limit) {
        switch b {
        case 13: s += "\\r"
        case 10: s += "\\n"
        case 32...126: s += String(UnicodeScalar(b))
        default: s += String(format: "\\x%02x", b)
        }
    }
    if bytes.count > limit { s += "...(\(bytes.count) bytes)" }
    return "\"\(s)\""
}
