// UpstreamConnection: one connection to redis-server, carrying bytes. It keeps the FIFO of requests sent and not yet
// answered, frames replies without decoding them and moves each reply's bytes to whoever is at the head of the FIFO:
// a client, a client that asked for no reply, a SCAN step of a client's KEYS, or a request of respool's own
// (handshake, keepalive, /healthz, INFO, COMMAND) whose reply is checked and consumed in `internalReplied`.
// Connecting (TCP, TLS) lives in UpstreamConnection+Connect.swift; what the pool decides, in PoolState.
import EventLoop
import Logging
import RESP
import RespoolCore

final class UpstreamConnection: Connection {
    /// connecting (TCP) → tls (rediss:// only: the TLS handshake) → handshaking (HELLO, SELECT) → ready.
    enum State: String {
        case connecting, tls, handshaking, ready
    }

    /// A request of respool's own, whose reply respool checks and consumes.
    enum Internal: UInt8 {
        /// The handshake: HELLO (with AUTH and SETNAME), then SELECT when the database is not 0.
        case hello, select
        /// HELLO, SELECT or CLIENT SETNAME sent to switch or name an established connection.
        case retarget
        /// A keepalive PING, and the PING that checks an idle connection before reuse.
        case keepalive, check
        /// COMMAND (classifies module and newer commands, once per process), the advisor's INFO, /healthz's PING.
        case commandTable, advisorInfo, health
        /// RESET of a lease given back with state on it (then HELLO and SELECT as `retarget`).
        case reset
        /// The handshake's AUTH with a client's credential (a connection of that user's pool).
        case auth
        /// AUTH with respool's credentials after /healthz's PING: a password changed on the server shows.
        case healthAuth
    }

    /// One FIFO entry: who gets the reply to a request sent.
    enum Entry {
        /// A client's request; `since` is when it was read, for the 1 in 16 sampled for latency (else 0).
        case client(Unmanaged<ClientConnection>, since: Double)
        /// A client's request whose reply it asked not to get (CLIENT REPLY OFF/SKIP): dropped on arrival.
        case silent(Unmanaged<ClientConnection>)
        /// One SCAN step of a client's KEYS (RESPOOL_KEYS=scan).
        case scan(Unmanaged<ClientConnection>)
        /// A PUBLISH, SPUBLISH or PUBSUB NUMSUB/SHARDNUMSUB whose counts are corrected (its kind is the first of
        /// `countKinds`).
        case counted(Unmanaged<ClientConnection>)
        /// A client's credential sent to be checked (the first of `verifications`); the client has nothing in flight.
        case verify(Unmanaged<ClientConnection>)
        case respool(Internal)
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
    /// Leased exclusively to one client (not sampled for latency); `leasedTo` is that client.
    var leased = false
    var leasedTo: Unmanaged<ClientConnection>?
    /// Bytes of the FIFO head's reply already passed on to its client (a large reply streamed as it arrives).
    var streamed = 0
    /// A reply whose incomplete part reaches this size is streamed instead of collected.
    static let streamThreshold = 16 << 10
    /// The name the server knows this connection by (CLIENT SETNAME).
    var serverName = ""
    /// The server's id for this connection (from the handshake's HELLO reply; 0 until then).
    var serverID: Int64 = 0
    /// RESPOOL_COMMAND_TIMEOUT is set: `headSince` is kept (when the oldest unanswered request became the oldest).
    let timingCommands: Bool
    var headSince = 0.0
    /// An SSL_read stopped because OpenSSL had to write first: read again once the socket is writable.
    var tlsReadWantsWrite = false
    /// Nothing answered for a whole progress interval with requests waiting (Pool.checkProgress): new clients go
    /// elsewhere.
    var stuck = false
    /// In MONITOR mode (pinned by a client, until the reply to respool's RESET): the server's monitor lines go to the
    /// client holding it, or nowhere once it has been given back.
    var monitoring = false
    var servedAtLastCheck = 0
    var pendingAtLastCheck = false

