// ClientConnection: one application client. Frames its requests without decoding them, routes each by its command
// head, pipelines multiplexed commands onto the upstream connection it is pinned to while it has commands in flight,
// and answers connection-level commands itself, always in the order the client sent them.
import EventLoop
import Logging
import RESP
import RespoolCore

final class ClientConnection: Connection {
    enum Stall {
        case none
        /// A command that respool answers itself waits until the client's in-flight commands are answered.
        case barrier
        /// Waiting for the pool (no upstream connection of the client's protocol can be had right now).
        case pool
    }

    let id: Int
    let isUnix: Bool
    let createdAt: Double
    var lastActive: Double
    var framer: RequestFramer
    /// Bytes of a request that has not fully arrived, or, while stalled, the stalled request and everything after it.
    var partial = LazyByteChain()
    /// The upstream connection this client's in-flight commands are on (nil when none are in flight).
    /// Unretained: an upstream connection outlives every pin (it is failed, which unpins, before it is released).
    var upstream: Unmanaged<UpstreamConnection>?
    var inFlight = 0
    var proto = 2
    var db: Int
    var name: [UInt8]?
    var libName: [UInt8]?
    var libVersion: [UInt8]?
    var stall = Stall.none
    var pendingHead = CommandHead()
    var pendingLength = 0
    var closeAfterFlush = false
    var closeReason = ""
    var lastCommand = SmallBytes()
    /// An exclusive upstream connection held for a transaction (MULTI/WATCH) or a blocking command; while it is
    /// held, `upstream` is the same connection and every command of this client goes there.
    var lease: Unmanaged<UpstreamConnection>?
    var inMulti = false
    var watching = false
    /// The lease's connection state was changed by commands respool cannot undo (connection commands inside MULTI).
    var leaseTainted = false
    /// False until AUTH (or HELLO AUTH) succeeds when RESPOOL_CLIENT_PASSWORD is set.
    var authenticated: Bool
    enum ReplyMode { case on, off, skipNext }
    /// CLIENT REPLY: which replies this client gets.
    var replyMode = ReplyMode.on
    /// True while the command being handled must get no reply (CLIENT REPLY OFF / SKIP).
    var silenceCurrent = false
    /// Commands queued in the current MULTI (CLIENT LIST's multi= field).
    var multiQueued = 0
    /// Channels, patterns and shard channels this client is subscribed to (see PubSubHub.Space).
    var subscriptions: [Set<[UInt8]>] = [[], [], []]
    /// SUBSCRIBE requests whose confirmations wait for the server's.
    var pubsubPending = 0
    /// Links of the janitor's activity list.
    var activityPrev: Unmanaged<ClientConnection>?
    var activityNext: Unmanaged<ClientConnection>?
    var inActivityList = false

    /// Clients the idle timeout never closes: subscribers, clients with replies due (blocked ones included) or
    /// waiting for a connection or for their own earlier replies.
    var isIdleTimeoutExempt: Bool { isSubscribed || inFlight > 0 || stall != .none || scanJob != nil }

    /// Reading stopped because RESPOOL_MAX_PIPELINE commands are unanswered.
    var pipelineThrottled = false
    /// Over the output limit: closed after this iteration, nothing more is queued for it.
    var doomed = false
    /// Since when the output has been above the soft limit.
    var softLimitSince: Double?

    /// When this client began waiting for the pool (nil when it is not waiting).
    var waitStart: Double?
    /// A KEYS being answered by SCAN (RESPOOL_KEYS=scan).
    var scanJob: ScanJob?
    /// Whether a multiplexable command may take the fast path (no auth, reply mode or subscribed-mode rules apply).
    var fastPath = true

    var isSubscribed: Bool { !subscriptions[0].isEmpty || !subscriptions[1].isEmpty || !subscriptions[2].isEmpty || pubsubPending > 0 }

    func updateFastPath() {
        fastPath = authenticated && replyMode == .on && pubsubPending == 0 && !(proto == 2 && isSubscribed) && multiRefused == nil
            && scanJob == nil
    }

