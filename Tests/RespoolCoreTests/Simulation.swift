// A simulated respool without sockets, for the model-based tests: clients with ClientSession, the pool with
// PoolState, upstream connections as FIFOs of who gets each reply, and a driver that carries out their decisions the
// way ClientConnection, UpstreamConnection and Pool do (simplified: no bytes, a reply is the tag of the request it
// answers). Random events drive it; the checks compare what each client received with a deliberately simple
// reference model of what it must receive.
import RESP
@testable import RespoolCore
import TestKit
import XCTest

/// A command as the simulated client sends it.
struct SimCommand: CustomStringConvertible {
    let args: [String]
    /// A blocking command: its reply comes only after an "unblock" event.
    var blocks: Bool { ["BLPOP", "BRPOP"].contains(args[0]) || (args[0] == "XREAD" && args.contains("BLOCK")) }
    var request: Request { Request(args: args.map { Array($0.utf8) }) }
    var description: String { args.joined(separator: " ") }
}

final class SimClient {
    let id: Int
    var session: ClientSession
    /// Sent and not yet processed (the driver's stalled input): the request first, with its tag.
    var input: [(tag: Int, command: SimCommand)] = []
    /// Tags in the order the client must receive replies (the reference model's expectation), and what came.
    var expected: [Int] = []
    var received: [Int] = []
    var sent: [Int: SimCommand] = [:]
    /// The reference model's reply mode (CLIENT REPLY ON/OFF/SKIP), independent of the session's, and whether the
    /// client is between MULTI and EXEC/DISCARD (where CLIENT REPLY is queued on the server, not applied).
    var modelReplyMode = "on"
    var modelInMulti = false
    /// A SUBSCRIBE was sent since the last RESET or UNSUBSCRIBE: the client may be in RESP2 subscribed mode, where
    /// CLIENT REPLY is refused (the generator then sends none, so the model need not know whether it succeeded).
    var modelMaySubscribe = false
    /// The pool failed what the stalled request waits for.
    var waitFailure: PoolState.Failure?
    var closed = false
    var closing = false
    /// Whether the client's subscriptions are waiting for the simulated hub (tags of SUBSCRIBE requests).
    var hubPending: [Int] = []

    init(id: Int, context: SessionContext) {
        self.id = id
        session = ClientSession(id: id, context: context)
    }

    /// The reference model: does this command get a reply? (CLIENT REPLY OFF: none until ON; SKIP: not this one
    /// nor the next; RESET turns replies back on and is answered.)
    func modelExpectsReply(_ c: SimCommand) -> Bool {
        let a = c.args.map { $0.lowercased() }
        let inMulti = modelInMulti
        if a[0] == "multi" { modelInMulti = true }
        if a[0] == "exec" || a[0] == "discard" || a[0] == "reset" { modelInMulti = false }
        if a[0] == "subscribe" { modelMaySubscribe = true }
        if a[0] == "reset" || a[0] == "unsubscribe" { modelMaySubscribe = false }
        if a[0] == "client" && a.count == 3 && a[1] == "reply" && !inMulti {
            switch a[2] {
            case "on": modelReplyMode = "on"; return true
            case "off": modelReplyMode = "off"; return false
            case "skip":
                if modelReplyMode == "on" { modelReplyMode = "skip" }
                return false
            default: break
            }
        }
        if a[0] == "reset" {
            modelReplyMode = "on"
            return true
        }
        switch modelReplyMode {
        case "off": return false
        case "skip":
            modelReplyMode = "on"
            return false
        default: return true
        }
    }
}

final class SimUpstream {
    enum Entry {
        case client(Int, tag: Int, blocks: Bool)
        case silent(Int, tag: Int, blocks: Bool)
        case scan(Int, tag: Int?, stepsLeft: Int)
        case check, keepalive, retarget, commandTable
    }
    let id: Int
    let handle: ConnHandle
    var ready = false
    var fifo: [Entry] = []
    var unblocked = false
    var closed = false
    /// Held by a script or a slow command (what Pool.maintain would report after a tick without replies).
    var stuck = false
    init(id: Int) {
        self.id = id
        handle = ConnHandle(UnsafeMutableRawPointer(bitPattern: UInt(id) << 4)!)
    }
}

final class Simulation {
    var rng: SeededRandom
    var now = 1000.0
    var context: SessionContext
    var pool: PoolState!
    var clients: [Int: SimClient] = [:]
    var upstreams: [ConnHandle: SimUpstream] = [:]
    var resumes: [Int] = []
    var nextUpstream = 1
    /// The next request's tag (unique across clients).
    var nextTag = 1
    var retryAt: Double?
    /// Every problem found, with the events that led to it.
    var failures: [String] = []
    var log: [String] = []
    let cap: Int

