// PoolState's decisions one by one, without sockets: fill-first, the cap, leases (cap - 1, FIFO), the check before
// reuse, back-off, the upkeep rules, and connections opened for waiters that left.
@testable import RespoolCore
import XCTest

/// A pool whose connections are plain handles with a settable load; actions are collected, opens answered at once.
final class PoolHarness {
    var pool: PoolState!
    var pending: [ConnHandle: Int] = [:]
    var busy: Set<ConnHandle> = []
    var stuck: Set<ConnHandle> = []
    var actions: [PoolState.Action] = []
    var next = 1
    var now = 100.0

    init(_ settings: PoolSettings) {
        pool = PoolState(settings: settings) { [unowned self] h in
            ConnLoad(pending: self.pending[h] ?? 0, busy: self.busy.contains(h), stuck: self.stuck.contains(h))
        }
    }

    func handle() -> ConnHandle {
        defer { next += 1 }
        return ConnHandle(UnsafeMutableRawPointer(bitPattern: UInt(next) << 4)!)
    }

    /// Carries out opens (they succeed), collects everything else.
    @discardableResult
    func drain() -> [PoolState.Action] {
        var out: [PoolState.Action] = []
        while let a = pool.next() {
            if case .open(let o) = a {
                let h = handle()
                pool.opened(h, o, now: now)
            }
            out.append(a)
        }
        actions += out
        return out
    }

    /// `acquire`, opening at once what it asks for.
    func acquire(_ client: Int, proto: Int = 2, db: Int = 0) -> PoolState.Answer {
        settle(pool.acquire(client: client, proto: proto, db: db, now: now))
    }

    func lease(_ client: Int, proto: Int = 2, db: Int = 0) -> PoolState.Answer {
        settle(pool.lease(client: client, proto: proto, db: db, now: now))
    }

    func settle(_ a: PoolState.Answer) -> PoolState.Answer {
        var answer = a
        if case .open(let o) = a {
            let h = handle()
            pool.opened(h, o, now: now)
            answer = .use(h)
        }
        drain()
        return answer
    }

    func readyAll() {
        for c in pool.connections where c.phase == .connecting { pool.connected(c.handle, now: now) }
        drain()
    }
}

final class PoolStateTests: XCTestCase {
    func settings(cap: Int, min: Int = 0) -> PoolSettings {
        PoolSettings(cap: cap, minConnections: min, idleTimeout: 120, lifetime: 3600, keepalive: 60, checkAfter: 30, waitTimeout: 5)
    }

    func use(_ a: PoolState.Answer, file: StaticString = #filePath, line: UInt = #line) -> ConnHandle? {
        guard case .use(let h) = a else {
            XCTFail("expected .use, got \(a)", file: file, line: line)
            return nil
        }
        return h
    }

    /// The first connection that is not too far behind takes every client (redis-server gains nothing from spreading);
    /// a busy one is passed over; growth stays within the cap.
    func testFillFirstAndTheCap() {
        let t = PoolHarness(settings(cap: 4))
        guard let first = use(t.acquire(1)) else { return }
        XCTAssertEqual(t.pool.count, 1)
        t.pending[first] = 5
        XCTAssertEqual(use(t.acquire(2)), first, "fill-first: the connection with work queued takes the next client")
        t.pending[first] = PoolState.packLimit
        XCTAssertEqual(use(t.acquire(3)), first, "the least loaded while a new one is opened for the clients after it")
        XCTAssertEqual(t.pool.count, 2)
        guard let second = use(t.acquire(4)) else { return }
        XCTAssertNotEqual(second, first, "a connection packLimit behind is passed over")
        t.busy.insert(second)   // streaming a large reply, say
        t.pending[second] = 1
        for c in 5...20 { _ = t.acquire(c) }
        XCTAssertEqual(t.pool.count, 3, "grown to the cap but for the control connection's slot")
        XCTAssertTrue(t.pool.openings.isEmpty, "and never past it")
    }

    /// A connection still connecting counts by its queue: clients arriving during its handshake share it.
    func testClientsArrivingDuringAHandshakeShareTheConnection() {
        let t = PoolHarness(settings(cap: 8))
        guard let h = use(t.acquire(1)) else { return }
        XCTAssertEqual(t.pool.connection(h)?.phase, .connecting)
        for c in 2...20 {
            t.pending[h, default: 0] += 1
            XCTAssertEqual(use(t.acquire(c)), h)
        }
        XCTAssertEqual(t.pool.count, 1)
    }

