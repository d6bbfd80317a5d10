// Pool: carries out what PoolState decides. It opens sockets (resolving the name once, and again after a failure),
// closes and PINGs connections, hands leases and the subscriber connections to their holders, wakes or fails waiting
// clients, runs the back-off and wait timers, and tells PoolState what happened. Counting and choosing is PoolState's.
import EventLoop
import Glibc
import Logging
import RESP
import RespoolCore

final class Pool: EventHandler {
    /// The pool's timers: the back-off retry (keepWarm), the earliest wait deadline, the progress check.
    enum Event: Int { case retry, waitDeadline, progress }

    unowned let proxy: Proxy
    /// The loop (for `now` on the data path: reaching it through the unowned `proxy` costs a retain and release).
    let base: EventBase
    var state: PoolState
    /// Owns the connections (in opening order).
    private(set) var upstreams: [UpstreamConnection] = []
    private var nextId = 1
    private var retryTimer: Timer?
    private var waitTimer: Timer?
    private var progressTimer: Timer?
    private var pinLoggedAt: [String: Double] = [:]
    private var pinsSinceLog: [String: Int] = [:]
    private var resolved: SocketAddress?

    /// Output a connection may have unwritten before new clients go elsewhere (fill-first, see PoolState.packLimit).
    static let packBytes = 256 << 10
    /// A connection that answers nothing for this long while requests wait on it is stuck (a script, a slow command
    /// or a stalled network holds it): its oldest request is then between one and two intervals old. Why this value:
    /// docs/ARCHITECTURE.md, "Measured facts".
    static let progressInterval = 0.25

    init(proxy: Proxy) {
        self.proxy = proxy
        base = proxy.base
        state = PoolState(settings: PoolSettings(config: proxy.config)) { h in
            Unmanaged<UpstreamConnection>.fromOpaque(h.raw)._withUnsafeGuaranteedRef {
                ConnLoad(pending: $0.fifo.count, busy: $0.streamed > 0 || $0.out.count >= Pool.packBytes, stuck: $0.stuck)
            }
        }
        super.init()
        retryTimer = try? Timer(base: proxy.base, handler: self, tag: Event.retry)
        waitTimer = try? Timer(base: proxy.base, handler: self, tag: Event.waitDeadline)
        progressTimer = try? Timer(base: proxy.base, handler: self, tag: Event.progress)
        progressTimer?.schedule(after: Self.progressInterval)
    }

    @inline(__always)
    static func connection(_ h: ConnHandle) -> Unmanaged<UpstreamConnection> { Unmanaged.fromOpaque(h.raw) }

    var cap: Int { state.cap }
    var count: Int { upstreams.count }
    var leasedCount: Int { state.leasedCount }
    var waiterCount: Int { state.waiters.count }
    var lastError: String? { state.lastError }
    var poolName: String { "\(proxy.config.namePrefix):pool" }

    // MARK: asking

    /// A shared connection for a client with nothing in flight (fill-first); `.wait` queued the client.
    @inline(__always)
    func acquire(client: Int, proto: Int, db: Int, user: Int = 0) -> PoolState.Answer {
        let a = state.acquire(client: client, proto: proto, db: db, user: user, now: base.now())
        return settle(a)
    }

    /// An exclusive connection for `client`; `.wait` queued it.
    func lease(client: ClientConnection) -> PoolState.Answer {
        let a = settle(state.lease(client: client.id, proto: client.session.proto, db: client.session.db, user: client.session.user,
                                   now: proxy.base.now()))
        if case .use(let h) = a { roleChanged(Self.connection(h).takeUnretainedValue()) }
        return a
    }

    /// The subscriber connection of `proto` for `client`'s SUBSCRIBE; given to the hub when there is one.
    func subscriber(client: Int, proto: Int, user: Int) -> PoolState.Answer {
        let a = settle(state.subscriber(client: client, proto: proto, user: user, now: proxy.base.now()))
        if case .use(let h) = a { roleChanged(Self.connection(h).takeUnretainedValue()) }
        return a
    }

