// ClientConnection: one application client, carrying bytes. Frames its requests without decoding them; a
// multiplexable command from a client on the fast path is appended to the upstream connection its in-flight commands
// are on; every other request is decoded and decided by the client's ClientSession, whose decisions this class
// carries out (forward, answer, hold, get a connection first). A request that cannot go on yet is kept, with
// everything after it, and reading stops until it can.
import EventLoop
import Logging
import RESP
import RespoolCore

/// A KEYS-by-SCAN job, out of line (`ClientConnection.scan`).
final class ScanBox {
    var job: KeysScan
    init(_ job: KeysScan) { self.job = job }
}

final class ClientConnection: Connection {
    /// The client's id (its session's: one number, not two copies of it per client).
    var id: Int { session.id }
    let isUnix: Bool
    let createdAt: Double
    var lastActive: Double
    var framer: RequestFramer
    /// Bytes of a request that has not fully arrived, or, while stalled, the stalled request and everything after it.
    var partial = LazyByteChain()
    var session: ClientSession
    /// The stalled request: its head and its length within `partial`.
    var pendingHead = CommandHead()
    var pendingLength = 0
    /// Reading stopped because RESPOOL_MAX_PIPELINE commands are unanswered.
    var pipelineThrottled = false
    /// Over the output limit: closed after this iteration, nothing more is queued for it.
    var doomed = false
    /// Since when the output has been above the soft limit (0: it is not).
    var softLimitSince = 0.0
    /// When this client began waiting for the pool (0: it is not waiting).
    var waitStart = 0.0
    /// A KEYS being answered by SCAN steps (RESPOOL_KEYS=scan), boxed: most clients never have one.
    var scan: ScanBox?
    /// While a CLIENT LIST/KILL/INFO runs under CLIENT REPLY OFF/SKIP: its reply is dropped.
    var replySilenced = false
    /// Links of the janitor's activity list.
    var activityPrev: Unmanaged<ClientConnection>?
    var activityNext: Unmanaged<ClientConnection>?
    var inActivityList = false

    init(proxy: Proxy, fd: Int32, id: Int, isUnix: Bool) {
        self.isUnix = isUnix
        framer = RequestFramer(limits: proxy.limits)
        session = ClientSession(id: id, context: proxy.sessionContext)
        createdAt = proxy.base.now()
        lastActive = createdAt
        super.init(proxy: proxy, fd: fd)
    }

    deinit { partial.free() }

    override var canWrite: Bool { true }
    override func drained() { outputDrained() }
    override func writeFailed(_ error: SystemError) { close(reason: "write_error", detail: error.reason) }

    // MARK: input