    init(seed: UInt64, cap: Int, clients n: Int, keys: KeysMode = .scan) {
        rng = SeededRandom(seed: seed)
        self.cap = cap
        context = SessionContext(clientPassword: nil, databases: 4, defaultDB: 0, keysMode: keys)
        let settings = PoolSettings(cap: cap, minConnections: 1, idleTimeout: 30, lifetime: 200, keepalive: 20, checkAfter: 15,
                                    waitTimeout: 5, defaultDB: 0)
        pool = PoolState(settings: settings) { [unowned self] h in
            let u = self.upstreams[h]!
            return ConnLoad(pending: u.fifo.count, busy: false, stuck: u.stuck)
        }
        for id in 1...n { clients[id] = SimClient(id: id, context: context) }
        pool.keepWarm(now: now)
        applyPoolActions()
    }

    /// Keeps every event (for debugging a seed), not only the last ones.
    var keepFullLog = false

    func note(_ s: String) {
        log.append(s)
        if log.count > 60 && !keepFullLog { log.removeFirst() }
    }

    func fail(_ s: String) {
        if failures.count < 5 { failures.append("\(s)\nlast events:\n  " + log.suffix(25).joined(separator: "\n  ")) }
    }

    // MARK: the pool's actions

    func applyPoolActions() {
        while let a = pool.next() {
            switch a {
            case .open(let o):
                if rng.chance(0.1) {
                    note("open \(o) failed")
                    pool.openFailed(o, reason: "connection refused", now: now)
                } else {
                    let u = SimUpstream(id: nextUpstream)
                    nextUpstream += 1
                    upstreams[u.handle] = u
                    note("opened u\(u.id) \(o)")
                    pool.opened(u.handle, o, now: now)
                    if case .subscriber(let proto) = o.role { attachHub(proto, user: o.user) }
                }
            case .close(let h, let reason):
                note("close u\(upstreams[h]!.id) \(reason)")
                closeUpstream(h, failed: false)
            case .ping(let h, let beforeReuse):
                upstreams[h]!.fifo.append(beforeReuse ? .check : .keepalive)
            case .retarget(let h, _, _):
                upstreams[h]!.fifo.append(.retarget)
            case .grant(let client, let need):
                note("grant c\(client) \(need)")
                if case .subscriber(let proto, let user) = need { attachHub(proto, user: user) }
                resumes.append(client)
            case .failWaiter(let client, let failure):
                note("failWaiter c\(client) \(failure)")
                if let c = clients[client], !c.closed {
                    // Possibly before the caller of acquire has recorded the stall (as in the driver): the resume,
                    // after this step's actions, checks that the client waits.
                    c.waitFailure = failure
                    resumes.append(client)
                }
            case .leaseLost(let client):
                if let c = clients[client], !c.closed {
                    c.session.leaseLost()
                    if c.session.isClosing { c.closing = true; finishClosingIfDone(c) }
                }
            case .subscriberLost(let proto, let user):
                context.subscriberReady.remove(SessionContext.hubKey(proto: proto, user: user))
                context.subscriberConnected.remove(SessionContext.hubKey(proto: proto, user: user))
                for c in clients.values where !c.closed && c.session.proto == proto && c.session.user == user && c.session.isSubscribed {
                    c.session.subscriberLost()
                    closeClient(c, reason: "upstream_lost_during_subscription")
                }
            case .requestCommandTable(let h):
                upstreams[h]!.fifo.append(.commandTable)
            case .retry(let after):
                retryAt = now + after
            }
        }
    }

    /// The simulated hub's connection is connected as soon as it is attached.
    func attachHub(_ proto: Int, user: Int) {
        context.subscriberReady.insert(SessionContext.hubKey(proto: proto, user: user))
        context.subscriberConnected.insert(SessionContext.hubKey(proto: proto, user: user))
    }

    /// Answers every request still on `h` with an error (they are replies too) and tells the pool.
    func closeUpstream(_ h: ConnHandle, failed: Bool, whileConnecting: Bool = false) {
        guard let u = upstreams[h], !u.closed else { return }
        u.closed = true
        let entries = u.fifo
        u.fifo = []
        for e in entries {
            switch e {
            case .client(let id, let tag, _): deliver(id, tag: tag)
            case .silent(let id, _, _): deliver(id, tag: nil)
            case .scan(let id, let tag, _):
                if let c = clients[id] { c.session.scanFinished() }
                deliver(id, tag: tag)
            default: break
            }
        }
        if failed {
            pool.failed(h, reason: "connection lost", whileConnecting: whileConnecting, now: now)
        } else {
            pool.closed(h, now: now)
        }
        upstreams[h] = nil
        applyPoolActions()
    }

