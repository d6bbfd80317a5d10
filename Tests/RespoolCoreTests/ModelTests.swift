// Model-based tests: thousands of random interleavings of commands of many clients (pipelined, transactions, WATCH,
// blocking commands, pub/sub, KEYS by SCAN, HELLO, SELECT, CLIENT REPLY, RESET, QUIT), replies, blocked calls coming
// back, connection failures, failed connects, clients vanishing and time passing (wait timeouts, idle closes,
// keepalives), applied to ClientSession and PoolState through the simulated driver. After every step: the cap and the
// lease limit hold, no lease is held by a client that is gone, the pool's waiters are exactly the clients waiting for
// it, and every client has received replies in the order it sent its commands, each at most once. At the end, with
// everything answered and time past every deadline, every open client has its replies: none is left silent.
// RESPOOL_MODEL_SEEDS / RESPOOL_MODEL_STEPS run more (a failure names its seed: keep it in `regressions`).
import Foundation
import RESP
@testable import RespoolCore
import TestKit
import XCTest

final class ModelTests: XCTestCase {
    static let seeds = max(1, Int(ProcessInfo.processInfo.environment["RESPOOL_MODEL_SEEDS"] ?? "") ?? 300)
    static let steps = max(1, Int(ProcessInfo.processInfo.environment["RESPOOL_MODEL_STEPS"] ?? "") ?? 300)

    /// Seeds that once found a bug (kept as regular cases).
    static let regressions: [UInt64] = []

    func randomCommand(_ rng: inout SeededRandom, _ c: SimClient) -> [SimCommand] {
        func one(_ a: String...) -> [SimCommand] { [SimCommand(args: a)] }
        let k = "k\(rng.int(0...5))"
        switch rng.int(0...99) {
        case 0..<35: return one("GET", k)
        case 35..<40: return one("SET", k, "v")
        case 40..<43: return one("PING")
        case 43..<46: return one("CLIENT", "ID")
        case 46..<48: return one("CLIENT", "SETNAME", "n\(rng.int(0...3))")
        case 48..<55:
            var t = [SimCommand(args: ["MULTI"])]
            for _ in 0..<rng.int(0...3) { t.append(SimCommand(args: ["INCR", k])) }
            t.append(SimCommand(args: [rng.chance(0.8) ? "EXEC" : "DISCARD"]))
            return t
        case 55..<58: return one("WATCH", k)
        case 58..<60: return one("UNWATCH")
        case 60..<64: return one("BLPOP", k, "0")
        case 64..<65: return one("XREAD", "BLOCK", "0", "STREAMS", k, "$")
        case 65..<68: return one("SUBSCRIBE", "ch\(rng.int(0...2))")
        case 68..<70: return one("UNSUBSCRIBE")
        case 70..<74: return one("KEYS", "k*")
        case 74..<76: return one("HELLO", rng.chance(0.5) ? "3" : "2")
        case 76..<78: return one("SELECT", "\(rng.int(0...1))")
        case 78..<82 where c.modelMaySubscribe: return one("GET", k)
        case 78..<79: return one("CLIENT", "REPLY", "OFF")
        case 79..<81: return one("CLIENT", "REPLY", "ON")
        case 81..<82: return one("CLIENT", "REPLY", "SKIP")
        case 82..<83: return one("RESET")
        case 83..<84: return rng.chance(0.3) ? one("QUIT") : one("ECHO", "x")
        case 84..<86: return one("CLIENT", "LIST")
        case 86..<88: return one("MONITOR")
        case 88..<90: return one("EXEC")
        case 90..<91: return rng.chance(0.5) ? one("SCRIPT", "KILL") : one("FUNCTION", "KILL")
        case 91..<92: return one("SCRIPT", "FLUSH")
        case 93..<95: return one("AUTH", "u\(rng.int(0...3))", "pw")
        case 92..<93 where !c.modelMaySubscribe:
            switch rng.int(0...3) {
            case 0: return one("CLIENT", "TRACKING", "ON")
            case 1: return one("CLIENT", "TRACKING", "ON", "REDIRECT", "\(rng.int(1...4))")
            case 2: return one("CLIENT", "TRACKING", "OFF")
            default: return one("CLIENT", "UNBLOCK", "\(rng.int(1...4))")
            }
        default: return one("MGET", k, "k9")
        }
    }