    /// The pool's name for this connection.
    var handle: ConnHandle { ConnHandle(Unmanaged.passUnretained(self).toOpaque()) }

    init(proxy: Proxy, fd: Int32, id: Int, proto: Int, db: Int) {
        self.id = id
        self.proto = proto
        self.db = db
        framer = ReplyFramer(limits: proxy.upstreamLimits)
        createdAt = proxy.base.now()
        headSince = createdAt
        timingCommands = proxy.config.commandTimeout > 0
        super.init(proxy: proxy, fd: fd)
    }

    deinit {
        partial.free()
        fifo.deallocate()
    }

    var pending: Int { fifo.count }

    override var canWrite: Bool { state != .connecting && state != .tls }
    override var isUpstream: Bool { true }
    override func readable() { readNow() }
    override func writable() { writableNow() }
    override func timerFired() { connectTimerFired() }

    // MARK: requests

    /// Every FIFO entry goes in here: with a command timeout, an entry that becomes the oldest starts its clock.
    @inline(__always)
    private func push(_ e: Entry) {
        if timingCommands && fifo.isEmpty { headSince = proxy.base.now() }
        fifo.append(e)
        pushedTotal &+= 1
    }

    @inline(__always)
    func enqueue(client: ClientConnection) {
        var since = 0.0
        if proxy.sampleCountdown == 0 {
            // Leased connections are not sampled (a blocking command's wait is not latency): the next one is.
            if !leased {
                proxy.sampleCountdown = 15
                since = monotonicNow()
            }
        } else {
            proxy.sampleCountdown &-= 1
        }
        push(.client(Unmanaged.passUnretained(client), since: since))
    }

    func enqueueSilent(client: ClientConnection) { push(.silent(Unmanaged.passUnretained(client))) }

    /// The credential this connection authenticated with (Credentials; 0: the URL's).
    var user = 0
    /// The server's error to the handshake's HELLO AUTH, when it refused it.
    var handshakeError: String?
    /// Credential ids of the `.verify` entries, oldest first.
    var verifications: [Int] = []

    /// Checks credential `id` for `client`: its AUTH again on this connection of that credential's pool (whose
    /// handshake already sent it: a refusal there fails the connection and answers the client with the server's
    /// error instead).
    func sendVerification(for client: ClientConnection, credential id: Int) {
        if let auth = proxy.credentials.auth(id) { out.append(RESPWriter.command(auth)) }
        push(.verify(Unmanaged.passUnretained(client)))
        verifications.append(id)
        markDirty()
    }

    /// AUTH with this connection's own credential (for a URL without a password: the default user, which then has
    /// none, takes any).
    var ownAuth: [[UInt8]] {
        if let auth = proxy.credentials.auth(user) { return auth }
        let c = proxy.credentials.urlCredential
        return [Array("AUTH".utf8), Array((c.user ?? "default").utf8), Array((c.password ?? "respool").utf8)]
    }

    /// How the replies of the `.counted` entries in the FIFO are rewritten, oldest first.
    var countKinds: [ReplyRewrite] = []

    func enqueueCounted(client: ClientConnection, _ kind: ReplyRewrite) {
        countKinds.append(kind)
        push(.counted(Unmanaged.passUnretained(client)))
    }

    /// A SCAN step of `client`'s KEYS.
    func sendScan(_ command: [UInt8], for client: ClientConnection) {
        out.append(command)
        push(.scan(Unmanaged.passUnretained(client)))
        markDirty()
    }

    /// A request of respool's own (its reply goes to `internalReplied`).
    func send(_ r: Internal, _ command: [String]) {
        out.append(RESPWriter.command(command))
        push(.respool(r))
        markDirty()
    }

    /// Sends a command whose replies the hub consumes itself (no FIFO entry).
    func sendToHub(_ bytes: [UInt8]) {
        out.append(bytes)
        markDirty()
    }