    /// At most cap - 2 leases (one data connection stays shared, one slot is the control connection's); waiters are
    /// served in arrival order, each as soon as a lease is back.
    func testLeasesAreCappedAndServedInOrder() {
        let t = PoolHarness(settings(cap: 4))
        XCTAssertEqual(t.pool.leaseLimit, 2)
        XCTAssertEqual(PoolHarness(settings(cap: 2)).pool.leaseLimit, 1, "no control slot below a cap of 3")
        guard let a = use(t.lease(1)), let b = use(t.lease(2)) else { return }
        XCTAssertEqual(t.lease(3), .wait)
        XCTAssertEqual(t.lease(4), .wait)
        XCTAssertEqual(t.pool.leasedCount, 2)
        XCTAssertEqual(t.pool.waiters.ordered.map(\.id), [3, 4])
        t.pool.endLease(a, .clean, now: t.now)
        XCTAssertEqual(t.pool.connection(a)?.role, .shared, "a clean lease rejoins the shared set")
        XCTAssertTrue(t.drain().contains(.grant(client: 3, .lease(proto: 2, db: 0))), "the first waiter is served")
        guard let l3 = t.pool.lease(of: 3) else { return XCTFail("waiter 3 holds a lease") }
        XCTAssertNotEqual(l3, a, "one connection always stays shared: 3 got a new one")
        XCTAssertNil(t.pool.lease(of: 4), "4 still waits")
        XCTAssertEqual(use(t.lease(3)), l3, "asking again finds it")
        t.pool.endLease(b, .close, now: t.now)
        let after = t.drain()
        XCTAssertTrue(after.contains(.close(b, reason: "lease ended with state or commands in flight")), "\(after)")
        t.pool.closed(b, now: t.now)
        XCTAssertTrue(t.drain().contains(.grant(client: 4, .lease(proto: 2, db: 0))), "a slot freed by a close goes to the next")
        XCTAssertNotNil(t.pool.lease(of: 4))
        XCTAssertLessThanOrEqual(t.pool.leasedCount, 2)
    }

    /// From a cap of 6 one lease slot is kept for the first subscriber connection: clients' leases stop one short,
    /// so a SUBSCRIBE gets its connection at once while every client lease is held; a second hub competes as usual.
    func testASubscriberConnectionIsNeverStarvedByLeases() {
        XCTAssertEqual(PoolHarness(settings(cap: 5)).pool.hubReserve, 0)
        let t = PoolHarness(settings(cap: 6))
        XCTAssertEqual(t.pool.leaseLimit, 4)
        XCTAssertEqual(t.pool.hubReserve, 1)
        for c in 1...3 { XCTAssertNotNil(use(t.lease(c)), "client \(c)") }
        XCTAssertEqual(t.lease(4), .wait, "the fourth lease slot is the subscriber's")
        XCTAssertEqual(t.pool.clientLeaseCount, 3)
        let sub = t.pool.subscriber(client: 9, proto: 2, now: t.now)
        XCTAssertNotEqual(sub, .wait, "the subscriber connection is not starved")
        XCTAssertEqual(t.pool.subscriber(client: 10, proto: 3, now: t.now), .wait, "a second hub waits for a lease to end")
        XCTAssertLessThanOrEqual(t.pool.count, 6)
    }

    func testNoLeaseWithACapOfOne() {
        let t = PoolHarness(settings(cap: 1))
        guard case .fail(let why) = t.lease(1) else { return XCTFail() }
        XCTAssertTrue(why.contains("RESPOOL_MAX_SERVER_CONNECTIONS=1"), why)
    }

    /// A client that leaves gives its lease back (closed: its state is unknown) and stops waiting.
    func testAGoneClientHoldsNothing() {
        let t = PoolHarness(settings(cap: 2))
        guard let a = use(t.lease(1)) else { return }
        XCTAssertEqual(t.lease(2), .wait)
        t.pool.clientGone(2, now: t.now)
        XCTAssertTrue(t.pool.waiters.isEmpty)
        t.pool.clientGone(1, now: t.now)
        XCTAssertTrue(t.drain().contains(.close(a, reason: "lease ended with state or commands in flight")))
        XCTAssertNil(t.pool.lease(of: 1))
    }