    // MARK: replies

    /// One reply (nil: a silent one) for client `id`.
    func deliver(_ id: Int, tag: Int?) {
        guard let c = clients[id] else { return }
        if let tag, !c.closed { c.received.append(tag) }
        if keepFullLog { note("  reply c\(id) #\(tag.map(String.init) ?? "-")") }
        let after = c.session.replied()
        if c.session.inFlight < 0 { fail("c\(id) has \(c.session.inFlight) in flight") }
        if c.session.inFlight == 0 { applyEffects(c) }
        if c.closed { return }
        switch after {
        case .resume: resumes.append(id)
        case .finishClosing: finishClosingIfDone(c)
        case .nothing: break
        }
    }

    /// A reply for a request respool answered itself.
    func answer(_ c: SimClient, tag: Int, bytes: [UInt8]) {
        if !bytes.isEmpty && !c.closed { c.received.append(tag) }
        if keepFullLog { note("  answer c\(c.id) #\(tag)\(bytes.isEmpty ? " (silent)" : "")") }
    }

    func finishClosingIfDone(_ c: SimClient) {
        if case .closing(let reason, _) = c.session.lifecycle, c.session.inFlight == 0 {
            _ = c.session.takeLastReply()
            closeClient(c, reason: reason)
        }
    }

    func applyEffects(_ c: SimClient) {
        while let e = c.session.nextEffect() {
            switch e {
            case .endLease(let h, let end):
                // A reset lease gets RESET and the handshake queued before anyone else's commands.
                if end == .reset { upstreams[h]?.fifo += [.retarget, .retarget] }
                pool.endLease(h, end, now: now)
                applyPoolActions()
            case .pinned, .trackingEnded:
                break
            case .retargetLease(let h, let proto):
                upstreams[h]?.fifo.append(.retarget)
                pool.switched(h, proto: proto, db: pool.connection(h)?.db ?? 0)
            case .nameLease(let h):
                upstreams[h]?.fifo.append(.retarget)
            case .unsubscribeAll:
                releaseHubsIfUnused()
            }
        }
    }

    /// The hub gives its connection back when nobody subscribes any more.
    func releaseHubsIfUnused() {
        for proto in [2, 3] { for user in 0...2 where context.subscriberReady.contains(SessionContext.hubKey(proto: proto, user: user)) {
            let anyone = clients.values.contains { !$0.closed && $0.session.proto == proto && $0.session.user == user && $0.session.isSubscribed }
            if !anyone, let c = pool.subscriberConnection(proto: proto, user: user) {
                context.subscriberReady.remove(SessionContext.hubKey(proto: proto, user: user))
                context.subscriberConnected.remove(SessionContext.hubKey(proto: proto, user: user))
                pool.endLease(c.handle, .close, now: now)
                applyPoolActions()
            }
        } }
    }

    func closeClient(_ c: SimClient, reason: String) {
        guard !c.closed else { return }
        note("close c\(c.id) \(reason)")
        c.closed = true
        c.input = []
        c.session.close(reason: reason)
        applyEffects(c)
        pool.clientGone(c.id, now: now)
        applyPoolActions()
        releaseHubsIfUnused()
    }

    // MARK: the client side (as ClientConnection)

    /// Processes the client's input until it is empty, stalled or closing.
    func process(_ c: SimClient) {
        while !c.closed, !c.session.isClosing, let (tag, command) = c.input.first {
            if !handle(c, tag: tag, command) { return }
            c.input.removeFirst()
        }
    }