    /// Queues the handshake (HELLO with AUTH and SETNAME, then SELECT) ahead of anything clients send.
    func queueHandshake(name: String) {
        var hello = ["HELLO", String(proto)]
        handshakeSteps = 0
        if let auth = proxy.credentials.auth(user) {
            // A client's credential, sent as the client sent it (its answer is the client's, should it be refused).
            out.append(RESPWriter.command(auth))
            push(.respool(.auth))
            handshakeSteps += 1
        } else if let password = proxy.credentials.urlCredential.password {
            hello += ["AUTH", proxy.credentials.urlCredential.user ?? "default", password]
        }
        hello += ["SETNAME", name]
        serverName = name
        send(.hello, hello)
        handshakeSteps += 1
        if db != 0 {
            send(.select, ["SELECT", String(db)])
            handshakeSteps += 1
        }
    }

    /// A lease given back with state on it (MONITOR, tracking, a transaction, another database): RESET clears
    /// everything the client set up, then the handshake's HELLO (RESP2, credentials, respool's name) and SELECT.
    /// Requests queued behind these see a fresh connection.
    func sendReset(name: String, db d: Int) {
        send(.reset, ["RESET"])
        if let auth = proxy.credentials.auth(user) {
            out.append(RESPWriter.command(auth))
            push(.respool(.retarget))
        }
        var hello = ["HELLO", "2"]
        if proxy.credentials.auth(user) == nil, let password = proxy.credentials.urlCredential.password {
            hello += ["AUTH", proxy.credentials.urlCredential.user ?? "default", password]
        }
        send(.retarget, hello + ["SETNAME", name])
        serverName = name
        proto = 2
        db = 0
        if d != 0 {
            send(.retarget, ["SELECT", String(d)])
            db = d
        }
    }

    /// Renames the connection on the server (only when the name changes).
    func rename(_ name: String) {
        guard name != serverName, !isClosed else { return }
        send(.retarget, ["CLIENT", "SETNAME", name])
        serverName = name
    }

