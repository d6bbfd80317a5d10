// UpstreamConnection: one connection to redis-server. Keeps the FIFO of requests sent and not yet answered (each entry
// is a client to deliver to, or an internal handshake step whose reply is checked and swallowed), frames replies
// without decoding them and moves each reply's bytes to the client at the head of the FIFO.
import EventLoop
import Logging
import RESP
import RespoolCore

final class UpstreamConnection: Connection {
    /// connecting (TCP) → tls (rediss:// only: the TLS handshake) → handshaking (HELLO, SELECT) → ready.
    enum State: String {
        case connecting, tls, handshaking, ready
    }

    struct Entry {
        /// `silent`: a client's command whose reply it asked not to get (CLIENT REPLY OFF/SKIP): dropped on arrival.
        /// `scan`: one SCAN step of a client's KEYS answered by scanning (RESPOOL_KEYS=scan); consumed by respool.
        /// `commandTable`: the COMMAND reply that classifies module and newer commands (once per process).
        /// `health`: the PING of a /healthz request, answered by respool to the HTTP client.
        enum Kind: UInt8 { case client, silent, scan, hello, select, retarget, commandTable, keepalive, advisorInfo, health }
        var kind: Kind
        var client: Unmanaged<ClientConnection>?
        /// When the request was read (monotonic seconds) for the 1 in 16 sampled for the latency histogram, else 0.
        var since: Double = 0
    }

    let id: Int
    var state = State.connecting
    /// Protocol of the replies to commands appended from now on (HELLO switches it in-stream).
    var proto: Int
    /// Database that commands appended from now on run in (SELECT switches it in-stream).
    var db: Int
    var framer: ReplyFramer
    let partial = ByteChain()
    var fifo = Ring<Entry>(capacity: 64)
    var handshakeSteps = 0
    let createdAt: Double
    var connectTimer: Timer?
    var commandsServed = 0
    /// Set while this is a pub/sub subscriber connection: frames past the handshake go to the hub.
    var hub: PubSubHub?

    /// Sends a command whose replies the hub consumes itself (no FIFO entry).
    func sendInternal(_ bytes: [UInt8]) {
        out.append(bytes)
        markDirty()
    }

    /// Leased exclusively to one client (not in the shared scan); `leasedTo` is that client.
    var leased = false
    var leasedTo: Unmanaged<ClientConnection>?
    /// Bytes of the FIFO head's reply already passed on to its client (a large reply streamed as it arrives).
    var streamed = 0
    /// A reply whose incomplete part reaches this size is streamed instead of collected.
    static let streamThreshold = 16 << 10

    init(proxy: Proxy, fd: Int32, id: Int, proto: Int, db: Int) {
        self.id = id
        self.proto = proto
        self.db = db
        framer = ReplyFramer(limits: proxy.upstreamLimits)
        createdAt = proxy.base.now()
        idleSince = createdAt
        headSince = createdAt
        timingCommands = proxy.config.commandTimeout > 0
        super.init(proxy: proxy, fd: fd)
    }

    deinit {
        partial.free()
        fifo.deallocate()
    }

    /// Queues the handshake (HELLO with AUTH and SETNAME, then SELECT) ahead of anything clients send.
    func queueHandshake(name: String) {
        let url = proxy.config.upstream
        var hello = ["HELLO", String(proto)]
        if let password = url.password {
            hello += ["AUTH", url.username ?? "default", password]
        }
        hello += ["SETNAME", name]
        serverName = name
        out.append(RESPWriter.command(hello))
        push(Entry(kind: .hello, client: nil))
        handshakeSteps = 1
        if db != 0 {
            out.append(RESPWriter.command(["SELECT", String(db)]))
            push(Entry(kind: .select, client: nil))
            handshakeSteps += 1
        }
    }

    /// The name the server knows this connection by (CLIENT SETNAME).
    var serverName = ""

    /// Renames the connection on the server (only when the name changes); the reply is checked and swallowed.
    func rename(_ name: String) {
        guard name != serverName, !isClosed else { return }
        out.append(RESPWriter.command(["CLIENT", "SETNAME", name]))
        push(Entry(kind: .retarget, client: nil))
        serverName = name
        markDirty()
    }