    /// Set when MULTI could not get a connection: until EXEC or DISCARD, nothing is run (see refusedTransaction).
    var multiRefused: String?
    var lastLeaseError: String?

    init(proxy: Proxy, fd: Int32, id: Int, isUnix: Bool) {
        self.id = id
        self.isUnix = isUnix
        framer = RequestFramer(limits: proxy.limits)
        db = proxy.config.upstream.db
        authenticated = proxy.clientPassword == nil
        fastPath = authenticated
        createdAt = proxy.base.now()
        lastActive = createdAt
        super.init(proxy: proxy, fd: fd)
    }

    deinit { partial.free() }

    // MARK: input

    override func readable() {
        let scratch = proxy.scratch
        switch Socket.read(fd, into: scratch, capacity: proxy.scratchSize) {
        case .data(let n):
            proxy.stats.clientBytesIn &+= n
            lastActive = proxy.base.now()
            if inActivityList { proxy.activity.touch(self) }
            process(UnsafeRawBufferPointer(start: scratch, count: n))
            if inFlight >= proxy.config.maxPipeline && readEnabled {
                // Too many unanswered commands: stop reading until half of them are answered.
                pipelineThrottled = true
                proxy.stats.pipelineThrottles &+= 1
                disableReading()
            }
        case .wouldBlock:
            return
        case .eof:
            close(reason: "client_closed")
        case .failed(let e):
            close(reason: "read_error", detail: e.reason)
        }
    }

    /// Frames `buf` and dispatches every complete request. Consecutive multiplexed requests are appended to the
    /// upstream's output as one run.
    func process(_ buf: UnsafeRawBufferPointer) {
        let n = buf.count
        let base = buf.baseAddress!
        var offset = 0
        var frameStart = 0
        var runStart = 0
        var runEnd = 0

        @inline(__always) func flushRun() {
            if runEnd > runStart {
                let (p, c) = (base + runStart, runEnd - runStart)
                upstream!._withUnsafeGuaranteedRef {
                    $0.out.append(p, count: c)
                    $0.markDirty()
                }
            }
            runStart = 0
            runEnd = 0
        }

        while offset < n {
            switch framer.next(buf, from: offset) {
            case .needMore:
                flushRun()
                partial.append(base + frameStart, count: n - frameStart)
                return
            case .frame(let end):
                let head = framer.head
                let fs = frameStart
                let prefix = partial.count
                offset = end
                frameStart = end
                if head.argc == 0 {
                    // An empty request (*0, *-1, a blank inline line): no reply is due, nothing is sent.
                    flushRun()
                    if prefix > 0 { partial.removeAll() }
                    continue
                }
                if fastPath, !head.isInline, CommandTable.route(head.name) == .forward {
                    var target = upstream
                    if target == nil {
                        switch proxy.pool.acquire(proto: proto, db: db) {
                        case .ready(let u):
                            upstream = u
                            target = u
                        case .wait:
                            // Stall this request and everything after it until the pool has a connection.
                            flushRun()
                            stallInput(head: head, bytes: base + fs, count: n - fs, frameLength: prefix + end - fs, reason: .pool)
                            return
                        case .unavailable(let why):
                            flushRun()
                            if prefix > 0 { partial.removeAll() }
                            replyError("ERR upstream unavailable: \(why)")
                            proxy.stats.commandsFailed &+= 1
                            continue
                        }
                    }
                    if prefix > 0 {
                        flushRun()
                        let frameBytes = base + fs
                        target!._withUnsafeGuaranteedRef {
                            $0.out.appendAll(of: partial)
                            $0.out.append(frameBytes, count: end - fs)
                            $0.markDirty()
                        }
                    } else if runEnd > runStart {
                        runEnd = end
                    } else {
                        runStart = fs
                        runEnd = end
                    }
                    target!._withUnsafeGuaranteedRef { $0.enqueue(client: self) }
                    inFlight += 1
                    if inMulti { multiQueued += 1 }
                    proxy.stats.commandsForwarded &+= 1
                    continue
                }
                // Everything else is the slow path: decode the request.
                flushRun()
                let handled: Bool
                if prefix > 0 {
                    var bytes = partial.copyBytes()
                    bytes.append(contentsOf: UnsafeRawBufferPointer(start: base + fs, count: end - fs))
                    handled = bytes.withUnsafeBytes { handleSlow(head: head, frame: $0) }
                } else {
                    handled = handleSlow(head: head, frame: UnsafeRawBufferPointer(start: base + fs, count: end - fs))
                }
                if !handled {
                    stallInput(head: head, bytes: base + fs, count: n - fs, frameLength: prefix + end - fs, reason: stall)
                    return
                }
                if prefix > 0 { partial.removeAll() }
                if isClosed || closeAfterFlush { return }
            case .error(let e):
                flushRun()
                protocolError(e)
                return
            }
        }
        flushRun()
    }