    override func readable() {
        let scratch = proxy.scratch
        switch Socket.read(fd, into: scratch, capacity: proxy.scratchSize) {
        case .data(let n):
            proxy.stats[.clientBytesIn] &+= n
            lastActive = proxy.base.now()
            if inActivityList { proxy.activity.touch(self) }
            process(UnsafeRawBufferPointer(start: scratch, count: n))
            if session.inFlight >= proxy.config.maxPipeline && readEnabled {
                // Too many unanswered commands: stop reading until half of them are answered.
                pipelineThrottled = true
                proxy.stats[.pipelineThrottles] &+= 1
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
                Pool.connection(session.upstream!)._withUnsafeGuaranteedRef {
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
                if session.fastPath, !head.isInline, CommandTable.route(head.name) == .forward,
                   proxy.sessionContext.deny.isEmpty || proxy.sessionContext.deny.denied(name: head.name, arg1: head.arg1) == nil {
                    var pinned = session.upstream
                    if pinned == nil {
                        switch proxy.pool.acquire(client: id, proto: session.proto, db: session.db, user: session.user) {
                        case .use(let h):
                            session.pinned(h)
                            pinned = h
                        case .wait:
                            // Stall this request and everything after it until the pool has a connection.
                            flushRun()
                            session.waitFor(.shared(proto: session.proto, db: session.db, user: session.user))
                            stallInput(head: head, bytes: base + fs, count: n - fs, frameLength: prefix + end - fs)
                            return
                        case .fail(let why):
                            flushRun()
                            if prefix > 0 { partial.removeAll() }
                            reply(RESPWriter.errorLine(why))
                            proxy.stats[.commandsFailed] &+= 1
                            continue
                        case .open:
                            preconditionFailure("Pool.acquire answered .open")
                        }
                    }
                    let target = Pool.connection(pinned.unsafelyUnwrapped)
                    if prefix > 0 {
                        flushRun()
                        let frameBytes = base + fs
                        target._withUnsafeGuaranteedRef {
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
                    target._withUnsafeGuaranteedRef { $0.enqueue(client: self) }
                    session.forwardedFast()
                    session.lastCommand = head.name
                    proxy.stats[.commandsForwarded] &+= 1
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
                    stallInput(head: head, bytes: base + fs, count: n - fs, frameLength: prefix + end - fs)
                    return
                }
                if prefix > 0 { partial.removeAll() }
                if isClosed || session.isClosing { return }
            case .error(let e):
                flushRun()
                protocolError(e)
                return
            }
        }
        flushRun()
    }

    /// Keeps a request that cannot be handled yet (and everything after it) and stops reading until it can.
    private func stallInput(head: CommandHead, bytes: UnsafeRawPointer, count: Int, frameLength: Int) {
        partial.append(bytes, count: count)
        pendingHead = head
        pendingLength = frameLength
        if case .pool = session.stall, waitStart == 0 { waitStart = proxy.base.now() }
        disableReading()
    }

    /// Called (after the loop iteration) when the reason for a stall may be gone: the stalled request is decided
    /// again (or answered with the pool's failure), then the rest of the input.
    func resume() {
        var failure = proxy.waitFailures.removeValue(forKey: id)
        if session.stall == .verification, let f = failure {
            // The connection that was to check the client's credential could not be had: that is the AUTH's answer.
            session.authChecked(.refused(RESPWriter.errorLine(waitFailureMessage(f))))
            failure = nil
        }
        if case .pool = session.stall {} else { failure = nil }   // not (or no longer) waiting for the pool
        guard !isClosed, session.stall != .none || failure != nil else { return }
        let bytes = partial.copyBytes()
        partial.removeAll()
        bytes.withUnsafeBytes { all in
            let frame = UnsafeRawBufferPointer(rebasing: all[0..<pendingLength])
            if let failure {
                answerWaitFailure(failure, frame: frame)
            } else if !handleSlow(head: pendingHead, frame: frame) {
                partial.append(all.baseAddress!, count: all.count)
                return
            }
            if waitStart > 0 {
                proxy.waitDurations.record(proxy.base.now() - waitStart)
                waitStart = 0
            }
            if isClosed || session.isClosing { return }
            if all.count > pendingLength {
                process(UnsafeRawBufferPointer(rebasing: all[pendingLength...]))
            }
        }
        if session.stall == .none && !isClosed && !session.isClosing && !proxy.shuttingDown && !pipelineThrottled {
            enableReading()
        }
    }

    /// The pool will not give what the stalled request waits for (the wait timed out, or the server is unreachable).
    /// It may come while the client is still being told to wait (the pool's actions are carried out before the
    /// caller of `acquire` records the stall): kept, and answered at the resume if the client then waits.
    func waitFailed(_ failure: PoolState.Failure) {
        guard !isClosed else { return }
        proxy.waitFailures[id] = failure
        proxy.scheduleResume(self)
    }

    /// Answers the stalled request (`frame`) with the pool's failure (nothing of this client is in flight, so the
    /// order holds).
    private func answerWaitFailure(_ failure: PoolState.Failure, frame: UnsafeRawBufferPointer) {
        guard case .pool(let need) = session.stall else { return }
        let message = waitFailureMessage(failure)
        var name = pendingHead.name
        if pendingHead.isInline, let first = (try? InlineCommand.split(frame))?.first { name = SmallBytes(lowercasing: first) }
        let bytes = session.couldNotAcquire(need, message: message, command: name)
        if !bytes.isEmpty { reply(bytes) }
    }

    /// The error text a failed wait answers with (counted and, for a timeout, logged).
    private func waitFailureMessage(_ failure: PoolState.Failure) -> String {
        switch failure {
        case .timedOut(let cap):
            let t = proxy.config.waitTimeout
            proxy.stats[.waitTimeouts] &+= 1
            proxy.logger.info("wait timeout", metadata: ["client.id": "\(id)", "cap": "\(cap)", "leased": "\(proxy.pool.leasedCount)"])
            return "ERR respool: no upstream connection free within \(t == t.rounded() ? String(Int(t)) : String(t))s (cap \(cap) reached)"
        case .unavailable(let text):
            proxy.stats[.commandsFailed] &+= 1
            return text
        }
    }

    /// Handles a request off the fast path (contiguous bytes). Returns false when it must wait (`session.stall`
    /// says for what).
    private func handleSlow(head: CommandHead, frame: UnsafeRawBufferPointer) -> Bool {
        if head.isInline {
            let args: [[UInt8]]
            do {
                args = try InlineCommand.split(frame)
            } catch {
                protocolError(error)
                return true
            }
            if args.isEmpty { return true }
            let encoded = RESPWriter.command(args)
            return encoded.withUnsafeBytes { run(Request(args: args), frame: $0) }
        }
        return run(Request(route: CommandTable.route(head.name), name: head.name, args: RESPDecoder.arguments(ofRequest: frame)), frame: frame)
    }
}
