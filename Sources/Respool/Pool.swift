// Pool: the bounded set of upstream connections. Chooses a connection for a client that has nothing in flight,
// opens connections lazily up to the cap (never past it), and backs off with jitter while the server is unreachable.
import EventLoop
import Glibc
import Logging
import RESP
import RespoolCore

/// What the server said about itself in its HELLO reply (repeated to clients in respool's HELLO reply).
struct ServerInfo {
    var server = "redis"
    var version = "unknown"
    var mode = "standalone"
    var role = "master"
    var modules: RESPValue = .array([])
}

final class Pool: EventHandler {
    enum Acquire {
        case ready(Unmanaged<UpstreamConnection>)
        case wait
        case unavailable(String)
    }

    unowned let proxy: Proxy
    let cap: Int
    /// Owns the connections; `live` mirrors it unretained for the per-command scan (no ARC traffic there).
    private(set) var upstreams: [UpstreamConnection] = []
    private var live: [Unmanaged<UpstreamConnection>] = []
    private var waiters: [ClientConnection] = []
    private var nextId = 1
    private(set) var serverInfo: ServerInfo?
    /// Consecutive failed connects (reset by a completed handshake).
    private(set) var failures = 0
    private var retryAt = 0.0
    private(set) var lastError: String?
    private var retryTimer: Timer?
    private var waitTimer: Timer?
    private var resolved: SocketAddress?
    private(set) var leasedCount = 0
    private var commandTableRequested = false
    var closing = false

    init(proxy: Proxy, cap: Int) {
        self.proxy = proxy
        self.cap = cap
        super.init()
    }

    var count: Int { upstreams.count }

    /// A ready shared connection for respool's own requests (the advisor's INFO, the /healthz PING), nil if none.
    var readyShared: UpstreamConnection? {
        upstreams.first { !$0.leased && $0.hub == nil && $0.state == .ready && !$0.isClosed }
    }

    /// Fill-first packing. redis-server runs one command at a time whatever the connection, so spreading clients over
    /// connections buys it no parallelism; it only makes every batch smaller (more reads, writes and wake-ups for the
    /// server per command). A busy connection keeps taking clients while it has fewer than `packLimit` requests
    /// unanswered, is not streaming a large reply and has less than `packBytes` still to write (so a big value does
    /// not hold up small commands queued behind it, and a server that reads slowly spreads the load); past that the
    /// least-loaded connection, or a new one within the cap, is used. Measured A/B (docs/ARCHITECTURE.md): a limit of
    /// 256 requests was slower at -c 50 -P 16 than one connection taking everything.
    static let packLimit = 8192
    static let packBytes = 256 << 10

    /// Picks the connection for a client that has no command in flight (fill-first, see `packLimit`).
    func acquire(proto: Int, db: Int) -> Acquire {
        var best: Unmanaged<UpstreamConnection>? = nil
        var bestLoad = Int.max
        for um in live {
            let load = um._withUnsafeGuaranteedRef { u -> Int in
                // A connection still connecting counts by what is queued on it, as a ready one: clients that arrive
                // meanwhile queue behind its handshake instead of each opening another connection up to the cap.
                if u.proto != proto || u.db != db || u.retiring { return Int.max }
                return u.pending
            }
            if load > 0 && load < Pool.packLimit && um._withUnsafeGuaranteedRef({ $0.streamed == 0 && $0.out.count < Pool.packBytes }) {
                // Fill-first: the first connection (in opening order) that is not too far behind takes the client.
                return .ready(um)
            }
            if load < bestLoad {
                best = um
                bestLoad = load
                if load == 0 {
                    // Idle for a while: check it with a PING before a command goes on it. The client waits for the
                    // PONG (or, if the connection turns out dead, for a fresh one) like any pool waiter.
                    let check = proxy.config.serverCheckAfter
                    if check > 0, um._withUnsafeGuaranteedRef({ proxy.base.now() - $0.idleSince >= check }) {
                        um._withUnsafeGuaranteedRef { $0.ping() }
                        proxy.stats.upstreamChecks &+= 1
                        return .wait
                    }
                    return .ready(um)
                }
            }
        }
        // Every connection of this protocol is busy (or there is none): grow within the cap.
        if upstreams.count < cap && !closing && proxy.base.now() >= retryAt {
            if let fresh = open(proto: proto, db: db), best == nil { return .ready(Unmanaged.passUnretained(fresh)) }
        }
        if let best { return .ready(best) }
        if upstreams.count >= cap {
            // The cap is full with connections of another protocol or database: switch an idle one in-stream.
            for u in upstreams where !u.leased && u.state == .ready && u.pending == 0 {
                u.retarget(proto: proto, db: db)
                return .ready(Unmanaged.passUnretained(u))
            }
            return .wait
        }
        return .unavailable(lastError.map { "\($0) (retrying)" } ?? "not connected")
    }

