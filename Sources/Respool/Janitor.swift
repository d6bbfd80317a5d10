// Janitor: closes clients idle longer than RESPOOL_CLIENT_IDLE_TIMEOUT (never subscribers, clients blocked in a
// command, clients with replies due or waiting for a connection) and clients idle inside MULTI/WATCH longer than
// RESPOOL_TRANSACTION_IDLE_TIMEOUT (their lease is closed, discarding the transaction upstream).
//
// Cost is O(1) per event: clients sit in an intrusive list ordered by last activity (a read moves the client to the
// tail); a sweep each second looks only at the head while it is expired, and at the leases (at most the cap) for the
// transaction rule. No scan of every client.
import EventLoop
import Logging

/// The intrusive activity list (least recently active first).
struct ActivityList {
    private(set) var head: Unmanaged<ClientConnection>?
    private(set) var tail: Unmanaged<ClientConnection>?

    mutating func append(_ c: ClientConnection) {
        let u = Unmanaged.passUnretained(c)
        c.activityPrev = tail
        c.activityNext = nil
        if let t = tail { t._withUnsafeGuaranteedRef { $0.activityNext = u } } else { head = u }
        tail = u
        c.inActivityList = true
    }

    mutating func remove(_ c: ClientConnection) {
        guard c.inActivityList else { return }
        if let p = c.activityPrev { p._withUnsafeGuaranteedRef { $0.activityNext = c.activityNext } } else { head = c.activityNext }
        if let n = c.activityNext { n._withUnsafeGuaranteedRef { $0.activityPrev = c.activityPrev } } else { tail = c.activityPrev }
        c.activityPrev = nil
        c.activityNext = nil
        c.inActivityList = false
    }

    /// Marks `c` as the most recently active.
    @inline(__always)
    mutating func touch(_ c: ClientConnection) {
        if let t = tail, t.toOpaque() == Unmanaged.passUnretained(c).toOpaque() { return }
        remove(c)
        append(c)
    }
}

final class Janitor: EventHandler {
    unowned let proxy: Proxy
    private var timer: Timer?

    init(proxy: Proxy) {
        self.proxy = proxy
        super.init()
    }

    var enabled: Bool { proxy.config.clientIdleTimeout > 0 || proxy.config.transactionIdleTimeout > 0 }

    func start() throws(SystemError) {
        let t = try Timer(base: proxy.base, handler: self, repeating: true)
        let ct = proxy.config.commandTimeout
        t.schedule(after: ct > 0 ? min(1, max(0.05, ct / 4)) : 1)
        timer = t
    }

    override func handleEvent(_ what: Int16, tag: Int) {
        let now = proxy.base.now()
        sweep(now: now)
        proxy.pool.maintain(now: now)
        if proxy.credentials.count > 0 {
            var inUse = Set(proxy.clients.values.map { $0.session.user })
            for u in proxy.pool.upstreams { inUse.insert(u.user) }
            proxy.credentials.sweep(inUse: inUse, now: now)
        }
        proxy.periodic.tick(now: now)
    }

    func sweep(now: Double) {
        let idle = proxy.config.clientIdleTimeout
        if idle > 0 {
            // Exempt clients met at the head are moved to the tail; each is looked at once per sweep at most.
            var budget = proxy.clientCount
            while budget > 0, let h = proxy.activity.head {
                let c = h.takeUnretainedValue()
                guard now - c.lastActive >= idle else { break }
                budget -= 1
                if c.session.isIdleTimeoutExempt {
                    // Looked at again when it comes round to the head; its own activity keeps it fresh meanwhile.
                    proxy.activity.touch(c)
                    continue
                }
                proxy.stats[.idleTimeouts] &+= 1
                proxy.logger.info("client closed", metadata: ["client.id": "\(c.id)", "reason": "idle_timeout", "idle": "\(Int(now - c.lastActive))s"])
                c.close(reason: "idle_timeout")
            }
        }
        let txIdle = proxy.config.transactionIdleTimeout
        if txIdle > 0 {
            for c in proxy.pool.leaseHolders() where c.session.holdsState && c.session.inFlight == 0 && now - c.lastActive >= txIdle {
                proxy.stats[.transactionIdleTimeouts] &+= 1
                proxy.logger.info("client closed", metadata: ["client.id": "\(c.id)", "reason": "transaction_idle_timeout",
                                                              "idle": "\(Int(now - c.lastActive))s"])
                c.close(reason: "transaction_idle_timeout")
            }
        }
    }
}