    /// Switches the connection's protocol and database in-stream (only while no client has commands in flight on
    /// it, or for the client holding it as a lease).
    func retarget(proto p: Int, db d: Int) {
        if p != proto {
            send(.retarget, ["HELLO", String(p)])
            proto = p
        }
        if d != db {
            send(.retarget, ["SELECT", String(d)])
            db = d
        }
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
    func finishProbe() {
        if probeSeq != 0 && pushedTotal &- fifo.count >= probeSeq {
            probeSeq = 0
            proxy.roundTrips.record(monotonicNow() - probeStart)
        }
    }

    // MARK: replies

    func process(_ buf: UnsafeRawBufferPointer) {
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

        /// The frame's bytes as one array (internal replies, hub frames: never on the data path).
        func frameBytes(_ fs: Int, _ end: Int) -> [UInt8] {
            var bytes = partial.isEmpty ? [] : partial.copyBytes()
            partial.removeAll()
            bytes.append(contentsOf: UnsafeRawBufferPointer(start: base + fs, count: end - fs))
            return bytes
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
                    guard case .client(let c, _)? = fifo.popFirst() else { preconditionFailure("streamed a reply without a client at the FIFO head") }
                    commandsServed &+= 1
                    proxy.stats[.okReplies] &+= 1
                    c._withUnsafeGuaranteedRef { $0.replyDelivered() }
                    if fifo.isEmpty { proxy.pool.becameIdle(self) }
                    continue
                }
                if let hub, fifo.isEmpty {
                    flushRun()
                    let bytes = frameBytes(fs, end)
                    bytes.withUnsafeBytes { hub.frame($0) }
                    if isClosed { return }
                    continue
                }
                if framer.kind == UInt8(ascii: ">") && proto == 3 {
                    // An out-of-band push: not a reply. On a lease it is the holder's (tracking invalidations), in
                    // the order the server sent it; elsewhere none is expected, and it is dropped.
                    flushRun()
                    if leased, let holder = leasedTo {
                        unsolicited(frameBytes(fs, end), to: holder)
                        if isClosed { return }
                    } else {
                        if prefix > 0 { partial.removeAll() }
                        proxy.logger.debug("push frame dropped", metadata: ["upstream.id": "\(id)"])
                    }
                    continue
                }
                if monitoring && framer.kind == UInt8(ascii: "+") {
                    // A monitor line ("+<seconds>.<micros> [db addr] ..."), or a simple-string reply: only monitor
                    // lines start with a digit (a monitor cannot run keyspace commands, whose replies might).
                    let second = prefix >= 2 ? partial.byte(at: 1) : (base + fs + 1 - prefix).load(as: UInt8.self)
                    if second >= UInt8(ascii: "0") && second <= UInt8(ascii: "9") {
                        flushRun()
                        let bytes = frameBytes(fs, end)
                        if leased, let holder = leasedTo { unsolicited(bytes, to: holder) }
                        if isClosed { return }
                        continue
                    }
                }
                guard let entry = fifo.popFirst() else {
                    flushRun()
                    fail(reason: "reply from server without a request")
                    return
                }
                if timingCommands { headSince = proxy.base.now() }
                switch entry {
                case .client(let client, let since):
                    commandsServed &+= 1
                    let isError = framer.kind == UInt8(ascii: "-")
                    proxy.stats[isError ? .errorReplies : .okReplies] &+= 1
                    if since > 0 { proxy.commandDurations.record(monotonicNow() - since) }
                    if leased { proxy.stats[.commandsLeased] &+= 1 }
                    if isError && prefix == 0 && end - fs > 4 && (base + fs + 1).load(as: UInt8.self) == UInt8(ascii: "O")
                        && (base + fs + 2).load(as: UInt8.self) == UInt8(ascii: "O") && (base + fs + 3).load(as: UInt8.self) == UInt8(ascii: "M") {
                        proxy.stats[.oomErrors] &+= 1
                    }
                    let gone = client._withUnsafeGuaranteedRef { $0.isClosed }
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
                case .silent(let client):
                    flushRun()
                    if prefix > 0 { partial.removeAll() }
                    commandsServed &+= 1
                    client._withUnsafeGuaranteedRef { $0.replyDelivered() }
                case .verify(let client):
                    flushRun()
                    commandsServed &+= 1
                    let bytes = frameBytes(fs, end)
                    let id = verifications.removeFirst()
                    let accepted = framer.kind == UInt8(ascii: "+")
                    if accepted { proxy.credentials.accepted(id, now: proxy.base.now()) } else { proxy.credentials.refused(id) }
                    client._withUnsafeGuaranteedRef { c in
                        guard !c.isClosed else { return }
                        c.credentialChecked(accepted ? .verified(user: id) : .refused(bytes))
                    }
                case .counted(let client):
                    flushRun()
                    commandsServed &+= 1
                    let kind = countKinds.removeFirst()
                    let isError = framer.kind == UInt8(ascii: "-")
                    proxy.stats[isError ? .errorReplies : .okReplies] &+= 1
                    let raw = frameBytes(fs, end)
                    let bytes: [UInt8]
                    switch kind {
                    case _ where isError: bytes = raw
                    case .counts(let count): bytes = count.corrected(raw, proto: proto) { self.proxy.subscriberCorrection($0, $1) }
                    case .secrets: bytes = SecretMask.masked(raw, proto: proto)
                    }
                    client._withUnsafeGuaranteedRef { c in
                        if !c.isClosed && !c.doomed {
                            c.out.append(bytes)
                            c.markDirty()
                            c.checkOutputLimit()
                        }
                        c.replyDelivered()
                    }
                case .scan(let client):
                    flushRun()
                    commandsServed &+= 1
                    let bytes = frameBytes(fs, end)
                    client._withUnsafeGuaranteedRef { $0.scanStep(bytes, on: self) }
                case .respool(let r):
                    flushRun()
                    commandsServed &+= 1
                    if !internalReplied(r, frameBytes(fs, end), isError: framer.kind == UInt8(ascii: "-") || framer.kind == UInt8(ascii: "!")) {
                        return
                    }
                }
                if fifo.isEmpty { proxy.pool.becameIdle(self) }
            case .error(let e):
                flushRun()
                fail(reason: "bad reply from server: \(e.message)")
                return
            }
        }
        flushRun()
    }