    /// Leases a connection to one client exclusively (a transaction or a blocking command). Leases count against the
    /// cap, and at least one connection always stays shared: at most cap - 1 are leased at once.
    func lease(proto: Int, db: Int, for client: ClientConnection?) -> Acquire {
        guard cap >= 2 else {
            return .unavailable("ERR respool: this command needs a dedicated upstream connection, and with RESPOOL_MAX_SERVER_CONNECTIONS=1 none can be leased")
        }
        if leasedCount >= cap - 1 || closing { return .wait }
        let shared = upstreams.count - leasedCount
        var chosen: UpstreamConnection? = nil
        if shared > 1 {
            // An idle shared connection of the client's protocol: no connect to wait for.
            chosen = upstreams.first { !$0.leased && $0.proto == proto && $0.db == db && $0.state == .ready && $0.pending == 0 }
        }
        if chosen == nil && upstreams.count < cap {
            if proxy.base.now() < retryAt {
                return .unavailable("ERR upstream unavailable: \(lastError ?? "not connected") (retrying)")
            }
            chosen = open(proto: proto, db: db)
            if chosen == nil {
                return .unavailable("ERR upstream unavailable: \(lastError ?? "not connected") (retrying)")
            }
        }
        if chosen == nil && shared > 1, let other = upstreams.first(where: { !$0.leased && $0.state == .ready && $0.pending == 0 }) {
            other.retarget(proto: proto, db: db)
            chosen = other
        }
        guard let u = chosen else { return .wait }
        u.leased = true
        if let client { nameLease(u, for: client) }
        u.leasedTo = client.map { Unmanaged.passUnretained($0) }
        leasedCount += 1
        if let i = live.firstIndex(where: { $0.toOpaque() == Unmanaged.passUnretained(u).toOpaque() }) { live.remove(at: i) }
        proxy.logger.debug("upstream leased", metadata: ["upstream.id": "\(u.id)", "client.id": "\(client.map { String($0.id) } ?? "pubsub")"])
        return .ready(Unmanaged.passUnretained(u))
    }

    var poolName: String { "\(proxy.config.namePrefix):pool" }

    /// While leased to a client that has a name, the connection carries it: `<prefix>:<client name>`, so the
    /// server's CLIENT LIST shows which part of which app holds it.
    func nameLease(_ u: UpstreamConnection, for client: ClientConnection) {
        if let name = client.name {
            u.rename("\(proxy.config.namePrefix):\(String(decoding: name, as: UTF8.self))")
        } else {
            u.rename(poolName)
        }
    }

    /// Takes a lease back: a clean connection (nothing in flight, no state) rejoins the shared set; any other is
    /// closed, since its state (a transaction, a blocked call, a changed name or db) cannot be trusted.
    func endLease(_ um: Unmanaged<UpstreamConnection>, clean: Bool) {
        let u = um.takeUnretainedValue()
        guard u.leased else { return }
        u.leased = false
        u.leasedTo = nil
        leasedCount -= 1
        if u.isClosed { return }
        if clean && u.pending == 0 {
            u.rename(poolName)
            live.append(um)
            proxy.logger.debug("upstream lease returned", metadata: ["upstream.id": "\(u.id)"])
        } else {
            u.discard(reason: "lease ended with state or commands in flight")
        }
        wakeWaiters()
    }

