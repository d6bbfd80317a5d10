// ClientConnection+Decisions: carrying out what the client's ClientSession decides for a request (send it, answer it,
// hold it, get a connection first), its side effects (leases given back, renamed or switched; subscriptions ended),
// and the pub/sub and KEYS-scan events that come back to the client.
import EventLoop
import Logging
import RESP
import RespoolCore

extension ClientConnection {
    /// Decides `r` and carries the decision out; `frame` is the request as it goes upstream. Returns false when it
    /// must wait (`session.stall` says for what; the pool has queued the client if it waits for a connection).
    func run(_ r: Request, frame: UnsafeRawBufferPointer) -> Bool {
        while true {
            let d = session.decide(r, context: proxy.sessionContext)
            if session.hasEffects { applyEffects() }
            switch d {
            case .forward(let silent):
                if r.route == .admin, CommandTable.changesCredentials(r.args) { proxy.credentials.forgetVerdicts() }
                if r.route == .local(.client), let translated = translatedClientCommand(r) {
                    translated.withUnsafeBytes { send($0, silent: silent) }
                } else if let kind = rewrite(r, silent: silent) {
                    Pool.connection(session.upstream!)._withUnsafeGuaranteedRef {
                        $0.out.append(frame.baseAddress!, count: frame.count)
                        $0.markDirty()
                        $0.enqueueCounted(client: self, kind)
                    }
                } else {
                    send(frame, silent: silent)
                }
                proxy.stats[.commandsForwarded] &+= 1
                if r.route == .keys { keysSeen(forwarded: true) }
                return true
            case .acquire(let need):
                switch obtain(need, for: r) {
                case true?: continue
                case false?: return true
                case nil:
                    return false
                }
            case .wait:
                return false
            case .reply(let bytes, let kind):
                switch kind {
                case .local: proxy.stats[.commandsLocal] &+= 1
                case .refused: proxy.stats[.commandsRefused] &+= 1
                case .keysDenied:
                    keysSeen(forwarded: false)
                    proxy.stats[.keysDenied] &+= 1
                case .error: break
                }
                if !bytes.isEmpty { reply(bytes) }
                if session.isClosing { disableReading() }
                return true
            case .subscribe(let space, let added, let confirmation):
                proxy.stats[.pubsubSubscribes] &+= r.args.count - 1
                if proxy.hub(proto: session.proto, user: session.user).subscribe(self, space: space, names: added, reply: confirmation) {
                    if !confirmation.isEmpty { reply(confirmation) }
                } else {
                    session.subscriptionPending()
                }
                return true
            case .unsubscribe(let space, let removed, let bytes):
                if !removed.isEmpty, !proxy.hub(proto: session.proto, user: session.user).unsubscribe(self, space: space, names: removed, reply: bytes) {
                    session.subscriptionPending()   // the reply goes out once the server has unsubscribed
                    return true
                }
                if !bytes.isEmpty { reply(bytes) }
                return true
            case .scan(let pattern, let silent):
                keysSeen(forwarded: false)
                var job = KeysScan(pattern: pattern, silent: silent)
                let first = job.command(cursor: Array("0".utf8))
                scan = ScanBox(job)
                Pool.connection(session.upstream!)._withUnsafeGuaranteedRef { $0.sendScan(first, for: self) }
                return true
            case .clientCommand(let silent):
                proxy.stats[.commandsLocal] &+= 1
                clientCommand(r.args, silent: silent)
                return true
            case .verify(let user, let password):
                if let known = proxy.credentials.known(user: user, password: password, now: proxy.base.now()) {
                    session.authChecked(.verified(user: known))
                    continue
                }
                if let refusal = proxy.pool.verify(self, user: user, password: password) {
                    session.authChecked(.refused(RESPWriter.errorLine(refusal)))
                    continue
                }
                return false
            }
        }
    }

    /// How the reply of a forwarded request is to be changed (slow-path routes only): pub/sub counts corrected to
    /// respool's clients, CONFIG GET's secrets masked (RESPOOL_MASK_SECRETS).
    private func rewrite(_ r: Request, silent: Bool) -> ReplyRewrite? {
        guard !silent else { return nil }
        if r.route == .pubsubCount, proxy.hasSubscriberConnections, let kind = PubSubCount(r.args) { return .counts(kind) }
        if r.route == .admin, proxy.config.maskSecrets, SecretMask.applies(r.args) { return .secrets }
        return nil
    }