    /// Asks the server whether a client's credential is good, on a control connection of that credential's own pool
    /// (opened with it, its handshake sending the client's AUTH first; with the control slot taken by another user's,
    /// that one is closed once idle; with a cap below 3, an idle connection of the pool). The answer comes to
    /// `client.credentialChecked`, or, if the client has to wait for the connection, the pool grants or fails its
    /// wait. Returns the error to answer with at once, nil otherwise.
    func verify(_ client: ClientConnection, user: [UInt8]?, password: [UInt8]) -> String? {
        let id = proxy.credentials.candidate(user: user, password: password)
        switch settle(state.control(client: client.id, user: id, now: base.now())) {
        case .use(let h):
            let u = Self.connection(h).takeUnretainedValue()
            guard !u.isClosed else { return state.unavailableError }
            u.sendVerification(for: client, credential: id)
            return nil
        case .wait, .open:
            return nil
        case .fail(let why):
            return why
        }
    }

    /// The control connection for `client`'s SCRIPT KILL, FUNCTION KILL or SHUTDOWN.
    func control(client: Int, user: Int) -> PoolState.Answer {
        settle(state.control(client: client, user: user, now: base.now()))
    }

    /// A connection for respool's own PING or INFO: a ready shared one that is answering; when every ready shared
    /// one is stuck (a script holds the server), the control connection, opened if need be. Nil when no shared
    /// connection is ready (the server is unreachable or not connected yet).
    func forRespool() -> UpstreamConnection? {
        var anyReady = false
        for c in state.connections where c.role == .shared && c.phase == .ready && !c.retiring {
            anyReady = true
            if !Self.connection(c.handle)._withUnsafeGuaranteedRef({ $0.stuck }) { return Self.connection(c.handle).takeUnretainedValue() }
        }
        guard anyReady, case .use(let h) = settle(state.controlForRespool(now: base.now())) else { return nil }
        return Self.connection(h).takeUnretainedValue()
    }

    /// A client waits for `need` (HELLO before any handshake).
    func wait(client: Int, for need: Need) {
        state.wait(client: client, for: need, now: proxy.base.now())
        applyActions()
    }

    /// Opens what an answer asks for and carries out the actions it queued; never returns `.open`.
    @inline(__always)
    private func settle(_ a: PoolState.Answer) -> PoolState.Answer {
        if case .use = a, !state.hasActions { return a }
        var answer = a
        if case .open(let o) = a {
            answer = open(o).map { .use($0.handle) } ?? .fail(state.unavailableError)
        }
        // A client that now waits needs the wait timer set for its deadline.
        applyActions()
        return answer
    }

    func endLease(_ h: ConnHandle, _ end: ClientSession.LeaseEnd) {
        let u = Self.connection(h).takeUnretainedValue()
        if end == .reset && !u.isClosed {
            u.sendReset(name: poolName, db: proxy.config.upstream.db)   // with its own user's credential
            proxy.stats[.leasesReset] &+= 1
        }
        state.endLease(h, end, now: proxy.base.now())
        roleChanged(u)
        if !u.leased && !u.isClosed && end == .clean { u.rename(poolName) }
        applyActions()
    }

    /// A client pinned its lease (MONITOR, CLIENT TRACKING): counted, and logged at most once a minute per command
    /// with how many pins there were since, so an operator sees which code holds connections.
    func pinned(_ h: ConnHandle, by client: ClientConnection, command: String) {
        let u = Self.connection(h).takeUnretainedValue()
        if command == "MONITOR" { u.monitoring = true }
        proxy.stats[command == "MONITOR" ? .pinsMonitor : .pinsTracking] &+= 1
        let now = base.now()
        pinsSinceLog[command, default: 0] += 1
        guard now - (pinLoggedAt[command] ?? -1_000_000) >= 60 else { return }
        var meta: Logger.Metadata = ["client.id": "\(client.id)", "client.addr": "\(client.peerAddress)", "command": "\(command)",
                                     "upstream.id": "\(u.id)", "pins_since_last_line": "\(pinsSinceLog[command] ?? 1)",
                                     "pinned_now": "\(pinnedCount)"]
        if let name = client.session.name { meta["client.name"] = "\(String(decoding: name, as: UTF8.self))" }
        proxy.logger.notice("client pinned an upstream connection (it holds one of the cap until it ends this state)", metadata: meta)
        pinLoggedAt[command] = now
        pinsSinceLog[command] = 0
    }