    /// Opens one more connection (within the cap). Its handshake is queued at once; clients may queue behind it.
    @discardableResult
    func open(proto: Int, db: Int) -> UpstreamConnection? {
        precondition(upstreams.count < cap, "pool would exceed its cap: \(upstreams.count) of \(cap)")
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
                noteConnectFailure(error.reason)
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
            noteConnectFailure(error.reason)
            return nil
        }
        let u = UpstreamConnection(proxy: proxy, fd: fd, id: nextId, proto: proto, db: db)
        nextId += 1
        do {
            try u.setUpEvents(read: false)
            let t = try Timer(base: proxy.base, handler: u, tag: .tertiary)
            t.schedule(after: proxy.config.connectTimeout)
            u.connectTimer = t
        } catch {
            u.closeSocket()
            noteConnectFailure(error.reason)
            return nil
        }
        u.queueHandshake(name: poolName)
        upstreams.append(u)
        live.append(Unmanaged.passUnretained(u))
        proxy.stats.upstreamConnects &+= 1
        proxy.logger.debug("upstream connecting", metadata: ["upstream.id": "\(u.id)", "proto": "\(proto)", "upstream": "\(proxy.config.upstream)"])
        if connectedNow {
            u.connected()
        } else {
            u.armWrite()
        }
        return u
    }

    func connectionReady(_ u: UpstreamConnection) {
        if failures > 0 || lastError != nil {
            proxy.logger.notice("upstream reachable again", metadata: ["upstream.id": "\(u.id)", "after_failures": "\(failures)"])
        }
        failures = 0
        retryAt = 0
        lastError = nil
        if !commandTableRequested {
            commandTableRequested = true
            u.requestCommandTable()
        }
        proxy.logger.debug("upstream ready", metadata: ["upstream.id": "\(u.id)", "proto": "\(u.proto)"])
        wakeWaiters()
    }

    func becameIdle(_ u: UpstreamConnection) {
        u.idleSince = proxy.base.now()
        if u.retiring && !u.leased && u.hub == nil {
            proxy.stats.upstreamRecycled &+= 1
            u.closeIdle(reason: "lifetime")
            keepWarm()
            if !waiters.isEmpty { wakeWaiters() }
            return
        }
        if !waiters.isEmpty { wakeWaiters() }
    }

    /// Once a second (from the janitor): close shared connections idle past RESPOOL_SERVER_IDLE_TIMEOUT beyond the
    /// minimum, recycle those older than RESPOOL_SERVER_LIFETIME once idle (never cutting in-flight work), PING those
    /// idle for RESPOOL_SERVER_KEEPALIVE so neither the server's timeout nor a middlebox drops them unnoticed, and
    /// open connections up to RESPOOL_MIN_SERVER_CONNECTIONS. O(cap).
    func maintain(now: Double) {
        guard !closing else { return }
        let config = proxy.config
        var shared = upstreams.filter { !$0.leased && $0.hub == nil }
        if config.commandTimeout > 0 {
            // A reply that does not come in time: the connection's reply stream can no longer be trusted (a late
            // reply must never reach the next client), so it is closed and everything in flight on it answered.
            for u in shared where u.state == .ready && u.pending > 0 && now - u.headSince >= config.commandTimeout {
                proxy.stats.commandTimeouts &+= 1
                let t = config.commandTimeout
                u.fail(reason: "command timed out after \(t == t.rounded() ? String(Int(t)) : String(t))s")
            }
            shared.removeAll { $0.isClosed }
        }
        for u in shared where config.serverLifetime > 0 && u.pending > 0 && now - u.createdAt >= config.serverLifetime {
            u.retiring = true
        }
        for u in shared where u.state == .ready && u.pending == 0 {
            let idle = now - u.idleSince
            if config.serverIdleTimeout > 0 && idle >= config.serverIdleTimeout && shared.count > config.minServerConnections {
                u.closeIdle(reason: "server_idle_timeout")
                shared.removeAll { $0 === u }
            } else if config.serverLifetime > 0 && now - u.createdAt >= config.serverLifetime {
                proxy.stats.upstreamRecycled &+= 1
                u.closeIdle(reason: "lifetime")
                shared.removeAll { $0 === u }
            } else if config.serverKeepalive > 0 && idle >= config.serverKeepalive {
                u.ping()
            }
        }
        var room = cap - upstreams.count
        while shared.count < config.minServerConnections && room > 0 && now >= retryAt {
            guard let u = open(proto: 2, db: config.upstream.db) else { break }
            shared.append(u)
            room -= 1
        }
    }

    func learnServer(from value: RESPValue) {
        var pairs: [RESPValue] = []
        switch value {
        case .map(let p): pairs = p
        case .array(let a?): pairs = a
        default: return
        }
        var info = ServerInfo()
        var i = 0
        while i + 1 < pairs.count {
            let key = pairs[i].string ?? ""
            let v = pairs[i + 1]
            switch key {
            case "server": info.server = v.string ?? info.server
            case "version": info.version = v.string ?? info.version
            case "mode": info.mode = v.string ?? info.mode
            case "role": info.role = v.string ?? info.role
            case "modules": info.modules = v
            default: break
            }
            i += 2
        }
        serverInfo = info
    }

    private func remove(_ u: UpstreamConnection) {
        // Parked first: the array may hold the last strong reference while `u` is borrowed by a callback.
        proxy.graveyard.append(u)
        if let hub = u.hub {
            u.hub = nil
            hub.connectionLost()
        }
        if u.leased {
            u.leased = false
            leasedCount -= 1
            if let holder = u.leasedTo {
                u.leasedTo = nil
                holder._withUnsafeGuaranteedRef { $0.leaseLost() }
            }
        }
        if let i = upstreams.firstIndex(where: { $0 === u }) { upstreams.remove(at: i) }
        if let i = live.firstIndex(where: { $0.toOpaque() == Unmanaged.passUnretained(u).toOpaque() }) { live.remove(at: i) }
    }

    func connectionFailed(_ u: UpstreamConnection, reason: String, whileConnecting: Bool, failedCommands: Int) {
        remove(u)
        lastError = reason
        var meta: Logger.Metadata = ["upstream.id": "\(u.id)", "reason": "\(reason)", "failed_commands": "\(failedCommands)"]
        if whileConnecting {
            noteConnectFailure(reason)
            meta["retry_in"] = "\(Double(Int((retryAt - proxy.base.now()) * 1000)) / 1000)s"
            proxy.logger.warning("upstream connect failed", metadata: meta)
        } else {
            proxy.stats.upstreamLost &+= 1
            proxy.logger.warning("upstream connection lost", metadata: meta)
        }
        wakeWaiters()
        keepWarm()
    }

    func connectionClosed(_ u: UpstreamConnection, reason: String) {
        remove(u)
        proxy.logger.debug("upstream closed", metadata: ["upstream.id": "\(u.id)", "reason": "\(reason)"])
    }

    /// Exponential backoff with full jitter: 100 ms doubling up to 5 s.
    private func noteConnectFailure(_ reason: String) {
        resolved = nil
        failures += 1
        lastError = reason
        proxy.stats.upstreamConnectFailures &+= 1
        let ceiling = min(5.0, 0.1 * Double(1 << min(failures - 1, 10)))
        let delay = ceiling / 2 + Double.random(in: 0...(ceiling / 2))
        retryAt = proxy.base.now() + delay
    }

    /// Keeps one connection open (or being retried) so the first command after an outage does not pay for connecting
    /// and the log says when the server is back.
    func keepWarm() {
        guard !closing, upstreams.allSatisfy({ $0.leased || $0.hub != nil }) else { return }
        let now = proxy.base.now()
        if now >= retryAt {
            for _ in 0..<max(1, min(proxy.config.minServerConnections, cap - upstreams.count)) {
                if open(proto: 2, db: proxy.config.upstream.db) == nil { break }
            }
            if upstreams.isEmpty { scheduleRetry(after: max(0.01, retryAt - now)) }
        } else {
            scheduleRetry(after: retryAt - now)
        }
    }

    private func scheduleRetry(after seconds: Double) {
        if retryTimer == nil { retryTimer = try? Timer(base: proxy.base, handler: self) }
        retryTimer?.schedule(after: seconds)
    }

    override func handleEvent(_ what: Int16, tag: Int) {
        if tag == 1 { expireWaiters() } else { keepWarm() }
    }

    /// Clients holding a lease (at most the cap).
    func leaseHolders() -> [ClientConnection] {
        upstreams.compactMap { $0.leasedTo?.takeUnretainedValue() }
    }

    // MARK: waiters

    func addWaiter(_ c: ClientConnection) {
        if c.waitStart == nil { c.waitStart = proxy.base.now() }
        waiters.append(c)
        scheduleWaitTimer()
    }

    /// One timer for all waiters: it fires at the earliest deadline (RESPOOL_WAIT_TIMEOUT after a waiter began).
    private func scheduleWaitTimer() {
        guard let earliest = waiters.compactMap(\.waitStart).min() else {
            waitTimer?.cancel()
            return
        }
        if waitTimer == nil { waitTimer = try? Timer(base: proxy.base, handler: self, tag: .secondary) }
        waitTimer?.schedule(after: max(0.001, earliest + proxy.config.waitTimeout - proxy.base.now()))
    }

    private func expireWaiters() {
        let now = proxy.base.now()
        let timeout = proxy.config.waitTimeout
        let expired = waiters.filter { ($0.waitStart ?? now) + timeout <= now }
        if !expired.isEmpty {
            waiters.removeAll { c in expired.contains { $0 === c } }
            for c in expired { c.waitTimedOut(cap: cap) }
        }
        scheduleWaitTimer()
    }

    /// Clients waiting for a connection right now (the wait queue's length).
    var waiterCount: Int { waiters.count }

    func removeWaiter(_ c: ClientConnection) {
        waiters.removeAll { $0 === c }
    }

    private func wakeWaiters() {
        guard !waiters.isEmpty else { return }
        let w = waiters
        waiters.removeAll()
        for c in w { proxy.scheduleResume(c) }
    }

    var totalPending: Int { upstreams.reduce(0) { $0 + $1.pending } }
    /// Replies due on shared connections (leased ones may be blocked for as long as their command says).
    var sharedPending: Int { upstreams.reduce(0) { $0 + ($1.leased ? 0 : $1.pending) } }

    /// Closes every connection (shutdown).
    func closeAll() {
        closing = true
        retryTimer?.free()
        retryTimer = nil
        for u in upstreams {
            if u.pending > 0 { u.fail(reason: "respool shutting down") } else { u.closeIdle(reason: "shutdown") }
        }
    }
}
