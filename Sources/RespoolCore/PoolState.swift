// PoolState: the bounded set of upstream connections as pure state, the only place that counts them. It decides which
// connection a client uses (fill-first), leases (at most `leaseLimit`, pub/sub subscriber connections included, one
// kept for the first subscriber connection from a cap of 6), when to
// open, check, switch or close a connection, who waits and in what order, and the back-off after failed connects.
// No I/O, no clock of its own: the driver passes `now`, carries out the actions it queues (`next()`), and reports
// what happened on the sockets. The cap invariant lives here: connections (opening ones included) never exceed `cap`.

/// An upstream connection as the driver knows it (its object, as an opaque pointer). Tests use any distinct values.
public struct ConnHandle: Hashable, @unchecked Sendable, CustomStringConvertible {
    public let raw: UnsafeMutableRawPointer
    public init(_ raw: UnsafeMutableRawPointer) { self.raw = raw }
    public var description: String { "conn@\(UInt(bitPattern: raw))" }
}

/// What the driver knows of a connection's load when the pool chooses one.
public struct ConnLoad: Sendable {
    /// Requests sent and not yet answered.
    public var pending: Int
    /// Streaming a large reply, or too much output not yet written: new clients go elsewhere.
    public var busy: Bool
    /// No reply for a whole janitor tick with requests waiting (a script or a slow command holds the server there):
    /// new clients go to any other connection, or a new one, where the server can at least answer them BUSY.
    public var stuck: Bool
    public init(pending: Int, busy: Bool, stuck: Bool = false) {
        self.pending = pending
        self.busy = busy
        self.stuck = stuck
    }
}

/// What a waiting client (or respool itself) needs from the pool.
public enum Need: Equatable, Sendable {
    /// A connection of this protocol and database, authenticated as `user` (a credential id of the driver's; 0 is
    /// the URL's), to multiplex its commands on.
    case shared(proto: Int, db: Int, user: Int = 0)
    /// An exclusive connection (a transaction or a blocking command).
    case lease(proto: Int, db: Int, user: Int = 0)
    /// The pub/sub hub's connection of this protocol and user.
    case subscriber(proto: Int, user: Int = 0)
    /// Any connection that has completed its handshake (HELLO's reply repeats what the server said in it).
    case handshake
    /// The control connection of a user: nothing of the data path is queued on it (SCRIPT KILL, FUNCTION KILL,
    /// SHUTDOWN, the check of a new credential).
    case control(user: Int = 0)
}

extension Need {
    /// The credential a connection for this need authenticates with (0: the URL's).
    public var user: Int {
        switch self {
        case .shared(_, _, let u), .lease(_, _, let u), .subscriber(_, let u), .control(let u): return u
        case .handshake: return 0
        }
    }
}

public struct PoolSettings: Sendable, Equatable {
    public var cap: Int
    public var minConnections: Int
    public var idleTimeout: Double
    public var lifetime: Double
    public var keepalive: Double
    public var checkAfter: Double
    public var waitTimeout: Double
    public var defaultDB: Int

    public init(cap: Int, minConnections: Int = 1, idleTimeout: Double = 120, lifetime: Double = 3600, keepalive: Double = 60,
                checkAfter: Double = 30, waitTimeout: Double = 5, defaultDB: Int = 0) {
        self.cap = cap
        self.minConnections = minConnections
        self.idleTimeout = idleTimeout
        self.lifetime = lifetime
        self.keepalive = keepalive
        self.checkAfter = checkAfter
        self.waitTimeout = waitTimeout
        self.defaultDB = defaultDB
    }

    public init(config: Config) {
        self.init(cap: config.maxServerConnections, minConnections: config.minServerConnections,
                  idleTimeout: config.serverIdleTimeout, lifetime: config.serverLifetime, keepalive: config.serverKeepalive,
                  checkAfter: config.serverCheckAfter, waitTimeout: config.waitTimeout, defaultDB: config.upstream.db)
    }
}