    /// A connection opened for a waiter that left before it was opened is not leased to nobody: it is shared.
    func testConnectionOpenedForAWaiterThatLeftIsShared() {
        let t = PoolHarness(settings(cap: 4))
        guard let a = use(t.lease(1)), use(t.lease(2)) != nil else { return }
        XCTAssertEqual(t.lease(3), .wait)
        t.pool.endLease(a, .close, now: t.now)
        var opened: PoolState.Opening?
        while let act = t.pool.next() {
            if case .close(let h, _) = act { t.pool.closed(h, now: t.now) }
            if case .open(let o) = act, o.role != .shared { opened = o }
        }
        guard let o = opened else { return XCTFail("a connection is opened for waiter 3") }
        XCTAssertEqual(o.role, .leased(client: 3))
        t.pool.clientGone(3, now: t.now)
        let h = t.handle()
        t.pool.opened(h, o, now: t.now)
        XCTAssertEqual(t.pool.connection(h)?.role, .shared)
    }

    /// A connection idle past RESPOOL_SERVER_CHECK_AFTER is PINGed before reuse; the client waits for the PONG.
    func testIdleConnectionIsCheckedBeforeReuse() {
        let t = PoolHarness(settings(cap: 2))
        guard let h = use(t.acquire(1)) else { return }
        t.readyAll()
        t.now += 31
        XCTAssertEqual(t.acquire(2), .wait)
        XCTAssertTrue(t.actions.contains(.ping(h, beforeReuse: true)))
        t.pool.checked(h, now: t.now)
        XCTAssertTrue(t.drain().contains(.grant(client: 2, .shared(proto: 2, db: 0))))
        XCTAssertEqual(use(t.acquire(2)), h, "asked again, it gets the checked connection without another check")
    }

    /// While the server is unreachable, waiters fail at once and the next connect backs off (100 ms doubling, 5 s top).
    func testBackOffAndUnreachableServer() {
        let t = PoolHarness(settings(cap: 3))
        t.pool.jitter = 1
        guard let h = use(t.acquire(1)) else { return }
        t.pool.wait(client: 2, for: .handshake, now: t.now)
        XCTAssertTrue(t.drain().isEmpty, "2 waits for the first handshake")
        t.pool.failed(h, reason: "connection refused", whileConnecting: true, now: t.now)
        let acts = t.drain()
        XCTAssertTrue(acts.contains(.failWaiter(client: 2, .unavailable("ERR upstream unavailable: connection refused (retrying)"))), "\(acts)")
        XCTAssertTrue(acts.contains { if case .retry(let after) = $0 { return abs(after - 0.1) < 1e-9 } else { return false } }, "\(acts)")
        XCTAssertEqual(t.pool.retryAt, t.now + 0.1, accuracy: 1e-9)
        guard case .fail(let why) = t.acquire(3) else { return XCTFail("no connect during the back-off") }
        XCTAssertEqual(why, "ERR upstream unavailable: connection refused (retrying)")
        for (k, expected) in [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0].enumerated() {
            t.now = t.pool.retryAt
            t.pool.keepWarm(now: t.now)
            var failedAgain = false
            while let a = t.pool.next() {
                if case .open(let o) = a {
                    t.pool.openFailed(o, reason: "connection refused", now: t.now)
                    failedAgain = true
                }
            }
            XCTAssertTrue(failedAgain, "attempt \(k)")
            XCTAssertEqual(t.pool.retryAt - t.now, expected, accuracy: 1e-9, "attempt \(k)")
        }
    }

    /// Waiters time out at RESPOOL_WAIT_TIMEOUT, naming the cap.
    func testWaitersTimeOut() {
        let t = PoolHarness(settings(cap: 2))
        _ = use(t.lease(1))
        XCTAssertEqual(t.lease(2), .wait)
        XCTAssertEqual(t.pool.nextWaitDeadline, t.now + 5)
        t.pool.expireWaiters(now: t.now + 4.9)
        XCTAssertTrue(t.drain().isEmpty)
        t.pool.expireWaiters(now: t.now + 5)
        XCTAssertEqual(t.drain(), [.failWaiter(client: 2, .timedOut(cap: 2))])
        XCTAssertNil(t.pool.nextWaitDeadline)
    }