    /// Keeps a request that cannot be handled yet (and everything after it) and stops reading until it can.
    private func stallInput(head: CommandHead, bytes: UnsafeRawPointer, count: Int, frameLength: Int, reason: Stall) {
        partial.append(bytes, count: count)
        pendingHead = head
        pendingLength = frameLength
        stall = reason
        if reason == .pool { proxy.pool.addWaiter(self) }
        disableReading()
    }

    /// Called (after the loop iteration) when the reason for a stall may be gone.
    func resume() {
        guard stall != .none, !isClosed else { return }
        stall = .none
        let bytes = partial.copyBytes()
        partial.removeAll()
        bytes.withUnsafeBytes { all in
            let frame = UnsafeRawBufferPointer(rebasing: all[0..<pendingLength])
            if !handleSlow(head: pendingHead, frame: frame) {
                partial.append(all.baseAddress!, count: all.count)
                if stall == .pool { proxy.pool.addWaiter(self) }
                return
            }
            if let started = waitStart {
                proxy.waitDurations.record(proxy.base.now() - started)
                waitStart = nil
            }
            if isClosed || closeAfterFlush { return }
            if all.count > pendingLength {
                process(UnsafeRawBufferPointer(rebasing: all[pendingLength...]))
            }
        }
        if stall == .none && !isClosed && !closeAfterFlush && !proxy.shuttingDown && !pipelineThrottled {
            enableReading()
        }
    }

    /// Waited RESPOOL_WAIT_TIMEOUT for the pool: the waiting request gets an error (nothing of this client is in
    /// flight, so the order holds) and the rest of its input goes on.
    func waitTimedOut(cap: Int) {
        guard stall == .pool, !isClosed else { return }
        stall = .none
        if let started = waitStart { proxy.waitDurations.record(proxy.base.now() - started) }
        waitStart = nil
        proxy.stats.waitTimeouts &+= 1
        let bytes = partial.copyBytes()
        partial.removeAll()
        let t = proxy.config.waitTimeout
        let seconds = t == t.rounded() ? String(Int(t)) : String(t)
        let message = "ERR respool: no upstream connection free within \(seconds)s (cap \(cap) reached)"
        replyError(message)
        var waitedFor = pendingHead.name
        if pendingHead.isInline {
            let args = bytes.withUnsafeBytes { try? InlineCommand.split(UnsafeRawBufferPointer(rebasing: $0[0..<pendingLength])) }
            waitedFor = args?.first.map { SmallBytes(lowercasing: $0) } ?? SmallBytes()
        }
        if waitedFor == SmallBytes("multi") {
            multiRefused = "no upstream connection free within \(seconds)s"
            updateFastPath()
        }
        proxy.logger.info("wait timeout", metadata: ["client.id": "\(id)", "cap": "\(cap)", "leased": "\(proxy.pool.leasedCount)"])
        if bytes.count > pendingLength {
            bytes.withUnsafeBytes { process(UnsafeRawBufferPointer(rebasing: $0[pendingLength...])) }
        }
        if stall == .none && !isClosed && !closeAfterFlush && !proxy.shuttingDown && !pipelineThrottled {
            enableReading()
        }
    }