public struct PoolState {
    public enum Phase: Equatable, Sendable { case connecting, ready }

    public enum Role: Equatable, Sendable {
        /// Multiplexed: clients are pinned to it while they have commands in flight.
        case shared
        /// Exclusive to one client.
        case leased(client: Int)
        /// The pub/sub hub's subscriber connection of a protocol (a lease without a client).
        case subscriber(proto: Int)
        /// The control connection, in the slot of the cap that the data path never fills (with a cap of 3 or more):
        /// SCRIPT KILL, FUNCTION KILL and SHUTDOWN go there, and respool's own PING and INFO when every shared
        /// connection is stuck. Opened when first needed, closed when idle like a shared one.
        case control

        /// Exclusive: a client's lease or the hub's subscriber connection (counted against `leaseLimit`).
        public var isLease: Bool {
            switch self {
            case .leased, .subscriber: return true
            case .shared, .control: return false
            }
        }

        /// A client's lease (a transaction, a blocking call, a pin).
        public var isClientLease: Bool {
            if case .leased = self { return true }
            return false
        }
    }

    public struct Connection: Sendable {
        public let id: Int
        public let handle: ConnHandle
        public internal(set) var phase: Phase
        public internal(set) var role: Role
        /// Protocol and database of the commands appended to it from now on.
        public internal(set) var proto: Int
        public internal(set) var db: Int
        /// The credential it authenticated with (0: the URL's): only that user's clients get it.
        public internal(set) var user: Int = 0
        public let createdAt: Double
        /// When its last reply came in (or it was opened, or PINGed).
        public internal(set) var idleSince: Double
        /// Past its lifetime with work in flight: no new client gets it; closed once idle.
        public internal(set) var retiring = false
    }

    /// What a connection is opened for.
    public struct Opening: Equatable, Sendable {
        public var proto: Int
        public var db: Int
        public var role: Role
        /// The credential its handshake authenticates with (0: the URL's).
        public var user: Int
        /// Opened for a waiting client (not for the caller of `acquire`/`lease`/`subscriber`, who uses it at once).
        public var forWaiter = false

        public init(proto: Int, db: Int, role: Role, user: Int = 0, forWaiter: Bool = false) {
            self.proto = proto
            self.db = db
            self.role = role
            self.user = user
            self.forWaiter = forWaiter
        }
    }

    public enum Action: Equatable, Sendable {
        /// Open a connection (then report `opened` or `openFailed` with the same `Opening`).
        case open(Opening)
        /// Close a connection on purpose (idle, lifetime, a lease given up with state on it); report `closed`.
        case close(ConnHandle, reason: String)
        /// PING a connection: a keepalive, or the check before reuse (whose answer is reported with `checked`).
        case ping(ConnHandle, beforeReuse: Bool)
        /// Switch an idle connection's protocol and database in-stream (HELLO, SELECT).
        case retarget(ConnHandle, proto: Int, db: Int)
        /// A waiting client can go on: what it needs can be had now (a lease is already its). It asks again.
        case grant(client: Int, Need)
        /// A waiting client will not get what it waits for: the pool is unreachable, or it waited too long.
        case failWaiter(client: Int, Failure)
        /// The connection leased to this client is gone (failed or closed).
        case leaseLost(client: Int)
        /// The subscriber connection of this protocol is gone.
        case subscriberLost(proto: Int, user: Int)
        /// Ask the first ready connection for the server's command table (once per process).
        case requestCommandTable(ConnHandle)
        /// Nothing can be opened during the back-off: call `keepWarm` again after this many seconds.
        case retry(after: Double)
    }

    public enum Failure: Equatable, Sendable {
        /// RESPOOL_WAIT_TIMEOUT passed.
        case timedOut(cap: Int)
        /// No connection can be had: the error reply (the last connect error, shutdown).
        case unavailable(String)
    }

    /// The answer to a client that asks for a connection now.
    public enum Answer: Equatable, Sendable {
        case use(ConnHandle)
        /// Open this one and use it (report `opened`, or `openFailed`, which the client gets as its error).
        case open(Opening)
        /// The client waits: it is granted (and asks again) or failed later.
        case wait
        case fail(String)
    }