    /// Leases held by pinned clients (MONITOR, tracking).
    var pinnedCount: Int { upstreams.reduce(0) { $0 + (($1.leasedTo?._withUnsafeGuaranteedRef { $0.session.isPinned } ?? false) ? 1 : 0) } }

    func clientGone(_ id: Int) {
        state.clientGone(id, now: proxy.base.now())
        applyActions()
    }

    /// The driver sent HELLO or SELECT on a leased connection itself.
    func switched(_ u: UpstreamConnection) {
        state.switched(u.handle, proto: u.proto, db: u.db)
    }

    // MARK: carrying out

    func applyActions() {
        while let a = state.next() {
            switch a {
            case .open(let o):
                _ = open(o)
            case .close(let h, let reason):
                let u = Self.connection(h).takeUnretainedValue()
                if reason == "lifetime" { proxy.stats[.upstreamRecycled] &+= 1 }
                u.close(reason: reason)
            case .ping(let h, let beforeReuse):
                if beforeReuse { proxy.stats[.upstreamChecks] &+= 1 }
                Self.connection(h)._withUnsafeGuaranteedRef { $0.send(beforeReuse ? .check : .keepalive, ["PING"]) }
            case .retarget(let h, let proto, let db):
                Self.connection(h)._withUnsafeGuaranteedRef { $0.retarget(proto: proto, db: db) }
            case .grant(let client, let need):
                if case .lease = need, let h = state.lease(of: client) { roleChanged(Self.connection(h).takeUnretainedValue()) }
                if let c = proxy.clients[client] { proxy.scheduleResume(c) }
            case .failWaiter(let client, let failure):
                if let c = proxy.clients[client] { c.waitFailed(failure) }
            case .leaseLost(let client):
                proxy.clients[client]?.leaseLost()
            case .subscriberLost(let proto, let user):
                proxy.hub(proto: proto, user: user).connectionLost()
            case .requestCommandTable(let h):
                Self.connection(h)._withUnsafeGuaranteedRef { $0.send(.commandTable, ["COMMAND"]) }
            case .retry(let after):
                retryTimer?.schedule(after: max(0.01, after))
            }
        }
        if let deadline = state.nextWaitDeadline {
            waitTimer?.schedule(after: max(0.001, deadline - proxy.base.now()))
        }
    }

    /// Mirrors a connection's role on the object (the data path reads `leased`; the hub its connection).
    private func roleChanged(_ u: UpstreamConnection) {
        switch state.connection(u.handle)?.role {
        case .leased(let client)?:
            u.leased = true
            u.leasedTo = proxy.clients[client].map { Unmanaged.passUnretained($0) }
        case .subscriber(let proto)?:
            u.leased = true
            u.leasedTo = nil
            proxy.hub(proto: proto, user: u.user).attach(u)
        default:
            u.leased = false
            u.leasedTo = nil
        }
    }