    /// Handles a request off the fast path (contiguous bytes). Returns false when it must wait (`stall` says why).
    private func handleSlow(head: CommandHead, frame: UnsafeRawBufferPointer) -> Bool {
        if head.isInline {
            let args: [[UInt8]]
            do {
                args = try InlineCommand.split(frame)
            } catch {
                if inFlight > 0 { stall = .barrier; return false }
                protocolError(error)
                return true
            }
            if args.isEmpty { return true }
            let name = SmallBytes(lowercasing: args[0])
            var arg1 = SmallBytes()
            if args.count > 1 { arg1 = SmallBytes(lowercasing: args[1]) }
            let h = CommandHead(argc: args.count, isInline: false, name: name, arg1: arg1)
            let encoded = RESPWriter.command(args)
            return encoded.withUnsafeBytes { dispatch(head: h, frame: $0, args: args) }
        }
        return dispatch(head: head, frame: frame, args: nil)
    }

    private func dispatch(head: CommandHead, frame: UnsafeRawBufferPointer, args knownArgs: [[UInt8]]?) -> Bool {
        let route = CommandTable.route(head.name)
        // CLIENT REPLY OFF/SKIP: this command gets no reply (CLIENT REPLY itself decides for its own).
        let isClientReply = route == .local(.client) && head.arg1 == SmallBytes("reply")
        silenceCurrent = replyMode != .on && !isClientReply
        defer { silenceCurrent = false }
        let handled = dispatchRouted(route, head: head, frame: frame, args: knownArgs)
        if handled {
            lastCommand = head.name
            if inMulti && lease != nil { multiQueued += 1 }
            if replyMode == .skipNext && !isClientReply { replyMode = .on }
        }
        updateFastPath()
        return handled
    }

    private func dispatchRouted(_ route: CommandRoute, head: CommandHead, frame: UnsafeRawBufferPointer,
                                args knownArgs: [[UInt8]]?) -> Bool {
        if scanJob != nil {
            // A KEYS answered by SCAN steps is running: what follows waits for its answer.
            stall = .barrier
            return false
        }
        if !authenticated {
            switch route {
            case .local(.auth), .local(.hello), .local(.quit), .local(.reset): break
            default:
                if inFlight > 0 { stall = .barrier; return false }
                // redis-server rejects an unknown command (or a wrong argument count) before asking for AUTH.
                replyError(CommandTable.serverRejection(knownArgs ?? RESPDecoder.arguments(ofRequest: frame)) ?? "NOAUTH Authentication required.")
                return true
            }
        }
        if pubsubPending > 0 {
            // Confirmations of an earlier SUBSCRIBE are still due: keep the order.
            stall = .barrier
            return false
        }
        if proto == 2 && isSubscribed {
            switch route {
            case .pubsub, .ping, .local(.quit), .local(.reset): break
            default:
                if inFlight > 0 { stall = .barrier; return false }
                let args = knownArgs ?? RESPDecoder.arguments(ofRequest: frame)
                replyError(CommandTable.serverRejection(args) ?? "ERR Can't execute '\(CommandTable.fullName(args))': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context")
                return true
            }
        }
        if let reason = multiRefused {
            switch route {
            case .local(.quit), .local(.reset): break
            default: return refusedTransaction(route, reason: reason)
            }
        }
        switch route {
        case .forward:
            return forward(frame)
        case .pubsub(let command):
            if inFlight > 0 { stall = .barrier; return false }
            return pubsub(command, args: knownArgs ?? RESPDecoder.arguments(ofRequest: frame))
        case .keys:
            return keys(frame: frame, args: knownArgs)
        case .ping:
            if proto == 2 && isSubscribed {
                if inFlight > 0 { stall = .barrier; return false }
                subscribedPing(knownArgs ?? RESPDecoder.arguments(ofRequest: frame))
                return true
            }
            return forward(frame)
        case .streamRead:
            if CommandTable.streamReadBlocks(knownArgs ?? RESPDecoder.arguments(ofRequest: frame)) {
                return leased(frame, reason: .blocking)
            }
            return forward(frame)
        case .blocking:
            return leased(frame, reason: .blocking)
        case .transaction(let t):
            return transaction(t, frame: frame)
        case .stateful(let kind):
            return refuse(head: head, kind: kind)
        case .local(let command) where inMulti && command != .quit && command != .reset:
            // Inside MULTI, redis queues connection commands too (+QUEUED, run at EXEC): send them to the lease,
            // whose connection state they may change, so it is closed rather than returned afterwards.
            leaseTainted = true
            return forward(frame)
        case .local(let command):
            if command == .client {
                switch CommandTable.clientSubcommand(head.arg1) {
                case .forward: return forward(frame)
                case .stateful:
                    if inFlight > 0 { stall = .barrier; return false }
                    replyError(CommandTable.refusal(command: "client|\(head.arg1)", kind: .connectionState))
                    return true
                default: break
                }
            }
            if inFlight > 0 {
                stall = .barrier
                return false
            }
            let args = knownArgs ?? RESPDecoder.arguments(ofRequest: frame)
            return runLocal(command, args: args)
        }
    }