    public struct Waiter: Sendable {
        public let need: Need
        public let since: Double
    }

    public let settings: PoolSettings
    public internal(set) var connections: [Connection] = []
    /// Connections decided and not yet reported `opened`/`openFailed`: counted against the cap.
    public internal(set) var openings: [Opening] = []
    public internal(set) var waiters = WaitQueue<Waiter>()
    public internal(set) var failures = 0
    public internal(set) var retryAt = 0.0
    public internal(set) var lastError: String?
    public internal(set) var closing = false
    /// A number in 0...1 for the next back-off's jitter (the driver draws a random one; tests set it).
    public var jitter = 0.5
    var nextID = 1
    var commandTableRequested = false
    @usableFromInline var outbox: [Action] = []
    @usableFromInline var outboxHead = 0
    /// The driver's view of a connection's load (injected, so the state needs no update per command).
    let load: (ConnHandle) -> ConnLoad

    /// Fill-first packing: a busy connection keeps taking clients while it has fewer than `packLimit` requests
    /// unanswered and is not `busy` (docs/ARCHITECTURE.md: spreading clients buys redis-server no parallelism).
    public static let packLimit = 8192

    public init(settings: PoolSettings, load: @escaping (ConnHandle) -> ConnLoad) {
        self.settings = settings
        self.load = load
    }

    // MARK: reading

    public var count: Int { connections.count }
    public var cap: Int { settings.cap }
    /// Leases and subscriber connections (the control connection is neither).
    public var leasedCount: Int { connections.reduce(0) { $0 + ($1.role.isLease ? 1 : 0) } }
    public var sharedCount: Int { connections.reduce(0) { $0 + ($1.role == .shared ? 1 : 0) } }
    var leasesOpening: Int { openings.reduce(0) { $0 + ($1.role.isLease ? 1 : 0) } }
    /// The slot kept for the control connection, which the data path never fills: with a cap of 3 or more (below,
    /// every connection is needed for traffic; SCRIPT KILL then takes an idle shared connection).
    public var reserved: Int { settings.cap >= 3 ? 1 : 0 }
    /// Connections (open or opening) in the control role, and the rest.
    var controlUsed: Int {
        connections.reduce(0) { $0 + ($1.role == .control ? 1 : 0) } + openings.reduce(0) { $0 + ($1.role == .control ? 1 : 0) }
    }
    var dataUsed: Int { connections.count + openings.count - controlUsed }
    /// Connections the data path may still open (the control slot is not theirs).
    var room: Int { settings.cap - max(reserved, controlUsed) - dataUsed }
    /// Leases (and subscriber connections) at once: one data connection always stays shared.
    public var leaseLimit: Int { settings.cap - reserved - 1 }
    /// From a cap of 6, one of those is kept for the first pub/sub subscriber connection: clients' leases and pins
    /// never take it, so a SUBSCRIBE gets its connection even while every other lease is held (workers blocked in
    /// BLPOP), instead of waiting for one to end.
    public var hubReserve: Int { settings.cap >= 6 ? 1 : 0 }
    /// Clients' leases and pins (open or opening): subscriber connections are leases without a client.
    public var clientLeaseCount: Int {
        connections.reduce(0) { $0 + ($1.role.isClientLease ? 1 : 0) } + openings.reduce(0) { $0 + ($1.role.isClientLease ? 1 : 0) }
    }
    public func connection(_ h: ConnHandle) -> Connection? { connections.first { $0.handle == h } }
    func index(_ h: ConnHandle) -> Int? { connections.firstIndex { $0.handle == h } }


    /// The connection leased to `client`, if any.
    public func lease(of client: Int) -> ConnHandle? {
        connections.first { $0.role == .leased(client: client) }?.handle
    }