    /// The client writes `commands` (pipelined): the reference model records which replies it must get.
    func send(_ sim: Simulation, _ c: SimClient, _ commands: [SimCommand]) {
        let wasIdle = c.input.isEmpty
        for command in commands {
            // Tags are unique across clients: a reply delivered to the wrong client cannot match its expectation.
            let tag = sim.nextTag
            sim.nextTag += 1
            c.sent[tag] = command
            if c.modelExpectsReply(command) { c.expected.append(tag) }
            c.input.append((tag, command))
        }
        sim.note("c\(c.id) sends \(commands.map(\.description).joined(separator: "; "))")
        if wasIdle && c.session.stall == .none { sim.process(c) }
    }

    /// One random event.
    func step(_ sim: Simulation) {
        var rng = sim.rng
        defer { sim.rng = rng }
        let open = sim.clients.values.filter { !$0.closed && !$0.session.isClosing }.sorted { $0.id < $1.id }
        let ups = sim.upstreams.values.filter { !$0.closed }.sorted { $0.id < $1.id }
        switch rng.int(0...99) {
        case 0..<35:
            guard let c = open.randomElement(using: &rng) else { return }
            var commands: [SimCommand] = []
            for _ in 0..<rng.int(1...4) {
                let more = randomCommand(&rng, c)
                for m in more where m.args[0] == "SUBSCRIBE" { _ = m; c.modelMaySubscribe = true }
                commands += more
            }
            sim.rng = rng
            send(sim, c, commands)
            rng = sim.rng
        case 35..<70:
            // A ready connection answers its oldest request (a blocking one waits for an unblock).
            guard let u = ups.filter({ $0.ready && !$0.fifo.isEmpty }).randomElement(using: &rng) else { return }
            if case .client(_, _, true) = u.fifo[0] { return }
            if case .silent(_, _, true) = u.fifo[0] { return }
            sim.rng = rng
            reply(sim, u)
            rng = sim.rng
        case 70..<74:
            guard let u = ups.filter({ $0.ready && !$0.fifo.isEmpty }).randomElement(using: &rng) else { return }
            sim.rng = rng
            reply(sim, u)
            rng = sim.rng
        case 74..<82:
            guard let u = ups.filter({ !$0.ready }).randomElement(using: &rng) else { return }
            u.ready = true
            if sim.context.serverInfo == nil { sim.context.serverInfo = ServerInfo() }
            sim.note("u\(u.id) ready")
            sim.pool.connected(u.handle, now: sim.now)
            sim.applyPoolActions()
        case 82..<84:
            guard let u = ups.randomElement(using: &rng) else { return }
            sim.note("u\(u.id) fails")
            sim.rng = rng
            sim.closeUpstream(u.handle, failed: true, whileConnecting: !u.ready)
            rng = sim.rng
        case 84..<86:
            guard let c = open.randomElement(using: &rng) else { return }
            sim.rng = rng
            sim.closeClient(c, reason: "client_closed")
            rng = sim.rng
        case 86..<92:
            guard let c = sim.clients.values.filter({ !$0.closed && !$0.hubPending.isEmpty }).randomElement(using: &rng) else { return }
            let tag = c.hubPending.removeFirst()
            sim.note("hub answers c\(c.id) #\(tag)")
            if tag > 0 { c.received.append(tag) }   // negative: a confirmation under CLIENT REPLY OFF/SKIP
            let resume = rng.chance(0.8) ? c.session.subscriptionConfirmed()
                : c.session.subscriptionRefused(space: .channel, added: c.session.subscriptions[0].sorted { $0.lexicographicallyPrecedes($1) })
            if resume { sim.resumes.append(c.id) }
        case 92..<94:
            // A script starts or stops holding a connection (Pool.maintain's stuck flag).
            guard let u = ups.filter({ $0.ready }).randomElement(using: &rng) else { return }
            u.stuck.toggle()
            sim.note("u\(u.id) \(u.stuck ? "stuck" : "answers again")")
        default:
            sim.now += Double(rng.int(1...70)) / 10
            sim.note("now +\(sim.now)")
            sim.rng = rng
            advanceTime(sim)
            rng = sim.rng
        }
    }