    /// When the FIFO last became empty (for the idle and keepalive rules).
    var idleSince = 0.0
    /// RESPOOL_COMMAND_TIMEOUT is set: `headSince` is kept (when the oldest unanswered request became the oldest).
    let timingCommands: Bool
    var headSince = 0.0
    /// Past its lifetime with work in flight: no new client is given it; closed once its FIFO drains.
    var retiring = false

    /// A keepalive PING, checked and swallowed; its reply makes the connection idle again from now.
    func ping() {
        out.append(RESPWriter.command(["PING"]))
        push(Entry(kind: .keepalive, client: nil))
        idleSince = proxy.base.now()
        markDirty()
    }

    /// The PING of /healthz (its reply goes to Proxy.healthAnswered).
    func healthPing() {
        out.append(RESPWriter.command(["PING"]))
        push(Entry(kind: .health, client: nil))
        markDirty()
    }

    /// Asks the server for INFO for the advisor (consumed by respool).
    func requestInfo() {
        out.append(RESPWriter.command(["INFO"]))
        push(Entry(kind: .advisorInfo, client: nil))
        markDirty()
    }

    /// Asks the server for its command table (consumed by respool, see CommandTable.learn).
    func requestCommandTable() {
        out.append(RESPWriter.command(["COMMAND"]))
        push(Entry(kind: .commandTable, client: nil))
        markDirty()
    }

    /// Switches the connection's protocol and database in-stream (only while no client has commands in flight on
    /// it); the HELLO and SELECT replies are checked and swallowed.
    func retarget(proto p: Int, db d: Int) {
        if p != proto {
            out.append(RESPWriter.command(["HELLO", String(p)]))
            push(Entry(kind: .retarget, client: nil))
            proto = p
        }
        if d != db {
            out.append(RESPWriter.command(["SELECT", String(d)]))
            push(Entry(kind: .retarget, client: nil))
            db = d
        }
        markDirty()
    }

    @inline(__always)
    func enqueue(client: ClientConnection) {
        var e = Entry(kind: .client, client: Unmanaged.passUnretained(client))
        if proxy.sampleCountdown == 0 {
            // Leased connections are not sampled (a blocking command's wait is not latency): the next one is.
            if !leased {
                proxy.sampleCountdown = 15
                e.since = monotonicNow()
            }
        } else {
            proxy.sampleCountdown &-= 1
        }
        push(e)
    }

    /// Every FIFO entry goes in here: with a command timeout, an entry that becomes the oldest starts its clock.
    @inline(__always)
    private func push(_ e: Entry) {
        if timingCommands && fifo.isEmpty { headSince = proxy.base.now() }
        fifo.append(e)
        pushedTotal &+= 1
    }

    /// FIFO entries ever pushed; `pushedTotal - fifo.count` of them have been answered.
    private var pushedTotal = 0
    /// The round-trip probe: one request per connection at a time is timed from the write that carried it to the
    /// read that completed its reply (`probeSeq` is its number plus one, 0 = no probe running).
    private var probeSeq = 0
    private var probeStart = 0.0

    /// Output was written: if no probe is running, time the last request written. Shared connections only: a
    /// leased one may carry a blocking command, whose wait is not a round trip.
    @inline(__always)
    func startProbe() {
        if probeSeq == 0 && !fifo.isEmpty && state == .ready && !leased {
            probeSeq = pushedTotal
            probeStart = monotonicNow()
        }
    }

    /// After a read: the probed request's reply has been read.
    @inline(__always)
    private func finishProbe() {
        if probeSeq != 0 && pushedTotal &- fifo.count >= probeSeq {
            probeSeq = 0
            proxy.roundTrips.record(monotonicNow() - probeStart)
        }
    }

    func enqueueScan(client: ClientConnection) {
        push(Entry(kind: .scan, client: Unmanaged.passUnretained(client)))
    }

    func enqueueSilent(client: ClientConnection) {
        push(Entry(kind: .silent, client: Unmanaged.passUnretained(client)))
    }

    var pending: Int { fifo.count }

    override var canWrite: Bool { state != .connecting && state != .tls }
    override var isUpstream: Bool { true }

    // MARK: connecting