    /// The next action for the driver to carry out, oldest first (the driver drains them after every call).
    public mutating func next() -> Action? {
        guard outboxHead < outbox.count else {
            if outboxHead > 0 {
                outbox.removeAll(keepingCapacity: true)
                outboxHead = 0
            }
            return nil
        }
        defer { outboxHead += 1 }
        return outbox[outboxHead]
    }

    /// Inlinable: a getter called across modules takes the whole struct as a copy.
    @inlinable
    public var hasActions: Bool { outboxHead < outbox.count }

    mutating func emit(_ a: Action) { outbox.append(a) }

    /// The earliest moment a waiter times out, nil when nobody waits.
    public var nextWaitDeadline: Double? {
        var earliest: Double?
        for (_, w) in waiters.ordered { earliest = min(earliest ?? w.since, w.since) }
        return earliest.map { $0 + settings.waitTimeout }
    }

    /// The error a client gets when no connection can be had.
    public var unavailableError: String { "ERR upstream unavailable: " + (lastError.map { "\($0) (retrying)" } ?? "not connected") }

    // MARK: asking for connections

    /// A shared connection of `proto`/`db` for a client that has nothing in flight (fill-first).
    public mutating func acquire(client: Int, proto: Int, db: Int, user: Int = 0, now: Double) -> Answer {
        let answer = choose(proto: proto, db: db, user: user, now: now, mayCheck: true)
        if case .wait = answer { waiters.append(client, Waiter(need: .shared(proto: proto, db: db, user: user), since: now)) }
        return answer
    }

    /// The fill-first choice of a shared connection: the first one (in opening order) that is not too far behind,
    /// else the least loaded, else a new one within the cap, else an idle one switched in-stream.
    mutating func choose(proto: Int, db: Int, user: Int = 0, now: Double, mayCheck: Bool) -> Answer {
        var best: Int? = nil
        var bestLoad = Int.max
        var stuck: ConnHandle? = nil
        // Fields are read in place (no copy of the record per candidate: this runs for every client burst).
        for i in connections.indices {
            guard case .shared = connections[i].role else { continue }
            // A connection still connecting counts by what is queued on it, as a ready one does: clients that arrive
            // meanwhile queue behind its handshake instead of each opening another connection up to the cap.
            if connections[i].proto != proto || connections[i].db != db || connections[i].user != user || connections[i].retiring { continue }
            let h = connections[i].handle
            let l = load(h)
            if l.stuck {
                // Held by a script or a slow command: only when nothing else can be had.
                if stuck == nil { stuck = h }
                continue
            }
            if l.pending > 0 && l.pending < Self.packLimit && !l.busy { return .use(h) }
            if l.pending < bestLoad {
                best = i
                bestLoad = l.pending
                if l.pending == 0 {
                    // Idle for a while: checked with a PING before a command goes on it. The client waits for the
                    // PONG (or, if the connection turns out dead, for a fresh one).
                    if mayCheck && settings.checkAfter > 0 && connections[i].phase == .ready
                        && now - connections[i].idleSince >= settings.checkAfter {
                        connections[i].idleSince = now
                        emit(.ping(h, beforeReuse: true))
                        return .wait
                    }
                    return .use(h)
                }
            }
        }
        // Every connection of this protocol and database is busy (or there is none): grow within the cap.
        if room > 0 && !closing && now >= retryAt {
            let o = Opening(proto: proto, db: db, role: .shared, user: user)
            openings.append(o)
            if best == nil { return .open(o) }
            emit(.open(o))
        }
        if let best { return .use(connections[best].handle) }
        if room == 0 {
            if openings.contains(where: { $0.role == .shared && $0.proto == proto && $0.db == db && $0.user == user }) { return .wait }
            // The cap is full with connections of another protocol or database: switch an idle one in-stream.
            if let h = idleShared(user: user) {
                retarget(h, proto: proto, db: db)
                return .use(h)
            }
            // Or of another user: an idle one is closed to make room (the client waits for its replacement).
            if closeIdleOfAnotherUser(user) { return .wait }
            if let stuck { return .use(stuck) }
            return .wait
        }
        return .fail(closing ? "ERR upstream unavailable: respool is shutting down" : unavailableError)
    }

