// PoolState+Events: what the driver reports (opened, connected, idle, checked, failed, closed), the waiters served in
// arrival order or failed, and the upkeep (keepWarm, tick, shutdown).

extension PoolState {
    // MARK: what happened to connections

    /// The driver opened what `o` asked for: its socket exists and its handshake is queued.
    public mutating func opened(_ h: ConnHandle, _ o: Opening, now: Double) {
        guard let k = openings.firstIndex(of: o) else { preconditionFailure("opened \(o) without an open action") }
        openings.remove(at: k)
        var role = o.role
        if o.forWaiter {
            // Opened for a waiter that has left meanwhile (closed): nobody holds it, it joins the shared set.
            switch role {
            case .leased(let client) where !waiters.contains(client): role = .shared
            case .subscriber(let proto) where !waiters.ordered.contains(where: { $0.value.need == .subscriber(proto: proto, user: o.user) }): role = .shared
            default: break
            }
        }
        connections.append(Connection(id: nextID, handle: h, phase: .connecting, role: role, proto: o.proto, db: o.db,
                                      user: o.user, createdAt: now, idleSince: now))
        nextID += 1
        serveWaiters(now: now)
    }

    /// Opening failed before a socket existed (DNS, connect()): back off; waiters that cannot be served fail.
    public mutating func openFailed(_ o: Opening, reason: String, now: Double) {
        guard let k = openings.firstIndex(of: o) else { preconditionFailure("openFailed \(o) without an open action") }
        openings.remove(at: k)
        noteConnectFailure(reason, now: now)
        failUnservable(now: now)
        keepWarm(now: now)
    }

    /// The handshake completed: the connection is ready, the server reachable again.
    public mutating func connected(_ h: ConnHandle, now: Double) {
        guard let i = index(h) else { return }
        connections[i].phase = .ready
        failures = 0
        retryAt = 0
        lastError = nil
        // The server's command table is asked for once, on a shared connection (never inside a client's lease,
        // where the COMMAND would run in its transaction, nor on a subscriber connection).
        if !commandTableRequested && connections[i].role == .shared {
            commandTableRequested = true
            emit(.requestCommandTable(h))
        }
        serveWaiters(now: now)
    }

    /// The connection's FIFO became empty.
    public mutating func becameIdle(_ h: ConnHandle, now: Double) {
        guard let i = index(h) else { return }
        connections[i].idleSince = now
        if connections[i].retiring && connections[i].role == .shared {
            emit(.close(h, reason: "lifetime"))
            return
        }
        if !waiters.isEmpty { serveWaiters(now: now) }
    }

    /// The PING before reuse was answered: the connection is fine, its waiters can have it.
    public mutating func checked(_ h: ConnHandle, now: Double) {
        guard let i = index(h) else { return }
        connections[i].idleSince = now
        serveWaiters(now: now)
    }

    /// The connection failed (`whileConnecting`: before its handshake completed, which backs off the next connect).
    public mutating func failed(_ h: ConnHandle, reason: String, whileConnecting: Bool, now: Double) {
        guard let i = index(h) else { return }
        let c = connections.remove(at: i)
        lastError = reason
        if whileConnecting { noteConnectFailure(reason, now: now) }
        lost(c)
        failUnservable(now: now)
        serveWaiters(now: now)
        keepWarm(now: now)
    }

    /// The driver closed the connection on purpose (after a `close` action, or at shutdown).
    public mutating func closed(_ h: ConnHandle, now: Double) {
        guard let i = index(h) else { return }
        let c = connections.remove(at: i)
        lost(c)
        serveWaiters(now: now)
        keepWarm(now: now)
    }

    mutating func lost(_ c: Connection) {
        switch c.role {
        case .shared, .control: break
        case .leased(let client): emit(.leaseLost(client: client))
        case .subscriber(let proto): emit(.subscriberLost(proto: proto, user: c.user))
        }
    }