    // MARK: leases

    /// Transactions: MULTI and WATCH take an exclusive lease (after this client's shared in-flight commands are
    /// answered); EXEC and DISCARD end MULTI and WATCH, UNWATCH ends WATCH; the lease goes back to the pool once the
    /// state has ended and every reply is in. Without a lease, EXEC/DISCARD/UNWATCH go to a shared connection, where
    /// redis answers them as it would this client ("EXEC without MULTI", +OK).
    private func transaction(_ t: TransactionCommand, frame: UnsafeRawBufferPointer) -> Bool {
        switch t {
        case .multi, .watch:
            if !leased(frame, reason: .transaction) { return false }
            guard lease != nil else {
                // No connection could be leased (the error is answered): the commands queued after this MULTI must
                // not run outside a transaction.
                if t == .multi { multiRefused = lastLeaseError ?? "no upstream connection" }
                return true
            }
            if t == .multi {
                if !inMulti { multiQueued = -1 }   // MULTI itself is not queued
                inMulti = true
            } else if !inMulti {
                watching = true       // WATCH inside MULTI is an error in redis and changes nothing
            }
            return true
        case .exec, .discard:
            if lease == nil { return forward(frame) }
            _ = forward(frame)
            if inMulti {
                inMulti = false
                watching = false      // EXEC and DISCARD unwatch everything
            }
            return true
        case .unwatch:
            if lease == nil { return forward(frame) }
            _ = forward(frame)
            if !inMulti { watching = false }   // inside MULTI, UNWATCH is queued and changes nothing now
            return true
        }
    }

    enum LeaseReason { case transaction, blocking }

    /// Sends `frame` over this client's exclusive connection, leasing one first if it has none. Returns false when it
    /// must wait (for its shared in-flight commands, or for a connection to lease).
    private func leased(_ frame: UnsafeRawBufferPointer, reason: LeaseReason) -> Bool {
        if lease == nil {
            if inFlight > 0 {
                stall = .barrier
                return false
            }
            switch proxy.pool.lease(proto: proto, db: db, for: self) {
            case .ready(let u):
                lease = u
                upstream = u
                proxy.stats.leasesGranted &+= 1
            case .wait:
                stall = .pool
                return false
            case .unavailable(let why):
                replyError(why)
                lastLeaseError = why
                proxy.stats.commandsFailed &+= 1
                return true
            }
        }
        return forward(frame)
    }