    func idleShared(user: Int = 0) -> ConnHandle? {
        connections.first { $0.role == .shared && $0.user == user && $0.phase == .ready && !$0.retiring && load($0.handle).pending == 0 }?.handle
    }

    /// Closes an idle shared connection of a user other than `user` (the cap is full); true if one was.
    mutating func closeIdleOfAnotherUser(_ user: Int) -> Bool {
        guard let i = connections.firstIndex(where: {
            $0.role == .shared && $0.user != user && $0.phase == .ready && !$0.retiring && load($0.handle).pending == 0
        }) else { return false }
        connections[i].retiring = true
        emit(.close(connections[i].handle, reason: "room for another user's connection"))
        return true
    }

    mutating func retarget(_ h: ConnHandle, proto: Int, db: Int) {
        guard let i = index(h) else { return }
        if connections[i].proto == proto && connections[i].db == db { return }
        connections[i].proto = proto
        connections[i].db = db
        emit(.retarget(h, proto: proto, db: db))
    }

    /// An exclusive connection for `client` (a transaction or a blocking command): the one it already holds, an idle
    /// shared one of its protocol and database (one always stays shared), a new one within the cap, or an idle one
    /// switched. At most cap - 1 are leased at once.
    public mutating func lease(client: Int, proto: Int, db: Int, user: Int = 0, now: Double) -> Answer {
        if let h = lease(of: client) { return .use(h) }
        let answer = tryLease(role: .leased(client: client), proto: proto, db: db, user: user, now: now)
        if answer == .wait { waiters.append(client, Waiter(need: .lease(proto: proto, db: db, user: user), since: now)) }
        return answer
    }

    /// The hub's subscriber connection of `proto` (a lease without a client) for `client`'s SUBSCRIBE; the client
    /// waits when none can be had yet.
    public mutating func subscriber(client: Int, proto: Int, user: Int = 0, now: Double) -> Answer {
        if let c = subscriberConnection(proto: proto, user: user) { return .use(c.handle) }
        var answer = Answer.wait
        if !openings.contains(where: { $0.role == .subscriber(proto: proto) && $0.user == user }) {
            answer = tryLease(role: .subscriber(proto: proto), proto: proto, db: settings.defaultDB, user: user, now: now)
        }
        if answer == .wait { waiters.append(client, Waiter(need: .subscriber(proto: proto, user: user), since: now)) }
        return answer
    }

    public func subscriberConnection(proto: Int, user: Int) -> Connection? {
        connections.first { $0.role == .subscriber(proto: proto) && $0.user == user }
    }

    /// The control connection, for a request that must reach the server even when a script holds every shared
    /// connection (SCRIPT KILL, FUNCTION KILL, SHUTDOWN); `client` waits when none can be had yet.
    /// The control connection is its user's: one of another user is closed (once idle) to make room.
    public mutating func control(client: Int, user: Int = 0, now: Double) -> Answer {
        if let c = controlConnection(user: user) { return .use(c.handle) }
        var answer = Answer.wait
        if !openings.contains(where: { $0.role == .control && $0.user == user }) { answer = tryControl(user: user, now: now) }
        if case .wait = answer { waiters.append(client, Waiter(need: .control(user: user), since: now)) }
        return answer
    }

    public func controlConnection(user: Int) -> Connection? {
        connections.first { $0.role == .control && $0.user == user && !$0.retiring }
    }

    /// The control connection for respool's own requests (PING, INFO) when no shared connection answers: the one
    /// open, else one opened now (nil when none can be).
    public mutating func controlForRespool(now: Double) -> Answer {
        if let c = controlConnection(user: 0) { return .use(c.handle) }
        if openings.contains(where: { $0.role == .control }) { return .wait }
        return tryControl(user: 0, now: now)
    }

