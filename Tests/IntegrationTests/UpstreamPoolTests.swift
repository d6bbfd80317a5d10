// The upstream side: the connection cap, the upstream dying and coming back, the upstream never being there.
import Foundation
import RESP
import XCTest

/// One `CLIENT LIST` parsed into entries of key=value fields.
func parseClientList(_ v: RESPValue) -> [[String: String]]? {
    guard let text = v.string else { return nil }
    return text.split(separator: "\n").map { line in
        var fields: [String: String] = [:]
        for part in line.split(separator: " ") {
            let kv = part.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard kv.count == 2 else { continue }
            fields[String(kv[0])] = String(kv[1])
        }
        return fields
    }
}

final class UpstreamPoolTests: IntegrationTestCase {
    /// RESPOOL_MAX_SERVER_CONNECTIONS=4 with 500 busy clients: redis never sees more than 4 connections from respool,
    /// counted both by name ("<RESPOOL_NAME>:pool") and as every connection but the sampler's own.
    func testUpstreamConnectionCapHoldsUnderLoad() throws {
        try requireRealRespool()
        let poolName = "itcap\(getpid())"
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "4", "RESPOOL_NAME": poolName]) { redis, respool in
            let p = keyPrefix()
            let clients = 500, iterations = 20
            let endpoint = respool.endpoint
            let failures = FailureLog()
            let stop = StopFlag()
            let connected = Barrier(parties: clients + 1)
            let stats = Locked((samples: 0, maxNamed: 0, maxOthers: 0, worst: ""))
            let sampler = try redis.client()
            guard case .integer(let samplerID) = try sampler.command("CLIENT", "ID") else {
                return XCTFail("CLIENT ID on the sampler connection failed")
            }
            let samplerThread = Worker {
                do {
                    while !stop.isSet {
                        let reply = try sampler.command("CLIENT", "LIST")
                        guard let entries = parseClientList(reply) else {
                            failures.record("CLIENT LIST: \(show(reply))")
                            return
                        }
                        let others = entries.filter { $0["id"] != String(samplerID) }
                        let named = others.filter { $0["name"] == "\(poolName):pool" }.count
                        stats.withLock { s in
                            s.samples += 1
                            if named > s.maxNamed || others.count > s.maxOthers {
                                s.maxNamed = max(s.maxNamed, named)
                                s.maxOthers = max(s.maxOthers, others.count)
                                if others.count > 4 || named > 4 { s.worst = reply.string ?? "" }
                            }
                        }
                        sleepSeconds(0.002)
                    }
                } catch {
                    failures.record("sampler: \(error)")
                }
            }
            let loadThreads = Worker {
                runThreads(clients, timeout: 120, failures: failures) { c in
                    let conn: TestClient
                    do {
                        conn = try TestClient(endpoint, timeout: 30)
                    } catch {
                        connected.arrive()
                        throw error
                    }
                    connected.arriveAndWait()
                    for i in 0..<iterations {
                        let key = "\(p)c\(c):\(i % 3)"
                        let replies = try conn.pipeline([["SET", key, "v\(c).\(i)"], ["GET", key]])
                        let expected = [Reply.ok, Reply.bulk("v\(c).\(i)")]
                        if replies != expected {
                            failures.record("client \(c) iteration \(i): expected \(expected.map { show($0) }), got \(replies.map { show($0) })")
                            return
                        }
                    }
                }
            }
            XCTAssertTrue(connected.arriveAndWait(timeout: 60), "500 clients did not all connect within 60s")
            XCTAssertTrue(loadThreads.join(timeout: 150), "client threads stuck")
            stop.set()
            XCTAssertTrue(samplerThread.join(timeout: 20), "sampler stuck")
            let s = stats.current
            print("[\(name)] \(s.samples) CLIENT LIST samples; max \(s.maxNamed) named \(poolName):pool, max \(s.maxOthers) connections besides the sampler")
            XCTAssertEqual(failures.count, 0, failures.summary)
            XCTAssertGreaterThanOrEqual(s.samples, 10, "too few samples taken during the load")
            XCTAssertGreaterThanOrEqual(s.maxNamed, 1, "no upstream connection named \(poolName):pool was ever seen (RESPOOL_NAME)")
            XCTAssertLessThanOrEqual(s.maxNamed, 4, "more than 4 connections named \(poolName):pool; CLIENT LIST:\n\(s.worst)")
            XCTAssertLessThanOrEqual(s.maxOthers, 4, "more than 4 upstream connections; CLIENT LIST:\n\(s.worst)")
        }
    }

    /// Redis SIGKILLed mid-load and restarted on the same port: every reply is either right for its own request or
    /// an "ERR upstream..." error (never another request's reply, never a closed client), and every client succeeds
    /// again within a few seconds of the restart (the reconnect backoff is at most 5 s) without reconnecting.
    func testUpstreamKilledAndRestartedMidLoad() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "4"]) { redis, respool in
            let p = keyPrefix()
            let clients = 20
            let endpoint = respool.endpoint
            let failures = FailureLog()
            let stop = StopFlag()
            let restartedAt = Locked<Double?>(nil)
            // Per client: time of the first fully successful pipeline that was sent after the restart.
            let recoveredAt = Locked([Double?](repeating: nil, count: clients))
            let counts = Locked((ok: 0, upstreamErrors: 0))
            let started = Barrier(parties: clients + 1)
            let load = Worker {
                runThreads(clients, timeout: 120, failures: failures) { c in
                    let conn: TestClient
                    do {
                        conn = try TestClient(endpoint, timeout: 10)
                    } catch {
                        started.arrive()
                        throw error
                    }
                    started.arriveAndWait()
                    var i = 0
                    while !stop.isSet {
                        let sentAt = monotonicNow()
                        let tok = "c\(c).\(i)"
                        let key = "\(p)c\(c):\(i)"   // a fresh key per pipeline: GET sees this SET's value or nothing
                        let commands = [["ECHO", tok], ["SET", key, tok], ["GET", key], ["PING"], ["ECHO", tok + "b"]]
                        let replies = try conn.pipeline(commands)
                        var allOK = true
                        for (j, r) in replies.enumerated() {
                            let right: Bool
                            switch j {
                            case 0: right = r == Reply.bulk(tok)
                            case 1: right = r == Reply.ok
                            case 2: right = r == Reply.bulk(tok) || r == Reply.nilBulk  // nil: SET ran on the killed instance
                            case 3: right = r == Reply.pong
                            default: right = r == Reply.bulk(tok + "b")
                            }
                            if right { continue }
                            allOK = false
                            if !r.isError(prefix: "ERR upstream") {
                                failures.record("client \(c) pipeline \(i) command \(commands[j]): got \(show(r)) "
                                    + "(all replies: \(replies.map { show($0) }))")
                                return
                            }
                        }
                        counts.withLock { n in
                            if allOK { n.ok += 1 } else { n.upstreamErrors += 1 }
                        }
                        if allOK, let r = restartedAt.current, sentAt > r {
                            recoveredAt.withLock { if $0[c] == nil { $0[c] = monotonicNow() } }
                        }
                        if !allOK { sleepSeconds(0.01) }
                        i += 1
                    }
                }
            }
            XCTAssertTrue(started.arriveAndWait(timeout: 30), "clients did not connect")
            // Mid-load: every client has had pipelines answered by the first instance.
            XCTAssertTrue(waitUntil { counts.current.ok >= clients * 5 || failures.count > 0 }, "no load before the kill")
            redis.kill()
            // The outage is seen: clients get "ERR upstream..." replies while nothing listens.
            XCTAssertTrue(waitUntil { counts.current.upstreamErrors >= 1 || failures.count > 0 }, "no ERR upstream while redis was down")
            try redis.restart()
            let restart = monotonicNow()
            restartedAt.withLock { $0 = restart }
            // Generous: the backoff between connect attempts grows to 5 s while the server is away.
            waitUntil(timeout: 15) { !recoveredAt.current.contains(where: { $0 == nil }) || failures.count > 0 }
            // Some more load on the new instance: every client answered a few more times.
            let okAfterRecovery = counts.current.ok
            waitUntil { counts.current.ok >= okAfterRecovery + clients * 5 || failures.count > 0 }
            stop.set()
            XCTAssertTrue(load.join(timeout: 60), "client threads stuck")
            let c = counts.current
            let recovery = recoveredAt.current
            let slowest = recovery.compactMap { $0.map { $0 - restart } }.max()
            print("[\(name)] \(c.ok) fully answered pipelines, \(c.upstreamErrors) with ERR upstream; slowest recovery "
                + "\(slowest.map { String(format: "%.2fs", $0) } ?? "n/a") after the restart")
            XCTAssertEqual(failures.count, 0, failures.summary)
            let notRecovered = recovery.enumerated().filter { $0.element == nil }.map(\.offset)
            XCTAssertTrue(notRecovered.isEmpty, "clients \(notRecovered) got no fully successful pipeline within 15s of the restart")
            XCTAssertTrue(respool.isRunning, "respool died")
        }
    }

    /// Redis closes respool's idle upstream connections (CLIENT KILL): with nothing in flight, commands sent
    /// afterwards are not failed; respool replaces the connections.
    func testIdleUpstreamConnectionsClosedByRedisAreReplaced() throws {
        try requireRealRespool()
        let poolName = "itidle\(getpid())"
        try withRedisAndRespool(env: ["RESPOOL_NAME": poolName, "RESPOOL_MAX_SERVER_CONNECTIONS": "3"]) { redis, respool in
            let p = keyPrefix()
            var clients: [TestClient] = []
            for i in 0..<6 {
                let c = try respool.client()
                assertReply(try c.command("SET", "\(p)\(i)", "v\(i)"), Reply.ok, "SET before the kill")
                clients.append(c)
            }
            let direct = try redis.client()
            func upstreamIDs() throws -> Set<Int> { Set(try respool.upstreamsInfo().compactMap { ($0["id"] as? NSNumber)?.intValue }) }
            for round in 0..<3 {
                let open = try upstreamIDs()
                let killed = try direct.command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
                guard case .integer(let n) = killed, n >= 1 else {
                    return XCTFail("CLIENT KILL round \(round) killed no upstream connection: \(show(killed))")
                }
                // Respool has seen every close (nothing was in flight on them): none of its connections of before is left.
                var now: Set<Int> = []
                XCTAssertTrue(try waitUntil { now = try upstreamIDs(); return now.isDisjoint(with: open) },
                              "respool still lists killed connections: \(open) -> \(now)")
                for (i, c) in clients.enumerated() {
                    assertReply(try c.command("GET", "\(p)\(i)"), Reply.bulk("v\(i)"),
                                "GET on client \(i) after redis closed \(n) idle upstream connections (round \(round))")
                }
            }
            let list = parseClientList(try direct.command("CLIENT", "LIST")) ?? []
            let named = list.filter { $0["name"] == "\(poolName):pool" }.count
            XCTAssertTrue((1...3).contains(named), "\(named) upstream connections named \(poolName):pool after the kills")
        }
    }

    /// Upstream never reachable (nothing listens on the port): a command gets "ERR upstream..." within 2s; when a
    /// redis-server appears on that port, the same client connection recovers.
    func testUpstreamUnreachableFromTheStart() throws {
        let port = try freeLoopbackPort()
        try withRespool(upstreamURL: "redis://127.0.0.1:\(port)") { respool in
            try requireRealRespool()
            let conn = try respool.client(timeout: 5)
            for args in [["PING"], ["GET", "k"], ["SET", "k", "v"]] {
                let t0 = monotonicNow()
                let reply = try conn.command(args)
                let elapsed = monotonicNow() - t0
                assertErrorReply(reply, prefix: "ERR upstream", "\(args) with no upstream")
                XCTAssertLessThan(elapsed, 2.0, "\(args) took \(elapsed)s to fail")
            }
            let redis = try RedisServer.start(port: port)
            defer { redis.cleanup() }
            // Generous: the backoff between connect attempts grows to 5 s while nothing listens.
            var last = Reply.nilBulk
            try waitUntil(timeout: 15, interval: 0.1) {
                last = try conn.command("ECHO", "back")
                return !last.isError(prefix: "ERR upstream")
            }
            assertReply(last, Reply.bulk("back"), "ECHO within 15s of redis-server starting on the upstream port")
            assertReply(try conn.command("SET", "k", "v"), Reply.ok, "SET after recovery")
            assertReply(try conn.command("GET", "k"), Reply.bulk("v"), "GET after recovery")
        }
    }
}