    /// The upkeep: idle ones beyond the minimum close, old idle ones are replaced, busy old ones retire, idle ones
    /// are PINGed, the minimum is kept.
    func testTick() {
        let t = PoolHarness(settings(cap: 4, min: 1))
        t.pool.keepWarm(now: t.now)
        t.drain()
        XCTAssertEqual(t.pool.count, 1, "the minimum is opened")
        let first = t.pool.connections[0].handle
        t.pending[first] = PoolState.packLimit
        _ = t.acquire(1)
        XCTAssertEqual(t.pool.count, 2, "busy: a second one was opened")
        let second = t.pool.connections[1].handle
        t.readyAll()
        t.pending[first] = 0
        t.now += 61
        t.pool.tick(now: t.now)
        let pings = t.drain()
        XCTAssertTrue(pings.contains(.ping(first, beforeReuse: false)) && pings.contains(.ping(second, beforeReuse: false)) && pings.count == 2, "keepalive: \(pings)")
        t.now += 121
        t.pool.tick(now: t.now)
        let closes = t.drain().filter { if case .close(_, "server_idle_timeout") = $0 { return true } else { return false } }
        XCTAssertEqual(closes.count, 1, "idle beyond the minimum: one closes")

        var s = settings(cap: 4)
        s.lifetime = 100
        let t2 = PoolHarness(s)
        guard let h = use(t2.acquire(1)) else { return }
        t2.readyAll()
        t2.pending[h] = 3
        t2.now += 101
        t2.pool.tick(now: t2.now)
        XCTAssertEqual(t2.pool.connection(h)?.retiring, true, "busy past its lifetime: retiring")
        XCTAssertNotEqual(t2.acquire(2), .use(h), "no new client gets a retiring connection")
        t2.pending[h] = 0
        t2.pool.becameIdle(h, now: t2.now)
        XCTAssertTrue(t2.drain().contains(.close(h, reason: "lifetime")))
    }

    /// The command table is asked for on a shared connection, never inside a lease.
    func testCommandTableOnASharedConnectionOnly() {
        let t = PoolHarness(settings(cap: 3))
        guard let l = use(t.lease(1)) else { return }
        t.pool.connected(l, now: t.now)
        XCTAssertFalse(t.drain().contains(.requestCommandTable(l)))
        guard let s = use(t.acquire(2)) else { return }
        t.pool.connected(s, now: t.now)
        XCTAssertTrue(t.drain().contains(.requestCommandTable(s)))
    }

    /// A shared connection held by a script (no reply for a tick, Pool.maintain) is passed over: new clients get
    /// another connection, or a new one, where the server answers them (-BUSY) instead of queuing them behind it.
    /// When the data slots are all taken, the stuck one is the last resort.
    func testStuckConnectionIsPassedOver() {
        let t = PoolHarness(settings(cap: 3))
        guard let a = use(t.acquire(1)) else { return }
        t.readyAll()
        t.pending[a] = 1
        t.stuck.insert(a)
        guard let b = use(t.acquire(2)) else { return }
        XCTAssertNotEqual(b, a, "a new connection instead of the stuck one")
        t.readyAll()
        t.pending[b] = 1
        t.stuck.insert(b)
        XCTAssertEqual(t.pool.count, 2, "the data path has two slots of three")
        XCTAssertEqual(t.acquire(3), .use(a), "both stuck and no room: the first stuck one (the client waits there)")
        XCTAssertEqual(t.pool.count, 2, "the control slot is not taken for data")
        t.stuck.remove(a)
        t.pending[a] = 0
        XCTAssertEqual(t.acquire(4), .use(a), "answering again: back in use")
    }