    /// Opens the control connection in a free slot (the reserved one, or any), else takes an idle shared connection
    /// that is not stuck.
    mutating func tryControl(user: Int, now: Double) -> Answer {
        if closing { return .wait }
        if let i = connections.firstIndex(where: { $0.role == .control && $0.user != user && !$0.retiring }) {
            // Another user's: closed once idle, then this user's is opened in its slot.
            if load(connections[i].handle).pending == 0 {
                connections[i].retiring = true
                emit(.close(connections[i].handle, reason: "room for another user's control connection"))
            }
            return .wait
        }
        if settings.cap - controlUsed - dataUsed > 0 && (now >= retryAt || user != 0) {
            // Database 0 and no SELECT in its handshake: SELECT is refused while a script holds the server, HELLO
            // (and SCRIPT KILL, FUNCTION KILL, SHUTDOWN) are not.
            let o = Opening(proto: 2, db: 0, role: .control, user: user)
            openings.append(o)
            return .open(o)
        }
        if let h = idleShared(user: user) { return .use(h) }
        if now < retryAt && connections.isEmpty && openings.isEmpty { return .fail(unavailableError) }
        return .wait
    }

    mutating func tryLease(role: Role, proto: Int, db: Int, user: Int = 0, now: Double) -> Answer {
        guard settings.cap >= 2 else {
            return .fail("ERR respool: this command needs a dedicated upstream connection, and with RESPOOL_MAX_SERVER_CONNECTIONS=1 none can be leased")
        }
        if leasedCount + leasesOpening >= leaseLimit || closing { return .wait }
        if role.isClientLease && clientLeaseCount >= leaseLimit - hubReserve { return .wait }
        let shared = sharedCount
        if shared > 1, let i = connections.firstIndex(where: {
            $0.role == .shared && $0.proto == proto && $0.db == db && $0.user == user && $0.phase == .ready && !$0.retiring
                && load($0.handle).pending == 0
        }) {
            connections[i].role = role
            return .use(connections[i].handle)
        }
        if room > 0 {
            if now < retryAt { return .fail(unavailableError) }
            let o = Opening(proto: proto, db: db, role: role, user: user)
            openings.append(o)
            return .open(o)
        }
        if shared > 1, let h = idleShared(user: user), let i = index(h) {
            retarget(h, proto: proto, db: db)
            connections[i].role = role
            return .use(h)
        }
        if shared > 1 && closeIdleOfAnotherUser(user) { return .wait }
        return .wait
    }

    /// Takes a lease back: a clean connection (nothing in flight, no state) rejoins the shared set; any other is
    /// closed, since its state (a transaction, a blocked call, a changed name or database) cannot be trusted.
    /// `.reset`: the driver has queued RESET and the handshake (RESP2, respool's name, the default database) on it,
    /// so it rejoins the shared set at once; clients that take it queue behind those.
    public mutating func endLease(_ h: ConnHandle, _ end: ClientSession.LeaseEnd, now: Double) {
        guard let i = index(h), connections[i].role.isLease else { return }
        if end == .reset {
            connections[i].role = .shared
            connections[i].proto = 2
            connections[i].db = settings.defaultDB
            connections[i].idleSince = now
            serveWaiters(now: now)
        } else if end == .clean && load(h).pending == 0 {
            connections[i].role = .shared
            connections[i].idleSince = now
            serveWaiters(now: now)
        } else {
            connections[i].role = .shared
            connections[i].retiring = true   // nobody is given it before it is closed
            emit(.close(h, reason: "lease ended with state or commands in flight"))
        }
    }

    /// The driver switched a connection's protocol or database itself (HELLO or SELECT on a client's lease).
    public mutating func switched(_ h: ConnHandle, proto: Int, db: Int) {
        guard let i = index(h) else { return }
        connections[i].proto = proto
        connections[i].db = db
    }

    /// A client went away: it no longer waits, and a lease it held is given back (closed: its state is unknown).
    public mutating func clientGone(_ client: Int, now: Double) {
        waiters.remove(client)
        if let h = lease(of: client) { endLease(h, .close, now: now) }
    }
}