    /// Output of the server that answers no request (a monitor line, a RESP3 push) for the client holding the lease.
    private func unsolicited(_ bytes: [UInt8], to holder: Unmanaged<ClientConnection>) {
        holder._withUnsafeGuaranteedRef { c in
            guard !c.isClosed else { return }
            bytes.withUnsafeBytes { c.deliver($0.baseAddress!, count: $0.count) }   // checks the output limit
        }
    }

    /// Whether the incomplete reply starting at `first` (or already in `partial`) may be streamed: it belongs to a
    /// client (not a request of respool's own) and is not an out-of-band push.
    private func canStreamHead(first: UnsafeRawPointer) -> Bool {
        guard case .client? = fifo.first, !monitoring else { return false }
        let firstByte = partial.isEmpty ? first.load(as: UInt8.self) : partial.firstByte
        return firstByte != UInt8(ascii: ">")
    }

    /// Passes bytes of the head's reply on (what `partial` holds first), or drops them if that client is gone.
    private func streamHead(partialFirst: Bool, _ p: UnsafeRawPointer, count: Int) {
        guard case .client(let client, _)? = fifo.first else { preconditionFailure("streaming without a client at the FIFO head") }
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

    /// Checks and consumes the reply to a request of respool's own. Returns false if the connection failed.
    private func internalReplied(_ r: Internal, _ bytes: [UInt8], isError: Bool) -> Bool {
        func errorText() -> String { ((try? RESPDecoder.decode(bytes)) ?? nil)?.value.string ?? "error" }
        switch r {
        case .advisorInfo:
            switch ((try? RESPDecoder.decode(bytes)) ?? nil)?.value {
            case .bulkString(let b?)?: proxy.periodic.advisorPolled(ServerFigures(info: String(decoding: b, as: UTF8.self)))
            case .verbatim(_, let b)?: proxy.periodic.advisorPolled(ServerFigures(info: String(decoding: b, as: UTF8.self)))
            default: proxy.logger.notice("INFO refused by the server; the advisor has no figures")
            }
        case .health:
            // Healthy only once the AUTH after it (respool's credentials still good) is answered too.
            if isError { proxy.health.answered(problem: "upstream answered PING with \(errorText())") }
        case .commandTable:
            if isError {
                proxy.logger.notice("COMMAND refused by the server; using the built-in command table only")
            } else if let decoded = (try? RESPDecoder.decode(bytes)) ?? nil {
                let learned = CommandTable.learn(fromCommandReply: decoded.value)
                proxy.logger.info("command table learned from the server", metadata: [
                    "blocking_added": "\(learned.isEmpty ? "none" : learned.joined(separator: ","))"])
            }
        case .hello, .select:
            if isError {
                let text = errorText()
                if r == .hello { handshakeError = text }
                fail(reason: r == .hello ? "handshake failed: \(text)" : "SELECT \(db) failed: \(text)", handshake: true)
                return false
            }
            if r == .hello, let decoded = (try? RESPDecoder.decode(bytes)) ?? nil, let info = ServerInfo(helloReply: decoded.value) {
                serverID = info.connectionID
                proxy.serverHandshake(info)
            }
            handshakeSteps -= 1
            if handshakeSteps == 0 {
                state = .ready
                connectTimer?.cancel()
                proxy.pool.connected(self)
            }
        case .auth:
            if isError {
                handshakeError = errorText()
                fail(reason: "handshake failed: \(handshakeError!)", handshake: true)
                return false
            }
            handshakeSteps -= 1
        case .healthAuth:
            proxy.health.answered(problem: isError
                ? "upstream refuses respool's credentials (user \(proxy.credentials.userName(user))): \(errorText())" : nil)
        case .reset:
            if isError {
                fail(reason: "RESET of a lease given back failed: \(errorText())")
                return false
            }
            monitoring = false
        case .retarget, .keepalive, .check:
            if isError {
                fail(reason: r == .retarget ? "switching protocol or database failed: \(errorText())" : "PING failed: \(errorText())")
                return false
            }
            if r == .check { proxy.pool.checked(self) }
        }
        return true
    }

    // MARK: failure and closing

    override func writeFailed(_ error: SystemError) {
        fail(reason: error.reason)
    }

    /// Closes the connection; every request still waiting for a reply gets an error reply, never silence.
    func fail(reason: String, handshake: Bool = false) {
        guard !isClosed else { return }
        let wasReady = state == .ready
        tearDown()
        let line = RESPWriter.errorLine(wasReady ? "ERR upstream connection lost: \(reason)" : "ERR upstream unavailable: \(reason)")
        var failed = 0
        if streamed > 0, case .client(let c, _)? = fifo.popFirst() {
            // Part of this reply has already reached the client: an error can no longer follow cleanly.
            streamed = 0
            failed += 1
            c._withUnsafeGuaranteedRef {
                $0.close(reason: "upstream_lost_mid_reply", detail: reason)
                $0.replyDelivered()
            }
        }
        failed += answerAll(with: line)
        proxy.stats[.commandsFailed] &+= failed
        proxy.pool.failed(self, reason: reason, whileConnecting: !wasReady || handshake, failedCommands: failed)
    }

    /// Answers every request still in the FIFO with `line` (dropped for closed clients and silent requests).
    /// Returns how many client requests there were.
    @discardableResult
    private func answerAll(with line: [UInt8]) -> Int {
        var answered = 0
        while let e = fifo.popFirst() {
            switch e {
            case .respool(.health), .respool(.healthAuth):
                proxy.health.answered(problem: "the upstream connection closed before answering PING")
            case .verify(let c):
                // Refused in the handshake: the server's own words; else the connection's failure.
                let answer = handshakeError.map { RESPWriter.errorLine($0) } ?? line
                c._withUnsafeGuaranteedRef { if !$0.isClosed { $0.credentialChecked(.refused(answer)) } }
            case .respool:
                break
            case .client(let c, _), .silent(let c), .scan(let c), .counted(let c):
                answered += 1
                let silent: Bool
                if case .silent = e { silent = true } else { silent = false }
                let scan: Bool
                if case .scan = e { scan = true } else { scan = false }
                c._withUnsafeGuaranteedRef {
                    if !$0.isClosed && !silent && $0.session.onControl && $0.session.lastCommand == SmallBytes("shutdown") {
                        // The server went down as SHUTDOWN asked: the client's connection closes without a reply, as
                        // a direct one does (client libraries take that as SHUTDOWN's success).
                        proxy.logger.notice("the server closed the connection after a client's SHUTDOWN", metadata: [
                            "client.id": "\($0.id)", "client.addr": "\($0.peerAddress)", "upstream.id": "\(id)"])
                        $0.close(reason: "server_shutdown", detail: "the server closed the connection after SHUTDOWN")
                    } else if !$0.isClosed && !silent {
                        $0.out.append(line)
                        $0.markDirty()
                    }
                    // A KEYS answered by SCAN steps ends here with this error: it is no longer running.
                    if scan { $0.scanEnded() }
                    $0.replyDelivered()
                }
            }
        }
        verifications.removeAll()
        countKinds.removeAll()
        return answered
    }

    /// Closes a connection on purpose (idle, lifetime, a lease given up with state on it, shutdown): entries still in
    /// its FIFO are answered with an error (their clients are closed, or are given it as a direct connection to a
    /// closed server would).
    func close(reason: String) {
        guard !isClosed else { return }
        tearDown()
        streamed = 0
        answerAll(with: RESPWriter.errorLine("ERR respool: the connection was closed: \(reason)"))
        proxy.pool.closed(self, reason: reason)
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