    func advanceTime(_ sim: Simulation) {
        sim.pool.expireWaiters(now: sim.now)
        sim.applyPoolActions()
        sim.pool.tick(now: sim.now)
        sim.applyPoolActions()
        if let at = sim.retryAt, at <= sim.now {
            sim.retryAt = nil
            sim.pool.keepWarm(now: sim.now)
            sim.applyPoolActions()
        }
    }

    func reply(_ sim: Simulation, _ u: SimUpstream) {
        let e = u.fifo.removeFirst()
        switch e {
        case .client(let id, let tag, _): sim.deliver(id, tag: tag)
        case .silent(let id, _, _): sim.deliver(id, tag: nil)
        case .scan(let id, let tag, let left):
            if left > 1, let c = sim.clients[id], !c.closed {
                u.fifo.append(.scan(id, tag: tag, stepsLeft: left - 1))
            } else {
                sim.clients[id]?.session.scanFinished()
                sim.deliver(id, tag: tag)
            }
        case .check:
            sim.pool.checked(u.handle, now: sim.now)
            sim.applyPoolActions()
        case .keepalive, .retarget, .commandTable: break
        }
        if !u.closed && u.fifo.isEmpty {
            sim.pool.becameIdle(u.handle, now: sim.now)
            sim.applyPoolActions()
        }
    }