    /// CLIENT UNBLOCK and CLIENT TRACKING ... REDIRECT name respool's client ids; the server knows its own. Returns the
    /// command with the id translated (nil: send it as it is): UNBLOCK's target becomes the server id of the lease the
    /// client is blocked on (0, which no connection has, when it is not blocked: the server answers 0, as it does for
    /// a client that is not blocked); REDIRECT to the client itself becomes its pinned connection's id, to another
    /// client the RESP2 subscriber connection's (whose messages on __redis__:invalidate reach the clients subscribed
    /// to it), and to an unknown id 0 (the server's own error follows).
    func translatedClientCommand(_ r: Request) -> [UInt8]? {
        guard r.args.count > 2 else { return nil }
        var args = r.args
        switch SmallBytes(lowercasing: r.args[1]) {
        case SmallBytes("unblock"):
            guard let target = Int(String(decoding: args[2], as: UTF8.self)) else { return nil }
            var serverID: Int64 = 0
            if let x = proxy.clients[target], !x.isClosed, x.session.isBlocked, let lease = x.session.lease {
                serverID = Pool.connection(lease)._withUnsafeGuaranteedRef { $0.serverID }
            }
            args[2] = Array(String(serverID).utf8)
        case SmallBytes("tracking"):
            guard let k = args.firstIndex(where: { SmallBytes(lowercasing: $0) == SmallBytes("redirect") }), k + 1 < args.count,
                  let target = Int(String(decoding: args[k + 1], as: UTF8.self)) else { return nil }
            var serverID: Int64 = 0
            let hub = proxy.hub(proto: 2, user: session.user)
            if target == id, let lease = session.lease {
                serverID = Pool.connection(lease)._withUnsafeGuaranteedRef { $0.serverID }
            } else if let x = proxy.clients[target], !x.isClosed, let s = hub.redirectTarget(for: id) {
                serverID = s
            }
            if serverID == 0 { hub.releaseIfUnused() }
            args[k + 1] = Array(String(serverID).utf8)
        default:
            return nil
        }
        return RESPWriter.command(args)
    }

    /// Gets what a request needs from the pool: true when it has it (decide again), false when it cannot be had
    /// (the request is answered with the error), nil when the client waits.
    private func obtain(_ need: Need, for r: Request) -> Bool? {
        let answer: PoolState.Answer
        switch need {
        case .shared(let proto, let db, let user):
            answer = proxy.pool.acquire(client: id, proto: proto, db: db, user: user)
            if case .use(let h) = answer { session.pinned(h) }
        case .lease:
            answer = proxy.pool.lease(client: self)
            if case .use(let h) = answer {
                session.leased(h)
                proxy.stats[.leasesGranted] &+= 1
                applyEffects()
            }
        case .subscriber(let proto, let user):
            answer = proxy.pool.subscriber(client: id, proto: proto, user: user)
            if case .use = answer, r.name == SmallBytes("client"),
               !proxy.sessionContext.subscriberConnected.contains(SessionContext.hubKey(proto: proto, user: user)) {
                // CLIENT TRACKING REDIRECT needs the connection's server id: wait for its handshake.
                proxy.hub(proto: proto, user: user).waitForReady(self)
                return nil
            }
        case .handshake:
            proxy.pool.wait(client: id, for: .handshake)
            return nil
        case .control(let user):
            answer = proxy.pool.control(client: id, user: user)
            if case .use(let h) = answer { session.pinned(h) }
        }
        switch answer {
        case .use: return true
        case .wait: return nil
        case .fail(let why):
            let bytes = session.couldNotAcquire(need, message: why, command: r.name)
            if !bytes.isEmpty { reply(bytes) }
            proxy.stats[.commandsFailed] &+= 1
            return false
        case .open: preconditionFailure("the pool answered .open")
        }
    }

    /// Sends one contiguous request to the client's upstream connection (`session.upstream`).
    private func send(_ frame: UnsafeRawBufferPointer, silent: Bool) {
        Pool.connection(session.upstream!)._withUnsafeGuaranteedRef {
            $0.out.append(frame.baseAddress!, count: frame.count)
            $0.markDirty()
            if silent { $0.enqueueSilent(client: self) } else { $0.enqueue(client: self) }
        }
    }