    /// Exponential back-off with full jitter: 100 ms doubling up to 5 s.
    mutating func noteConnectFailure(_ reason: String, now: Double) {
        failures += 1
        lastError = reason
        let ceiling = min(5.0, 0.1 * Double(1 << min(failures - 1, 10)))
        retryAt = now + ceiling / 2 + jitter * ceiling / 2
    }

    // MARK: waiters

    /// A client waits until `need` can be met (HELLO before any handshake completed, for example).
    public mutating func wait(client: Int, for need: Need, now: Double) {
        waiters.append(client, Waiter(need: need, since: now))
        serveWaiters(now: now)
        failUnservable(now: now)
    }

    /// Serves waiting clients in arrival order, each as soon as what it needs can be had: a lease or a subscriber
    /// connection is assigned at once (so nobody who came later takes it); for the rest the client is told to ask
    /// again.
    mutating func serveWaiters(now: Double) {
        guard !waiters.isEmpty, !closing else { return }
        for (client, w) in waiters.ordered where waiters.contains(client) {
            var met = false
            switch w.need {
            case .shared(let proto, let db, let user):
                switch choose(proto: proto, db: db, user: user, now: now, mayCheck: false) {
                case .use: met = true
                case .open(let o): emitForWaiter(o)
                case .wait, .fail: break
                }
            case .lease(let proto, let db, let user):
                if lease(of: client) != nil {
                    met = true   // opened for it
                    break
                }
                switch tryLease(role: .leased(client: client), proto: proto, db: db, user: user, now: now) {
                case .use: met = true
                case .open(let o): emitForWaiter(o)
                case .wait, .fail: break
                }
            case .subscriber(let proto, let user):
                if subscriberConnection(proto: proto, user: user) != nil {
                    met = true
                } else if !openings.contains(where: { $0.role == .subscriber(proto: proto) && $0.user == user }) {
                    switch tryLease(role: .subscriber(proto: proto), proto: proto, db: settings.defaultDB, user: user, now: now) {
                    case .use: met = true
                    case .open(let o): emitForWaiter(o)
                    case .wait, .fail: break
                    }
                }
            case .control(let user):
                if controlConnection(user: user) != nil {
                    met = true
                } else if !openings.contains(where: { $0.role == .control && $0.user == user }) {
                    switch tryControl(user: user, now: now) {
                    case .use: met = true
                    case .open(let o): emitForWaiter(o)
                    case .wait, .fail: break
                    }
                }
            case .handshake:
                if connections.contains(where: { $0.phase == .ready }) {
                    met = true
                } else if connections.isEmpty && openings.isEmpty && room > 0 && now >= retryAt {
                    let o = Opening(proto: 2, db: settings.defaultDB, role: .shared)
                    openings.append(o)
                    emit(.open(o))
                }
            }
            if met {
                waiters.remove(client)
                emit(.grant(client: client, w.need))
            }
        }
    }

    /// An opening a waiter's need reserved (in `choose`/`tryLease`): marked as the waiter's and queued.
    mutating func emitForWaiter(_ o: Opening) {
        guard let k = openings.lastIndex(of: o) else { return }
        openings[k].forWaiter = true
        emit(.open(openings[k]))
    }

    /// While the server is unreachable (no connection of any kind, and the back-off forbids opening one), waiters
    /// fail at once with the last error, as commands that find no connection do.
    mutating func failUnservable(now: Double) {
        guard !waiters.isEmpty, connections.isEmpty, openings.isEmpty, now < retryAt else { return }
        for (client, _) in waiters.ordered {
            waiters.remove(client)
            emit(.failWaiter(client: client, .unavailable(unavailableError)))
        }
    }

    /// The server refused the credential of `user` (not the URL's) in a connection's handshake: that is the client's
    /// password, not the server's health, so nothing backs off; the waiters that need that user's connections get the
    /// server's error.
    public mutating func userRefused(_ user: Int, error: String) {
        for (client, w) in waiters.ordered where w.need.user == user {
            waiters.remove(client)
            emit(.failWaiter(client: client, .unavailable(error)))
        }
    }

