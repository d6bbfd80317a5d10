// ClientConnection+Output: replies on their way to the client (straight to the socket when nothing is queued),
// the output limits, and the client's end: closing after its replies, or at once with its leases and
// subscriptions given back.
import EventLoop
import Logging
import RESP
import RespoolCore

extension ClientConnection {
    /// One reply for this client has been handed over (or dropped because the client is gone). The caller has
    /// written or queued its bytes.
    @inline(__always)
    func replyDelivered() {
        let after = session.replied()
        if pipelineThrottled && session.inFlight <= proxy.config.maxPipeline / 2 {
            pipelineThrottled = false
            if session.stall == .none && !isClosed && !session.isClosing && !proxy.shuttingDown { enableReading() }
        }
        if session.inFlight == 0 { allReplied(after) }
    }

    /// Every reply due is in: the lease may go back, a waiting request goes on, a closing client closes.
    private func allReplied(_ after: ClientSession.AfterReply) {
        if inActivityList {
            // A reply is activity too (as redis counts it): a client that was blocked is idle from now on.
            lastActive = proxy.base.now()
            proxy.activity.touch(self)
        }
        if session.hasEffects { applyEffects() }
        if isClosed {
            proxy.reap(self)
            return
        }
        switch after {
        case .resume: proxy.scheduleResume(self)
        case .finishClosing: markDirty()
        case .nothing: break
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
                proxy.stats[.bytesToClients] &+= n
                return
            }
            if n > 0 {
                proxy.stats[.bytesToClients] &+= n
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
            softLimitSince = 0
            return
        }
        let now = proxy.base.now()
        if n > config.outputHardLimit || (softLimitSince > 0 && now - softLimitSince >= config.outputSoftSeconds) {
            doomed = true
            proxy.stats[.outputLimitCloses] &+= 1
            proxy.logger.warning("client closed", metadata: ["client.id": "\(id)", "reason": "output_limit", "pending_bytes": "\(n)"])
            proxy.scheduleClose(self, reason: "output_limit")
        } else if softLimitSince == 0 {
            softLimitSince = now
        }
    }

    /// A reply respool composed (in order: nothing of this client is in flight when it is made).
    func reply(_ bytes: [UInt8]) {
        guard !isClosed && !replySilenced else { return }
        out.append(bytes)
        markDirty()
    }

    /// A malformed request: what is in flight is answered first, then the error, then the client is closed; no more
    /// input is read.
    func protocolError(_ e: RESPProtocolError) {
        proxy.stats[.protocolErrors] &+= 1
        proxy.logger.info("protocol error", metadata: ["client.id": "\(id)", "error": "\(e.message)"])
        partial.removeAll()
        disableReading()
        if session.inFlight > 0 {
            session.closeAfterReplies("protocol_error", lastReply: e.replyBytes)
        } else {
            reply(e.replyBytes)
            session.closeAfterReplies("protocol_error")
        }
    }

    /// The leased connection is gone (its replies were answered with errors); a client that had transaction state
    /// on it is closed after those.
    func leaseLost() {
        session.leaseLost()
        if session.isClosing && !isClosed {
            disableReading()
            markDirty()
        }
    }

    /// All output was written: a closing client with nothing left in flight is closed (after its last reply).
    func outputDrained() {
        softLimitSince = 0
        guard case .closing(let reason, _) = session.lifecycle, session.inFlight == 0 else { return }
        if let last = session.takeLastReply() {
            out.append(last)
            flush()
            return
        }
        close(reason: reason)
    }

    /// Closes the client. Replies still due from upstream are drained and dropped when they come.
    func close(reason: String, detail: String? = nil) {
        guard !isClosed else { return }
        isClosed = true
        closeSocket()
        partial.removeAll()
        out.removeAll()
        scan = nil
        session.close(reason: reason)
        // A blocked or transactional lease is not returned with state on it: its connection is closed, which also
        // drops (and answers nobody for) this client's in-flight commands. Subscriptions end.
        applyEffects()
        proxy.pool.clientGone(id)
        proxy.activity.remove(self)
        var meta: Logger.Metadata = ["client.id": "\(id)", "reason": "\(reason)"]
        if let detail { meta["detail"] = "\(detail)" }
        proxy.logger.debug("client closed", metadata: meta)
        proxy.clientClosed(self, reason: reason)
        if session.inFlight == 0 { proxy.reap(self) }
    }
}