    /// Opens a connection (within the cap: PoolState counted it). Its handshake is queued at once; clients may queue
    /// behind it.
    private func open(_ o: PoolState.Opening) -> UpstreamConnection? {
        let now = proxy.base.now()
        state.jitter = Double.random(in: 0...1)
        // The name is resolved (getaddrinfo, blocking) only for the first connection and again after a failure, so
        // a moved server is found while the steady state never blocks the loop on DNS.
        let address: SocketAddress
        if let cached = resolved {
            address = cached
        } else {
            do {
                address = try SocketAddress.resolve(host: proxy.config.upstream.host, port: proxy.config.upstream.port)
                resolved = address
            } catch {
                openFailed(o, error.reason)
                return nil
            }
        }
        let fd: Int32
        var connectedNow = false
        do {
            switch try Socket.startConnect(address) {
            case .connected(let f): fd = f; connectedNow = true
            case .inProgress(let f): fd = f
            }
        } catch {
            openFailed(o, error.reason)
            return nil
        }
        let u = UpstreamConnection(proxy: proxy, fd: fd, id: nextId, proto: o.proto, db: o.db)
        u.user = o.user
        nextId += 1
        do {
            try u.setUpEvents(read: false)
            let t = try Timer(base: proxy.base, handler: u, tag: Connection.Event.timer)
            t.schedule(after: proxy.config.connectTimeout)
            u.connectTimer = t
        } catch {
            u.closeSocket()
            openFailed(o, error.reason)
            return nil
        }
        u.queueHandshake(name: o.role == .control ? "\(proxy.config.namePrefix):control" : poolName)
        upstreams.append(u)
        state.opened(u.handle, o, now: now)
        roleChanged(u)
        proxy.stats[.upstreamConnects] &+= 1
        proxy.logger.debug("upstream connecting", metadata: ["upstream.id": "\(u.id)", "proto": "\(o.proto)", "upstream": "\(proxy.config.upstream)"])
        if connectedNow {
            u.connected()
        } else {
            u.armWrite()
        }
        return u
    }

    private func openFailed(_ o: PoolState.Opening, _ reason: String) {
        resolved = nil
        proxy.stats[.upstreamConnectFailures] &+= 1
        state.openFailed(o, reason: reason, now: proxy.base.now())
        proxy.logger.warning("upstream connect failed", metadata: ["reason": "\(reason)", "retry_in": "\(retryIn)"])
    }

    private var retryIn: String { "\(Double(Int(max(0, state.retryAt - proxy.base.now()) * 1000)) / 1000)s" }

    // MARK: what happened

    func connected(_ u: UpstreamConnection) {
        if state.failures > 0 || state.lastError != nil {
            proxy.logger.notice("upstream reachable again", metadata: ["upstream.id": "\(u.id)", "after_failures": "\(state.failures)"])
        }
        state.connected(u.handle, now: proxy.base.now())
        u.hub?.upstreamReady()
        proxy.logger.debug("upstream ready", metadata: ["upstream.id": "\(u.id)", "proto": "\(u.proto)"])
        applyActions()
    }

    @inline(__always)
    func becameIdle(_ u: UpstreamConnection) {
        state.becameIdle(u.handle, now: base.now())
        if state.hasActions { applyActions() }
    }

    func checked(_ u: UpstreamConnection) {
        state.checked(u.handle, now: proxy.base.now())
        applyActions()
    }

    func failed(_ u: UpstreamConnection, reason: String, whileConnecting: Bool, failedCommands: Int) {
        forget(u)
        if u.user != 0, let refusal = u.handshakeError {
            // The server refused a client's credential (changed since it was checked): not the server's health, so
            // nothing backs off; that user's waiting clients get the server's error.
            proxy.credentials.refused(u.user)
            proxy.stats[.upstreamConnectFailures] &+= 1
            proxy.logger.warning("upstream refused a client's credential", metadata: [
                "upstream.id": "\(u.id)", "user": "\(proxy.credentials.userName(u.user))", "reason": "\(refusal)"])
            state.failed(u.handle, reason: reason, whileConnecting: false, now: proxy.base.now())
            state.userRefused(u.user, error: refusal)
            applyActions()
            return
        }
        var meta: Logger.Metadata = ["upstream.id": "\(u.id)", "reason": "\(reason)", "failed_commands": "\(failedCommands)"]
        if whileConnecting {
            resolved = nil
            proxy.stats[.upstreamConnectFailures] &+= 1
        } else {
            proxy.stats[.upstreamLost] &+= 1
        }
        state.jitter = Double.random(in: 0...1)
        state.failed(u.handle, reason: reason, whileConnecting: whileConnecting, now: proxy.base.now())
        if whileConnecting {
            meta["retry_in"] = "\(retryIn)"
            // A refused handshake names the credential's user (never its password).
            if u.handshakeError != nil { meta["user"] = "\(proxy.credentials.userName(u.user))" }
            proxy.logger.warning("upstream connect failed", metadata: meta)
        } else {
            proxy.logger.warning("upstream connection lost", metadata: meta)
        }
        applyActions()
    }