    /// The invariants, after every step.
    func check(_ sim: Simulation, _ when: String) {
        let pool = sim.pool!
        if pool.connections.count + pool.openings.count > sim.cap {
            sim.fail("\(when): \(pool.connections.count) connections + \(pool.openings.count) opening exceed the cap \(sim.cap)")
        }
        let leased = pool.connections.filter { $0.role.isLease }.count + pool.openings.filter { $0.role.isLease }.count
        if sim.cap >= 2 && leased > pool.leaseLimit { sim.fail("\(when): \(leased) leases with a cap of \(sim.cap)") }
        if sim.cap >= 2 && pool.clientLeaseCount > pool.leaseLimit - pool.hubReserve {
            sim.fail("\(when): \(pool.clientLeaseCount) client leases with a cap of \(sim.cap): the subscriber slot was taken")
        }
        // One control connection at most, and the data path never takes the slot kept for it.
        let control = pool.connections.filter { $0.role == .control }.count + pool.openings.filter { $0.role == .control }.count
        let data = pool.connections.count + pool.openings.count - control
        if control > 1 { sim.fail("\(when): \(control) control connections") }
        if data > sim.cap - pool.reserved { sim.fail("\(when): \(data) data connections take the control slot (cap \(sim.cap))") }
        for conn in pool.connections {
            guard case .leased(let id) = conn.role else { continue }
            guard let c = sim.clients[id], !c.closed else {
                sim.fail("\(when): u\(sim.upstreams[conn.handle]?.id ?? -1) is leased to c\(id), which is gone")
                continue
            }
            if c.session.lease != conn.handle { sim.fail("\(when): the pool leases a connection to c\(id), whose session holds \(String(describing: c.session.lease))") }
        }
        for (id, w) in pool.waiters.ordered {
            guard let c = sim.clients[id], !c.closed else { sim.fail("\(when): c\(id) waits for the pool but is gone"); continue }
            if c.session.stall != .pool(w.need) { sim.fail("\(when): c\(id) waits for \(w.need) but its session's stall is \(c.session.stall)") }
        }
        for c in sim.clients.values where !c.closed {
            if case .pool = c.session.stall, !pool.waiters.contains(c.id), c.waitFailure == nil {
                sim.fail("\(when): c\(c.id) waits for the pool (\(c.session.stall)) but is not among its waiters")
            }
            if let h = c.session.upstream, pool.connection(h) == nil {
                sim.fail("\(when): c\(c.id) is on a connection the pool no longer has")
            }
            if c.session.inFlight < 0 { sim.fail("\(when): c\(c.id) has \(c.session.inFlight) in flight") }
        }
        for c in sim.clients.values where !c.expected.starts(with: c.received) {
            sim.fail("\(when): c\(c.id) received \(c.received) but sent, in order, \(c.expected) (commands: \(c.sent.sorted { $0.key < $1.key }.map { "#\($0.key) \($0.value)" }))")
        }
    }

    /// Everything answered, every connection up, time past every deadline: every open client got every reply.
    func quiesce(_ sim: Simulation) {
        for _ in 0..<200 {
            var moved = false
            for u in sim.upstreams.values.sorted(by: { $0.id < $1.id }) where !u.closed {
                if !u.ready {
                    u.ready = true
                    if sim.context.serverInfo == nil { sim.context.serverInfo = ServerInfo() }
                    sim.pool.connected(u.handle, now: sim.now)
                    sim.applyPoolActions()
                    moved = true
                }
                while !u.closed && !u.fifo.isEmpty {
                    reply(sim, u)
                    moved = true
                }
            }
            for c in sim.clients.values.sorted(by: { $0.id < $1.id }) where !c.closed && !c.hubPending.isEmpty {
                let tag = c.hubPending.removeFirst()
                if tag > 0 { c.received.append(tag) }
                if c.session.subscriptionConfirmed() { sim.resumes.append(c.id) }
                moved = true
            }
            sim.afterIteration()
            if !moved {
                sim.now += 6
                advanceTime(sim)
                sim.afterIteration()
                if sim.upstreams.values.allSatisfy({ $0.closed || ($0.ready && $0.fifo.isEmpty) }) && sim.resumes.isEmpty
                    && sim.clients.values.allSatisfy({ $0.closed || $0.input.isEmpty }) { break }
            }
        }
        for c in sim.clients.values.sorted(by: { $0.id < $1.id }) where !c.closed && !c.session.isClosing {
            if !c.input.isEmpty {
                sim.fail("quiescent: c\(c.id) still holds \(c.input.count) requests, first #\(c.input[0].tag) \(c.input[0].command) (stall \(c.session.stall), mode \(c.session.mode), in flight \(c.session.inFlight), pubsub pending \(c.session.pubsubPending), hub pending \(c.hubPending), upstream \(String(describing: c.session.upstream)))")
            } else if c.received != c.expected {
                sim.fail("quiescent: c\(c.id) received \(c.received), expected \(c.expected)")
            }
        }
    }

    func run(seed: UInt64, cap: Int, clients: Int, steps: Int, keys: KeysMode = .scan) -> [String] {
        let sim = Simulation(seed: seed, cap: cap, clients: clients, keys: keys)
        for i in 0..<steps {
            step(sim)
            sim.afterIteration()
            check(sim, "seed \(seed) step \(i)")
            if !sim.failures.isEmpty { return sim.failures }
        }
        quiesce(sim)
        check(sim, "seed \(seed) after quiescence")
        return sim.failures
    }

    func testRandomInterleavingsKeepEveryInvariant() {
        if let text = ProcessInfo.processInfo.environment["RESPOOL_MODEL_DEBUG_SEED"], let seed = UInt64(text) {
            return debug(seed: seed)
        }
        var total = 0
        for s in 0..<Self.seeds {
            let seed = UInt64(s)
            let cap = [1, 2, 3, 4, 8][s % 5]
            let failures = run(seed: seed, cap: cap, clients: 2 + s % 6, steps: Self.steps)
            total += 1
            if let first = failures.first {
                XCTFail("seed \(seed) (cap \(cap)): \(first)")
                return
            }
        }
        XCTAssertEqual(total, Self.seeds)
    }

    /// RESPOOL_MODEL_DEBUG_SEED=<seed>: that seed alone, printing every event and each client's state after each step.
    func debug(seed: UInt64) {
        let sim = Simulation(seed: seed, cap: [1, 2, 3, 4, 8][Int(seed % 5)], clients: 2 + Int(seed % 6))
        sim.keepFullLog = true
        for i in 0..<Self.steps {
            step(sim)
            sim.afterIteration()
            check(sim, "step \(i)")
            sim.note("-- step \(i): " + sim.clients.values.sorted { $0.id < $1.id }.map { "c\($0.id) in=\($0.input.count) stall=\($0.session.stall) fl=\($0.session.inFlight)" }.joined(separator: " "))
            if !sim.failures.isEmpty { break }
        }
        if sim.failures.isEmpty { quiesce(sim) }
        print(sim.log.joined(separator: "\n"))
        XCTAssertTrue(sim.failures.isEmpty, sim.failures.first ?? "")
    }

    func testRegressionSeeds() {
        for seed in Self.regressions {
            let failures = run(seed: seed, cap: [1, 2, 3, 4, 8][Int(seed % 5)], clients: 2 + Int(seed % 6), steps: Self.steps)
            XCTAssertTrue(failures.isEmpty, "seed \(seed): \(failures.first ?? "")")
        }
    }
}