    /// SCRIPT KILL and friends get the control connection: opened in the kept slot when every data slot is taken,
    /// never chosen for data, asked again it is the same one, closed when idle past the idle timeout.
    func testControlConnection() {
        let t = PoolHarness(settings(cap: 3))
        guard let s = use(t.acquire(1)), let l = use(t.lease(2)) else { return }
        t.readyAll()
        t.pending[s] = 1
        t.stuck.insert(s)
        XCTAssertEqual(t.lease(3), .wait, "cap 3: one lease")
        guard let c = use(t.settle(t.pool.control(client: 4, now: t.now))) else { return }
        XCTAssertNotEqual(c, s)
        XCTAssertNotEqual(c, l)
        XCTAssertEqual(t.pool.connection(c)?.role, .control)
        XCTAssertEqual(t.pool.connection(c)?.db, 0)
        XCTAssertEqual(t.pool.count, 3)
        XCTAssertEqual(use(t.settle(t.pool.control(client: 5, now: t.now))), c, "one control connection")
        XCTAssertEqual(use(t.settle(t.pool.controlForRespool(now: t.now))), c, "respool's PING and INFO use it too")
        t.readyAll()
        XCTAssertEqual(t.acquire(6), .use(s), "data never goes to the control connection")
        XCTAssertEqual(t.pool.leasedCount, 1, "the control connection is not a lease")
        t.now += 121
        t.pool.tick(now: t.now)
        XCTAssertTrue(t.drain().contains(.close(c, reason: "server_idle_timeout")), "closed when idle")
    }

    /// Below a cap of 3 no slot is kept: the control connection is opened in a free slot, or an idle shared
    /// connection serves, or the request waits.
    func testControlWithoutAKeptSlot() {
        let t = PoolHarness(settings(cap: 2))
        guard let s = use(t.acquire(1)) else { return }
        t.readyAll()
        XCTAssertEqual(t.pool.reserved, 0)
        guard case .open(let o) = t.pool.control(client: 2, now: t.now) else { return XCTFail("the free slot") }
        XCTAssertEqual(o.role, .control)
        t.pool.openFailed(o, reason: "refused", now: t.now)
        t.drain()
        t.now = t.pool.retryAt
        guard let l = use(t.lease(3)) else { return }
        t.readyAll()
        XCTAssertNotEqual(l, s)
        XCTAssertEqual(t.pool.control(client: 4, now: t.now), .use(s), "an idle shared connection serves")
        t.pending[s] = 1
        XCTAssertEqual(t.pool.control(client: 5, now: t.now), .wait, "nothing free: wait")
        XCTAssertEqual(t.pool.waiters.ordered.map(\.id), [5])
        t.pool.endLease(l, .close, now: t.now)
        for a in t.drain() { if case .close(let h, _) = a { t.pool.closed(h, now: t.now) } }
        XCTAssertTrue(t.drain().contains(.grant(client: 5, .control(user: 0))), "served as soon as a slot is free")
    }

    /// Connections belong to a user (a credential): a client gets its own user's, never another's; with the cap full,
    /// an idle connection of another user is closed to make room, and the waiter is served once it is.
    func testConnectionsPerUser() {
        let t = PoolHarness(settings(cap: 2))
        guard let a = use(t.acquire(1)) else { return }
        t.readyAll()
        guard case .open(let o) = t.pool.acquire(client: 2, proto: 2, db: 0, user: 7, now: t.now) else { return XCTFail("a connection of user 7") }
        XCTAssertEqual(o.user, 7)
        let b = t.handle()
        t.pool.opened(b, o, now: t.now)
        t.readyAll()
        XCTAssertEqual(t.pool.connection(b)?.user, 7)
        XCTAssertEqual(t.acquire(3), .use(a), "user 0's client gets user 0's connection")
        XCTAssertEqual(t.settle(t.pool.acquire(client: 4, proto: 2, db: 0, user: 7, now: t.now)), .use(b))
        XCTAssertEqual(t.settle(t.pool.acquire(client: 5, proto: 2, db: 0, user: 9, now: t.now)), .wait, "cap full")
        let closes = t.actions.compactMap { if case .close(let h, _) = $0 { return h } else { return nil } }
        XCTAssertEqual(closes.count, 1, "\(t.actions)")
        guard let closed = closes.first else { return }
        XCTAssertTrue(closed == a || closed == b, "an idle connection of another user")
        t.pool.closed(closed, now: t.now)
        XCTAssertTrue(t.drain().contains { if case .open(let o) = $0 { return o.user == 9 } else { return false } }, "opened for user 9")
        XCTAssertTrue(t.pool.connections.contains { $0.user == 9 })
        t.pool.userRefused(9, error: "WRONGPASS invalid username-password pair or user is disabled.")
        XCTAssertTrue(t.drain().isEmpty, "nobody waits for user 9 any more (its connection was opened for client 5)")
    }
}