    func closed(_ u: UpstreamConnection, reason: String) {
        forget(u)
        state.closed(u.handle, now: proxy.base.now())
        proxy.logger.debug("upstream closed", metadata: ["upstream.id": "\(u.id)", "reason": "\(reason)"])
        applyActions()
    }

    private func forget(_ u: UpstreamConnection) {
        // Parked first: the array may hold the last strong reference while `u` is borrowed by a callback.
        proxy.graveyard.append(u)
        if let hub = u.hub {
            u.hub = nil
            hub.detach()
        }
        if let i = upstreams.firstIndex(where: { $0 === u }) { upstreams.remove(at: i) }
    }

    // MARK: upkeep

    /// Once a tick (from the janitor): command timeouts (a reply that does not come in time: the connection's reply
    /// stream can no longer be trusted, so it is closed and everything in flight on it answered), then PoolState's
    /// idle, lifetime, keepalive and minimum rules.
    func maintain(now: Double) {
        guard !state.closing else { return }
        let timeout = proxy.config.commandTimeout
        if timeout > 0 {
            for u in upstreams where !u.leased && u.state == .ready && u.pending > 0 && now - u.headSince >= timeout {
                proxy.stats[.commandTimeouts] &+= 1
                u.fail(reason: "command timed out after \(timeout == timeout.rounded() ? String(Int(timeout)) : String(timeout))s")
            }
        }
        state.tick(now: now)
        applyActions()
    }

    /// A shared (or control) connection that answered nothing since the last check while requests waited on it at
    /// both checks is stuck: new clients go elsewhere until it answers again (PoolState.choose). Leases are not
    /// judged: a blocking command waits by design.
    private func checkProgress() {
        for u in upstreams where u.state == .ready && !u.leased {
            let served = u.commandsServed
            let stuck = u.pending > 0 && u.pendingAtLastCheck && served == u.servedAtLastCheck
            if stuck && !u.stuck {
                proxy.stats[.upstreamStuck] &+= 1
                proxy.logger.notice("upstream connection stuck: no reply while requests wait; new clients go elsewhere", metadata: [
                    "upstream.id": "\(u.id)", "pending": "\(u.pending)", "for_at_least": "\(Self.progressInterval)s"])
            } else if !stuck && u.stuck {
                proxy.logger.notice("upstream connection answers again", metadata: ["upstream.id": "\(u.id)"])
            }
            u.stuck = stuck
            u.servedAtLastCheck = served
            u.pendingAtLastCheck = u.pending > 0
        }
    }

    /// Keeps one connection open (start-up, and the retry timer).
    func keepWarm() {
        state.keepWarm(now: proxy.base.now())
        applyActions()
    }

    override func handleEvent(_ what: Int16, tag: Int) {
        switch Event(rawValue: tag) {
        case .waitDeadline?:
            state.expireWaiters(now: proxy.base.now())
            applyActions()
        case .progress?:
            checkProgress()
            if !state.closing { progressTimer?.schedule(after: Self.progressInterval) }
        case .retry?, nil:
            keepWarm()
        }
    }

    /// Clients holding a lease (at most the cap).
    func leaseHolders() -> [ClientConnection] {
        upstreams.compactMap { $0.leasedTo?.takeUnretainedValue() }
    }

    var totalPending: Int { upstreams.reduce(0) { $0 + $1.pending } }
    /// Replies due on shared connections (leased ones may be blocked for as long as their command says).
    var sharedPending: Int { upstreams.reduce(0) { $0 + ($1.leased ? 0 : $1.pending) } }

    /// Shutdown: waiters fail, nothing new is opened.
    func beginShutdown() {
        state.beginShutdown()
        applyActions()
    }

    /// Closes every connection (the end of shutdown).
    func closeAll() {
        retryTimer?.free()
        retryTimer = nil
        waitTimer?.free()
        waitTimer = nil
        for u in upstreams {
            if u.pending > 0 { u.fail(reason: "respool shutting down") } else { u.close(reason: "shutdown") }
        }
    }
}