    /// After a MULTI that could not start (no connection to lease), the client's pipelined transaction is answered
    /// as redis answers one whose commands failed to queue: errors, then EXECABORT at EXEC. Nothing of it runs.
    private func refusedTransaction(_ route: CommandRoute, reason: String) -> Bool {
        if inFlight > 0 { stall = .barrier; return false }
        switch route {
        case .transaction(.exec):
            multiRefused = nil
            replyError("EXECABORT Transaction discarded because of previous errors.")
        case .transaction(.discard):
            multiRefused = nil
            reply(Array("+OK\r\n".utf8))
        case .transaction(.multi):
            replyError("ERR MULTI calls can not be nested")
        case .transaction(.watch):
            replyError("ERR WATCH inside MULTI is not allowed")
        default:
            replyError("ERR respool: command not queued: the transaction could not start (\(reason))")
        }
        return true
    }

    /// Whether this client's connection state still needs its lease.
    var holdsState: Bool { inMulti || watching }

    /// Gives the lease back (nothing in flight, no state left) or closes its connection (state unknown).
    func endLease() {
        guard let u = lease else { return }
        lease = nil
        upstream = nil
        let tainted = leaseTainted || holdsState || inFlight > 0
        leaseTainted = false
        inMulti = false
        watching = false
        proxy.pool.endLease(u, clean: !tainted)
    }

    /// The leased connection failed: its replies have been answered with errors. A client that had transaction state
    /// on it is closed after those errors, as a direct connection to a failed server would be.
    func leaseLost() {
        let hadState = holdsState
        lease = nil
        upstream = nil
        inMulti = false
        watching = false
        leaseTainted = false
        if hadState && !isClosed {
            closeAfterFlush = true
            closeReason = "upstream_lost_during_transaction"
            disableReading()
            markDirty()
        }
    }

    private func refuse(head: CommandHead, kind: StatefulKind) -> Bool {
        if inFlight > 0 {
            stall = .barrier
            return false
        }
        replyError(CommandTable.refusal(command: head.name.description, kind: kind))
        proxy.stats.commandsRefused &+= 1
        return true
    }

    /// Sends a request on this client's connection as any multiplexed command (used by the KEYS guard).
    func forwardFrame(_ frame: UnsafeRawBufferPointer) -> Bool { forward(frame) }

    /// Sends a request to the leased connection (a client holding a lease always has it as `upstream`).
    func forwardToLease(_ frame: UnsafeRawBufferPointer) -> Bool {
        precondition(lease != nil, "forwardToLease without a lease (client \(id))")
        return forward(frame)
    }

    /// Sends one contiguous request to this client's upstream connection. Returns false when it must wait for the pool.
    private func forward(_ frame: UnsafeRawBufferPointer) -> Bool {
        var target = upstream
        if target == nil {
            switch proxy.pool.acquire(proto: proto, db: db) {
            case .ready(let u):
                upstream = u
                target = u
            case .wait:
                stall = .pool
                return false
            case .unavailable(let why):
                replyError("ERR upstream unavailable: \(why)")
                proxy.stats.commandsFailed &+= 1
                return true
            }
        }
        let silent = silenceCurrent
        target!._withUnsafeGuaranteedRef {
            $0.out.append(frame.baseAddress!, count: frame.count)
            $0.markDirty()
            if silent { $0.enqueueSilent(client: self) } else { $0.enqueue(client: self) }
        }
        inFlight += 1
        proxy.stats.commandsForwarded &+= 1
        return true
    }

    // MARK: replies

    /// One reply for this client has been handed over (or dropped because the client is gone). The caller has
    /// written or queued its bytes.
    @inline(__always)
    func replyDelivered() {
        inFlight -= 1
        if pipelineThrottled && inFlight <= proxy.config.maxPipeline / 2 {
            pipelineThrottled = false
            if stall == .none && !isClosed && !closeAfterFlush && !proxy.shuttingDown { enableReading() }
        }
        if inFlight == 0 {
            if inActivityList {
                // A reply is activity too (as redis counts it): a client that was blocked is idle from now on.
                lastActive = proxy.base.now()
                proxy.activity.touch(self)
            }
            if lease == nil {
                upstream = nil
            } else if !holdsState && !isClosed {
                endLease()
            }
            if isClosed {
                proxy.reap(self)
            } else if stall == .barrier {
                proxy.scheduleResume(self)
            } else if closeAfterFlush {
                markDirty()
            }
        }
    }