    override func writable() {
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

    /// An SSL_read stopped because OpenSSL had to write first: read again once the socket is writable.
    private var tlsReadWantsWrite = false

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
    private func continueTLS() {
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

    override func timerFired() {
        if state != .ready {
            fail(reason: "connect timeout after \(proxy.config.connectTimeout)s")
        }
    }

    // MARK: replies

    override func readable() {
        if let t = tls {
            readTLS(t)
            return
        }
        let scratch = proxy.scratch
        switch Socket.read(fd, into: scratch, capacity: proxy.scratchSize) {
        case .data(let n):
            proxy.stats.upstreamBytesIn &+= n
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
    private func readTLS(_ t: TLSSession) {
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
                proxy.stats.upstreamBytesIn &+= n
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

    private func process(_ buf: UnsafeRawBufferPointer) {
        let n = buf.count
        let base = buf.baseAddress!
        var offset = 0
        var frameStart = 0
        var runClient: Unmanaged<ClientConnection>? = nil
        var runStart = 0
        var runEnd = 0

        @inline(__always) func flushRun() {
            if let c = runClient {
                let (p, count) = (base + runStart, runEnd - runStart)
                c._withUnsafeGuaranteedRef { $0.deliver(p, count: count) }
                runClient = nil
            }
        }

        while offset < n {
            switch framer.next(buf, from: offset) {
            case .needMore:
                flushRun()
                let tail = n - frameStart
                if streamed > 0 || (tail + partial.count >= UpstreamConnection.streamThreshold && canStreamHead(first: base + frameStart)) {
                    // A large reply goes on to its client as it arrives (its destination is the FIFO head).
                    streamHead(partialFirst: true, base + frameStart, count: tail)
                } else {
                    partial.append(base + frameStart, count: tail)
                }
                return
            case .frame(let end):
                let fs = frameStart
                let prefix = partial.count
                offset = end
                frameStart = end
                if streamed > 0 {
                    // The rest of a reply that is being streamed.
                    flushRun()
                    streamHead(partialFirst: false, base + fs, count: end - fs)
                    streamed = 0
                    let entry = fifo.popFirst()!
                    commandsServed &+= 1
                    proxy.stats.repliesServed &+= 1
                    entry.client!._withUnsafeGuaranteedRef { $0.replyDelivered() }
                    if fifo.isEmpty { proxy.pool.becameIdle(self) }
                    continue
                }
                if let hub, fifo.isEmpty {
                    flushRun()
                    if prefix > 0 {
                        var bytes = partial.copyBytes()
                        partial.removeAll()
                        bytes.append(contentsOf: UnsafeRawBufferPointer(start: base + fs, count: end - fs))
                        bytes.withUnsafeBytes { hub.frame($0) }
                    } else {
                        hub.frame(UnsafeRawBufferPointer(start: base + fs, count: end - fs))
                    }
                    if isClosed { return }
                    continue
                }
                if framer.kind == UInt8(ascii: ">") && proto == 3 {
                    // An out-of-band push (none is expected on a shared connection): not a reply, dropped.
                    flushRun()
                    if prefix > 0 { partial.removeAll() }
                    proxy.logger.debug("push frame dropped", metadata: ["upstream.id": "\(id)"])
                    continue
                }
                guard let entry = fifo.popFirst() else {
                    flushRun()
                    fail(reason: "reply from server without a request")
                    return
                }
                if timingCommands { headSince = proxy.base.now() }
                if entry.kind == .scan {
                    flushRun()
                    var bytes = prefix > 0 ? partial.copyBytes() : []
                    if prefix > 0 { partial.removeAll() }
                    bytes.append(contentsOf: UnsafeRawBufferPointer(start: base + fs, count: end - fs))
                    entry.client!._withUnsafeGuaranteedRef { $0.scanStep(bytes, on: self) }
                    if fifo.isEmpty { proxy.pool.becameIdle(self) }
                    continue
                }
                if entry.kind != .client && entry.kind != .silent {
                    flushRun()
                    var bytes = prefix > 0 ? partial.copyBytes() : []
                    if prefix > 0 { partial.removeAll() }
                    bytes.append(contentsOf: UnsafeRawBufferPointer(start: base + fs, count: end - fs))
                    if !handshakeReply(entry.kind, bytes, kind: framer.kind) { return }
                    continue
                }
                commandsServed &+= 1
                proxy.stats.repliesServed &+= 1
                if entry.since > 0 { proxy.commandDurations.record(monotonicNow() - entry.since) }
                if framer.kind == UInt8(ascii: "-") { proxy.stats.errorReplies &+= 1 }
                if leased { proxy.stats.commandsLeased &+= 1 }
                if framer.kind == UInt8(ascii: "-") && prefix == 0 && end - fs > 4 &&
                   (base + fs + 1).load(as: UInt8.self) == UInt8(ascii: "O") && (base + fs + 2).load(as: UInt8.self) == UInt8(ascii: "O") &&
                   (base + fs + 3).load(as: UInt8.self) == UInt8(ascii: "M") {
                    proxy.stats.oomErrors &+= 1
                }
                let client = entry.client!
                let gone = entry.kind == .silent || client._withUnsafeGuaranteedRef { $0.isClosed }
                if prefix > 0 || gone {
                    flushRun()
                    if gone {
                        if prefix > 0 { partial.removeAll() }
                    } else {
                        let frameBytes = base + fs
                        client._withUnsafeGuaranteedRef {
                            if $0.doomed {
                                partial.removeAll()
                            } else {
                                $0.out.appendAll(of: partial)
                                $0.out.append(frameBytes, count: end - fs)
                                $0.markDirty()
                                $0.checkOutputLimit()
                            }
                        }
                    }
                } else if let rc = runClient, rc.toOpaque() == client.toOpaque() {
                    runEnd = end
                } else {
                    flushRun()
                    runClient = client
                    runStart = fs
                    runEnd = end
                }
                client._withUnsafeGuaranteedRef { $0.replyDelivered() }
                if fifo.isEmpty { proxy.pool.becameIdle(self) }
            case .error(let e):
                flushRun()
                fail(reason: "bad reply from server: \(e.message)")
                return
            }
        }
        flushRun()
    }

    /// Whether the incomplete reply starting at `first` (or already in `partial`) may be streamed: it belongs to a
    /// client (not a handshake step) and is not an out-of-band push.
    private func canStreamHead(first: UnsafeRawPointer) -> Bool {
        guard let e = fifo.first, e.kind == .client else { return false }
        let firstByte = partial.isEmpty ? first.load(as: UInt8.self) : partial.firstByte
        return firstByte != UInt8(ascii: ">")
    }

    /// Passes bytes of the head's reply on (what `partial` holds first), or drops them if that client is gone.
    private func streamHead(partialFirst: Bool, _ p: UnsafeRawPointer, count: Int) {
        let client = fifo.first!.client!
        client._withUnsafeGuaranteedRef { c in
            if partialFirst && !partial.isEmpty {
                streamed += partial.count
                if c.isClosed || c.doomed { partial.removeAll() } else {
                    c.out.appendAll(of: partial)
                    c.markDirty()
                    c.checkOutputLimit()
                }
            }
            streamed += count
            if !c.isClosed { c.deliver(p, count: count) }   // deliver checks the output limit
        }
    }

    /// Checks and swallows the reply to a handshake step. Returns false if the connection failed.
    private func handshakeReply(_ kind: Entry.Kind, _ bytes: [UInt8], kind type: UInt8) -> Bool {
        let isError = type == UInt8(ascii: "-") || type == UInt8(ascii: "!")
        func errorText() -> String { ((try? RESPDecoder.decode(bytes)) ?? nil)?.value.string ?? "error" }
        if kind == .advisorInfo {
            let text = ((try? RESPDecoder.decode(bytes)) ?? nil)?.value
            switch text {
            case .bulkString(let b?)?: proxy.advisorPolled(ServerFigures(info: String(decoding: b, as: UTF8.self)))
            case .verbatim(_, let b)?: proxy.advisorPolled(ServerFigures(info: String(decoding: b, as: UTF8.self)))
            default: proxy.logger.notice("INFO refused by the server; the advisor has no figures")
            }
            if fifo.isEmpty { proxy.pool.becameIdle(self) }
            return true
        }
        if kind == .health {
            if isError {
                proxy.healthAnswered(problem: "upstream answered PING with \(errorText())")
            } else {
                proxy.healthAnswered(problem: nil)
            }
            if fifo.isEmpty { proxy.pool.becameIdle(self) }
            return true
        }
        if kind == .commandTable {
            if isError {
                proxy.logger.notice("COMMAND refused by the server; using the built-in command table only")
            } else if let decoded = (try? RESPDecoder.decode(bytes)) ?? nil {
                let learned = CommandTable.learn(fromCommandReply: decoded.value)
                proxy.logger.info("command table learned from the server", metadata: [
                    "blocking_added": "\(learned.isEmpty ? "none" : learned.joined(separator: ","))"])
            }
            if fifo.isEmpty { proxy.pool.becameIdle(self) }
            return true
        }
        if isError {
            let text = errorText()
            switch kind {
            case .hello: fail(reason: "handshake failed: \(text)", handshake: true)
            case .select: fail(reason: "SELECT \(db) failed: \(text)", handshake: true)
            case .keepalive: fail(reason: "keepalive PING failed: \(text)")
            default: fail(reason: "switching protocol or database failed: \(text)")
            }
            return false
        }
        if kind == .hello, let decoded = (try? RESPDecoder.decode(bytes)) ?? nil {
            let value = decoded.value
            proxy.pool.learnServer(from: value)
        }
        if kind == .hello || kind == .select {
            handshakeSteps -= 1
            if handshakeSteps == 0 {
                state = .ready
                connectTimer?.cancel()
                proxy.pool.connectionReady(self)
            }
        }
        if fifo.isEmpty { proxy.pool.becameIdle(self) }
        return true
    }

    override func writeFailed(_ error: SystemError) {
        fail(reason: error.reason)
    }

    /// Closes the connection; every request still waiting for a reply gets an error reply, never silence.
    func fail(reason: String, handshake: Bool = false) {
        guard !isClosed else { return }
        let wasReady = state == .ready
        let wasConnecting = state != .ready
        tearDown()
        let line = RESPWriter.errorLine(wasReady ? "ERR upstream connection lost: \(reason)" : "ERR upstream unavailable: \(reason)")
        var failed = 0
        if streamed > 0, let e = fifo.popFirst(), let c = e.client {
            // Part of this reply has already reached the client: an error can no longer follow cleanly.
            streamed = 0
            failed += 1
            c._withUnsafeGuaranteedRef {
                $0.close(reason: "upstream_lost_mid_reply", detail: reason)
                $0.replyDelivered()
            }
        }
        failed += answerAll(with: line)
        proxy.stats.commandsFailed &+= failed
        proxy.pool.connectionFailed(self, reason: reason, whileConnecting: wasConnecting || handshake, failedCommands: failed)
    }

    /// Answers every request still in the FIFO with `line` (dropped for closed clients and silent requests).
    /// Returns how many client requests there were.
    @discardableResult
    private func answerAll(with line: [UInt8]) -> Int {
        var answered = 0
        while let e = fifo.popFirst() {
            if e.kind == .health { proxy.healthAnswered(problem: "the upstream connection closed before answering PING") }
            guard e.kind == .client || e.kind == .silent || e.kind == .scan, let c = e.client else { continue }
            let silent = e.kind == .silent
            answered += 1
            c._withUnsafeGuaranteedRef {
                // A KEYS answered by SCAN steps ends here with this error: it is no longer running.
                if e.kind == .scan {
                    $0.scanJob = nil
                    $0.updateFastPath()
                }
                if !$0.isClosed && !silent {
                    $0.out.append(line)
                    $0.markDirty()
                }
                $0.replyDelivered()
            }
        }
        return answered
    }

    /// Closes a connection on purpose whose remaining replies nobody will read (a lease given up with state on it):
    /// entries still in its FIFO are dropped for their (closed) clients.
    func discard(reason: String) {
        guard !isClosed else { return }
        if fifo.isEmpty {
            closeIdle(reason: reason)
            return
        }
        tearDown()
        streamed = 0
        answerAll(with: RESPWriter.errorLine("ERR respool: the leased connection was closed: \(reason)"))
        proxy.pool.connectionClosed(self, reason: reason)
    }

    /// Closes an idle connection on purpose (shutdown, protocol rebalancing).
    func closeIdle(reason: String) {
        guard !isClosed else { return }
        tearDown()
        proxy.pool.connectionClosed(self, reason: reason)
    }

    /// Marks the connection closed and lets go of its socket, timer and buffered bytes (its FIFO is the caller's).
    private func tearDown() {
        isClosed = true
        closeSocket()
        connectTimer?.free()
        connectTimer = nil
        partial.removeAll()
        out.removeAll()
    }
}
