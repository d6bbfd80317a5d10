// UpstreamConnection+Connect: connecting an upstream connection (TCP, then TLS for rediss://) and reading from it
// (plain read() or SSL_read into the loop's scratch buffer); what is read goes to `process`.
import EventLoop
import RESP
import RespoolCore

extension UpstreamConnection {
    // MARK: connecting

    /// Writable: the TCP connect completed, the TLS handshake can go on, or a short write can continue.
    func writableNow() {
        if state == .connecting {
            let err = Socket.pendingError(fd)
            if err != 0 {
                fail(reason: SystemError("connect", errno: err).reason)
                return
            }
            connected()
            return
        }
        if state == .tls {
            continueTLS()
            return
        }
        flush()
        if tlsReadWantsWrite, let t = tls, !isClosed {
            tlsReadWantsWrite = false
            readTLS(t)
        }
    }


    func connected() {
        disarmWrite()
        Socket.setNoDelay(fd)
        Socket.setKeepAlive(fd)
        if let context = proxy.tlsContext {
            do {
                tls = try TLSSession(context: context, fd: fd, serverName: proxy.tlsServerName)
            } catch {
                fail(reason: error.call)
                return
            }
            state = .tls
            enableReading()
            continueTLS()
            return
        }
        state = .handshaking
        enableReading()
        flush()
    }

    /// Advances the TLS handshake; once done, the queued HELLO (and SELECT) go out as on a plain connection.
    func continueTLS() {
        guard let t = tls else { return }
        switch t.handshake() {
        case .done:
            state = .handshaking
            proxy.logger.debug("upstream TLS established", metadata: ["upstream.id": "\(id)", "tls": "\(t.description)"])
            flush()
        case .wantRead:
            disarmWrite()
        case .wantWrite:
            armWrite()
        case .failed(let why):
            fail(reason: why)
        }
    }

    /// The connect timer: the connect and handshake took longer than RESPOOL_CONNECT_TIMEOUT.
    func connectTimerFired() {
        if state != .ready {
            fail(reason: "connect timeout after \(proxy.config.connectTimeout)s")
        }
    }

    // MARK: replies

    func readNow() {
        if let t = tls {
            readTLS(t)
            return
        }
        let scratch = proxy.scratch
        switch Socket.read(fd, into: scratch, capacity: proxy.scratchSize) {
        case .data(let n):
            proxy.stats[.upstreamBytesIn] &+= n
            process(UnsafeRawBufferPointer(start: scratch, count: n))
            if !isClosed { finishProbe() }
        case .wouldBlock:
            return
        case .eof:
            fail(reason: "connection closed by server")
        case .failed(let e):
            fail(reason: e.reason)
        }
    }

    /// Reads a TLS connection (one record per SSL_read), processing each piece as a plain read would: up to 16 records
    /// per wake-up (the level-triggered read event fires again for what is left in the socket), and on past that
    /// only while OpenSSL itself holds bytes, which would not wake the event again.
    func readTLS(_ t: TLSSession) {
        if state == .tls {
            continueTLS()
            return
        }
        let scratch = proxy.scratch
        // A write that stopped because OpenSSL had to read first is retried after this read.
        if t.writeWantsRead && !out.isEmpty { markDirty() }
        var budget = 16
        while !isClosed {
            switch t.read(into: scratch, capacity: proxy.scratchSize) {
            case .data(let n):
                proxy.stats[.upstreamBytesIn] &+= n
                process(UnsafeRawBufferPointer(start: scratch, count: n))
                if !isClosed { finishProbe() }
                budget -= 1
                if budget <= 0 && !t.hasPending { return }
            case .wouldBlock(let wantsWrite):
                if wantsWrite {
                    tlsReadWantsWrite = true
                    armWrite()
                }
                return
            case .eof:
                fail(reason: "connection closed by server")
                return
            case .failed(let why):
                fail(reason: why)
                return
            }
        }
    }

}