    /// Carries out the session's side effects.
    func applyEffects() {
        while let e = session.nextEffect() {
            switch e {
            case .endLease(let h, let end):
                proxy.pool.endLease(h, end)
            case .pinned(let h, let command):
                proxy.pool.pinned(h, by: self, command: command)
            case .trackingEnded:
                proxy.hub(proto: 2, user: session.user).unhold(id)
            case .retargetLease(let h, let proto):
                let u = Pool.connection(h).takeUnretainedValue()
                u.retarget(proto: proto, db: u.db)
                proxy.pool.switched(u)
            case .nameLease(let h):
                // While leased to a client that has a name, the connection carries it: `<prefix>:<client name>`, so
                // the server's CLIENT LIST shows which part of which app holds it.
                let prefix = proxy.config.namePrefix
                let name = session.name.map { "\(prefix):\(String(decoding: $0, as: UTF8.self))" } ?? proxy.pool.poolName
                Pool.connection(h)._withUnsafeGuaranteedRef { $0.rename(name) }
            case .unsubscribeAll(let proto, let names):
                proxy.hub(proto: proto, user: session.user).forget(self, names: names)
            }
        }
    }

    /// RESPOOL_KEYS=warn|deny|scan: one more KEYS seen (warn logs a rate-limited line).
    private func keysSeen(forwarded: Bool) {
        let mode = proxy.config.keysMode
        guard mode != .allow else { return }
        proxy.stats[.keysSeen] &+= 1
        if mode == .warn && forwarded { proxy.warnAboutKeys(client: self) }
    }

    // MARK: pub/sub

    /// The hub admitted this client's pending subscriptions: its confirmations go out now (none under CLIENT REPLY
    /// OFF/SKIP).
    /// The server's answer to the client's credential (Pool.verify): the stalled AUTH or HELLO is decided again.
    func credentialChecked(_ outcome: ClientSession.AuthOutcome) {
        session.authChecked(outcome)
        proxy.scheduleResume(self)
    }

    func subscriptionAdmitted(_ reply: [UInt8]) {
        if isClosed { return }
        if !reply.isEmpty {
            out.append(reply)
            markDirty()
        }
        if session.subscriptionConfirmed() { proxy.scheduleResume(self) }
    }

    /// The server refused this client's SUBSCRIBE: its error is the reply, in that request's place.
    func subscriptionRefused(space: PubSubSpace, added: [[UInt8]], error: [UInt8]) {
        if isClosed { return }
        out.append(error)
        markDirty()
        if session.subscriptionRefused(space: space, added: added) { proxy.scheduleResume(self) }
    }

    // MARK: KEYS by SCAN

    /// One SCAN reply: go on with the cursor, or answer the KEYS when it is back at 0.
    func scanStep(_ bytes: [UInt8], on u: UpstreamConnection) {
        guard let box = scan, !isClosed else {
            scanEnded()
            replyDelivered()
            return
        }
        switch box.job.step(bytes, proto: session.proto) {
        case .next(let cursor):
            u.sendScan(box.job.command(cursor: cursor), for: self)
        case .done(let reply):
            scanEnded()
            let job = box.job
            if !job.silent {
                out.append(reply)
                markDirty()
            }
            if reply.first == UInt8(ascii: "*") {
                proxy.stats[.keysScanned] &+= 1
                proxy.logger.debug("KEYS answered by SCAN", metadata: ["client.id": "\(id)", "keys": "\(job.keys.count)", "scan_steps": "\(job.steps)"])
            }
            replyDelivered()
        }
    }

    /// The scan is over (answered, or cut off by its connection's failure).
    func scanEnded() {
        scan = nil
        session.scanFinished()
    }
}

extension Proxy {
    /// One warning line per minute at most, with how many KEYS were seen since the last one.
    func warnAboutKeys(client: ClientConnection) {
        keysSinceWarning += 1
        let now = base.now()
        guard now - keysWarnedAt >= 60 else { return }
        var meta: Logger.Metadata = ["client.id": "\(client.id)", "count": "\(keysSinceWarning)"]
        if let name = client.session.name { meta["client.name"] = "\(String(decoding: name, as: UTF8.self))" }
        logger.warning("KEYS used: it blocks redis for every key it holds; use SCAN (or set RESPOOL_KEYS=scan)", metadata: meta)
        keysWarnedAt = now
        keysSinceWarning = 0
    }
}