    /// Sends reply bytes: straight to the socket when nothing is queued before them (no copy into a chain, and no
    /// chain to allocate and free), else appended to `out` for the flush after this loop iteration.
    @inline(__always)
    func deliver(_ p: UnsafeRawPointer, count: Int) {
        if doomed { return }
        if out.isEmpty {
            let n = Socket.write(fd, p, count: count)
            if n == count {
                proxy.stats.bytesOut &+= n
                return
            }
            if n > 0 {
                proxy.stats.bytesOut &+= n
                out.append(p + n, count: count - n)
            } else {
                out.append(p, count: count)
            }
        } else {
            out.append(p, count: count)
        }
        markDirty()
        checkOutputLimit()
    }

    /// Redis's client-output-buffer-limit for a client that does not read its replies: past the hard limit, or past
    /// the soft limit for longer than its seconds, the client is closed (after this loop iteration) and its replies
    /// dropped, so respool's memory stays bounded while other clients carry on.
    func checkOutputLimit() {
        let n = out.count
        let config = proxy.config
        if n <= config.outputSoftLimit {
            softLimitSince = nil
            return
        }
        let now = proxy.base.now()
        if n > config.outputHardLimit || (softLimitSince.map { now - $0 >= config.outputSoftSeconds } ?? false) {
            doomed = true
            proxy.stats.outputLimitCloses &+= 1
            proxy.logger.warning("client closed", metadata: ["client.id": "\(id)", "reason": "output_limit", "pending_bytes": "\(n)"])
            proxy.scheduleClose(self, reason: "output_limit")
        } else if softLimitSince == nil {
            softLimitSince = now
        }
    }

    func reply(_ bytes: [UInt8]) {
        guard !isClosed && !silenceCurrent else { return }
        out.append(bytes)
        markDirty()
    }

    func replyError(_ message: String) {
        reply(RESPWriter.errorLine(message))
    }

    private func protocolError(_ e: RESPProtocolError) {
        proxy.stats.protocolErrors &+= 1
        proxy.logger.info("protocol error", metadata: ["client.id": "\(id)", "error": "\(e.message)"])
        if inFlight > 0 {
            // Answer what is in flight first, then the error; no more input is read.
            partial.removeAll()
            disableReading()
            closeAfterFlush = true
            closeReason = "protocol_error"
            pendingProtocolError = e.replyBytes
            return
        }
        reply(e.replyBytes)
        closeAfterFlush = true
        closeReason = "protocol_error"
        disableReading()
    }

    var pendingProtocolError: [UInt8]?

    override var canWrite: Bool { true }

    override func drained() {
        softLimitSince = nil
        if closeAfterFlush && inFlight == 0 {
            if let e = pendingProtocolError {
                pendingProtocolError = nil
                out.append(e)
                flush()
                return
            }
            close(reason: closeReason)
        }
    }

    override func writeFailed(_ error: SystemError) {
        close(reason: "write_error", detail: error.reason)
    }

    // MARK: lifecycle

    /// Closes the client. Replies still due from upstream are drained and dropped when they come.
    func close(reason: String, detail: String? = nil) {
        guard !isClosed else { return }
        isClosed = true
        closeSocket()
        partial.removeAll()
        out.removeAll()
        if stall == .pool { proxy.pool.removeWaiter(self) }
        stall = .none
        unsubscribeAll()
        proxy.activity.remove(self)
        if lease != nil {
            // A blocked or transactional lease is not returned with state on it: endLease closes its connection,
            // which also drops (and answers nobody for) this client's in-flight commands.
            endLease()
        }
        var meta: Logger.Metadata = ["client.id": "\(id)", "reason": "\(reason)"]
        if let detail { meta["detail"] = "\(detail)" }
        proxy.logger.debug("client closed", metadata: meta)
        proxy.clientClosed(self, reason: reason)
        if inFlight == 0 { proxy.reap(self) }
    }
}