    /// Waiters past RESPOOL_WAIT_TIMEOUT fail (the driver calls this at `nextWaitDeadline`).
    public mutating func expireWaiters(now: Double) {
        for (client, w) in waiters.ordered where w.since + settings.waitTimeout <= now {
            waiters.remove(client)
            emit(.failWaiter(client: client, .timedOut(cap: settings.cap)))
        }
    }

    // MARK: upkeep

    /// Keeps one connection open (or being retried) so the first command after an outage does not pay for
    /// connecting and the log says when the server is back.
    public mutating func keepWarm(now: Double) {
        guard !closing, !connections.contains(where: { $0.role == .shared && $0.user == 0 }),
              !openings.contains(where: { $0.role == .shared && $0.user == 0 }) else { return }
        if now >= retryAt {
            for _ in 0..<max(1, min(settings.minConnections, room)) where room > 0 {
                let o = Opening(proto: 2, db: settings.defaultDB, role: .shared)
                openings.append(o)
                emit(.open(o))
            }
        } else {
            emit(.retry(after: retryAt - now))
        }
    }

    /// Once a tick: shared connections idle past the idle timeout beyond the minimum close; those past their lifetime
    /// are replaced once idle (marked retiring while busy); idle ones are PINGed at the keepalive interval;
    /// connections are opened up to the minimum. O(cap).
    public mutating func tick(now: Double) {
        guard !closing else { return }
        // The minimum is kept for the URL's user; other users' connections close when idle.
        var shared = connections.reduce(0) { $0 + ($1.role == .shared && $1.user == 0 && !$1.retiring ? 1 : 0) }
        for i in connections.indices where connections[i].role == .shared {
            let c = connections[i]
            let pending = load(c.handle).pending
            if settings.lifetime > 0 && pending > 0 && now - c.createdAt >= settings.lifetime {
                connections[i].retiring = true
            }
            guard c.phase == .ready && pending == 0 && !c.retiring else { continue }
            let idle = now - c.idleSince
            if settings.idleTimeout > 0 && idle >= settings.idleTimeout && (c.user != 0 || shared > settings.minConnections) {
                connections[i].retiring = true
                emit(.close(c.handle, reason: "server_idle_timeout"))
                if c.user == 0 { shared -= 1 }
            } else if settings.lifetime > 0 && now - c.createdAt >= settings.lifetime {
                connections[i].retiring = true
                emit(.close(c.handle, reason: "lifetime"))
                if c.user == 0 { shared -= 1 }
            } else if settings.keepalive > 0 && idle >= settings.keepalive {
                connections[i].idleSince = now
                emit(.ping(c.handle, beforeReuse: false))
            }
        }
        for c in connections where c.role == .control && c.phase == .ready && !c.retiring && load(c.handle).pending == 0 {
            // The control connection is opened when needed and not kept: the data path never fills its slot anyway.
            if settings.idleTimeout > 0 && now - c.idleSince >= settings.idleTimeout, let i = index(c.handle) {
                connections[i].retiring = true
                emit(.close(c.handle, reason: "server_idle_timeout"))
            }
        }
        while shared + openings.reduce(0, { $0 + ($1.user == 0 ? 1 : 0) }) < settings.minConnections && room > 0 && now >= retryAt {
            let o = Opening(proto: 2, db: settings.defaultDB, role: .shared)
            openings.append(o)
            emit(.open(o))
        }
    }

    /// Shutdown: nothing new is opened, leased or granted; waiters fail.
    public mutating func beginShutdown() {
        closing = true
        for (client, _) in waiters.ordered {
            waiters.remove(client)
            emit(.failWaiter(client: client, .unavailable("ERR upstream unavailable: respool is shutting down")))
        }
    }
}