    /// One request; false when it must wait. A stalled request is decided again (`slow`), as ClientConnection.resume
    /// does: the fast path is for requests read fresh.
    func handle(_ c: SimClient, tag: Int, _ command: SimCommand, slow: Bool = false) -> Bool {
        let r = command.request
        if !slow, c.session.fastPath, r.route == .forward {
            if c.session.upstream == nil {
                switch settle(pool.acquire(client: c.id, proto: c.session.proto, db: c.session.db, now: now)) {
                case .use(let h): c.session.pinned(h)
                case .wait:
                    c.session.waitFor(.shared(proto: c.session.proto, db: c.session.db))
                    return false
                case .fail:
                    answer(c, tag: tag, bytes: [1])
                    return true
                case .open: fail("settle returned open")
                }
            }
            upstreams[c.session.upstream!]!.fifo.append(.client(c.id, tag: tag, blocks: false))
            c.session.forwardedFast()
            return true
        }
        while true {
            let d = c.session.decide(r, context: context)
            applyEffects(c)
            switch d {
            case .forward(let silent):
                guard let u = c.session.upstream.flatMap({ upstreams[$0] }) else {
                    fail("c\(c.id) forwards \(command) without a live upstream")
                    return true
                }
                u.fifo.append(silent ? .silent(c.id, tag: tag, blocks: command.blocks) : .client(c.id, tag: tag, blocks: command.blocks))
                return true
            case .acquire(let need):
                let a: PoolState.Answer
                switch need {
                case .shared(let proto, let db, let user):
                    a = settle(pool.acquire(client: c.id, proto: proto, db: db, user: user, now: now))
                    if case .use(let h) = a { c.session.pinned(h) }
                case .lease(let proto, let db, let user):
                    a = settle(pool.lease(client: c.id, proto: proto, db: db, user: user, now: now))
                    if case .use(let h) = a {
                        c.session.leased(h)
                        applyEffects(c)
                    }
                case .subscriber(let proto, let user):
                    a = settle(pool.subscriber(client: c.id, proto: proto, user: user, now: now))
                    if case .use = a { attachHub(proto, user: user) }
                case .handshake:
                    pool.wait(client: c.id, for: .handshake, now: now)
                    applyPoolActions()
                    return false
                case .control(let user):
                    a = settle(pool.control(client: c.id, user: user, now: now))
                    if case .use(let h) = a { c.session.pinned(h) }
                }
                switch a {
                case .use: continue
                case .wait: return false
                case .fail(let why):
                    answer(c, tag: tag, bytes: c.session.couldNotAcquire(need, message: why, command: r.name))
                    return true
                case .open: fail("settle returned open")
                }
            case .wait:
                return false
            case .reply(let bytes, _):
                answer(c, tag: tag, bytes: bytes)
                return true
            case .subscribe(_, let added, let confirmation):
                if added.isEmpty || rng.chance(0.4) {
                    answer(c, tag: tag, bytes: confirmation)
                } else {
                    c.session.subscriptionPending()
                    c.hubPending.append(confirmation.isEmpty ? -tag : tag)
                }
                return true
            case .unsubscribe(_, _, let reply):
                answer(c, tag: tag, bytes: reply)
                releaseHubsIfUnused()
                return true
            case .scan(_, let silent):
                upstreams[c.session.upstream!]!.fifo.append(.scan(c.id, tag: silent ? nil : tag, stepsLeft: rng.int(1...3)))
                return true
            case .clientCommand(let silent):
                answer(c, tag: tag, bytes: silent ? [] : [1])
                return true
            case .verify(let user, _):
                // The simulated server accepts users u0, u1 and u2 (u0 is the URL's), refuses anyone else.
                let name = user.map { String(decoding: $0, as: UTF8.self) } ?? "default"
                if let n = ["u0", "u1", "u2"].firstIndex(of: name) {
                    c.session.authChecked(.verified(user: n))
                } else {
                    c.session.authChecked(.refused(Array("-WRONGPASS invalid username-password pair or user is disabled.\r\n".utf8)))
                }
                continue
            }
        }
    }

    /// Opens what an answer asks for (as Pool.settle).
    func settle(_ a: PoolState.Answer) -> PoolState.Answer {
        var answer = a
        if case .open(let o) = a {
            if rng.chance(0.1) {
                pool.openFailed(o, reason: "connection refused", now: now)
                answer = .fail(pool.unavailableError)
            } else {
                let u = SimUpstream(id: nextUpstream)
                nextUpstream += 1
                upstreams[u.handle] = u
                pool.opened(u.handle, o, now: now)
                answer = .use(u.handle)
            }
        }
        applyPoolActions()
        return answer
    }

    /// A stalled client's request goes on (or is answered with the pool's failure), then the rest of its input.
    func resume(_ c: SimClient) {
        guard !c.closed, let (tag, command) = c.input.first else { return }
        if let f = c.waitFailure {
            c.waitFailure = nil
            guard case .pool(let need) = c.session.stall else { return fail("c\(c.id) failed while not waiting") }
            let message: String
            switch f {
            case .timedOut: message = "ERR no upstream connection free"
            case .unavailable(let text): message = text
            }
            answer(c, tag: tag, bytes: c.session.couldNotAcquire(need, message: message, command: command.request.name))
            c.input.removeFirst()
        } else if c.session.stall == .none {
            // Resumed for nothing (a grant after its request went on another way): nothing to do.
        } else if !handle(c, tag: tag, command, slow: true) {
            return
        } else {
            c.input.removeFirst()
        }
        process(c)
    }

    func afterIteration() {
        while !resumes.isEmpty {
            let r = resumes
            resumes.removeAll()
            for id in r { if let c = clients[id] { resume(c) } }
        }
    }
}
