// Exclusive leases: transactions (MULTI/EXEC/DISCARD, WATCH/UNWATCH) and blocking commands run on a connection
// leased to one client, behave exactly as on redis, never exceed the cap, and give the connection back (or close it)
// when the state ends or the client goes away.
import Foundation
import RESP
import XCTest

final class LeaseTests: IntegrationTestCase {
    /// Two clients: A watches a key, B changes it, A's transaction is aborted (EXEC answers a null array);
    /// without the change, the same transaction commits.
    func testWatchConflictBetweenTwoClients() throws {
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "3"]) { _, respool in
            let p = keyPrefix()
            let a = try respool.client()
            let b = try respool.client()
            assertReply(try a.command("SET", "\(p)k", "0"), Reply.ok, "SET")
            assertReply(try a.command("WATCH", "\(p)k"), Reply.ok, "WATCH")
            assertReply(try b.command("SET", "\(p)k", "changed-by-b"), Reply.ok, "B's SET")
            let aborted = try a.pipeline([["MULTI"], ["SET", "\(p)k", "from-a"], ["EXEC"]])
            XCTAssertEqual(aborted, [Reply.ok, Reply.simple("QUEUED"), .array(nil)], "EXEC after a WATCH conflict")
            assertReply(try b.command("GET", "\(p)k"), Reply.bulk("changed-by-b"), "the aborted transaction wrote nothing")

            assertReply(try a.command("WATCH", "\(p)k"), Reply.ok, "WATCH again")
            let committed = try a.pipeline([["MULTI"], ["SET", "\(p)k", "from-a"], ["INCR", "\(p)n"], ["EXEC"]])
            XCTAssertEqual(committed, [Reply.ok, Reply.simple("QUEUED"), Reply.simple("QUEUED"), .array([Reply.ok, Reply.int(1)])],
                           "EXEC without a conflict")
            assertReply(try b.command("GET", "\(p)k"), Reply.bulk("from-a"), "the committed write")

            // UNWATCH ends a WATCH without a transaction: B's change no longer aborts A's next MULTI.
            assertReply(try a.command("WATCH", "\(p)k"), Reply.ok, "WATCH")
            assertReply(try a.command("UNWATCH"), Reply.ok, "UNWATCH")
            assertReply(try b.command("SET", "\(p)k", "b2"), Reply.ok, "B's SET after UNWATCH")
            let free = try a.pipeline([["MULTI"], ["SET", "\(p)k", "a2"], ["EXEC"]])
            XCTAssertEqual(free.last, .array([Reply.ok]), "EXEC after UNWATCH")
        }
    }

    /// A queued command with a syntax error makes EXEC answer EXECABORT; a runtime error inside EXEC does not
    /// roll back the other commands (MULTI gives atomicity, not rollback); DISCARD drops the queue.
    func testTransactionErrorsAreRedisErrors() throws {
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "2"]) { _, respool in
            let p = keyPrefix()
            let c = try respool.client()
            let r = try c.pipeline([["MULTI"], ["SET", "\(p)a"], ["SET", "\(p)b", "1"], ["EXEC"]])
            XCTAssertEqual(r[0], Reply.ok)
            XCTAssertTrue(r[1].isError(prefix: "ERR wrong number of arguments"), "queued syntax error: \(show(r[1]))")
            XCTAssertEqual(r[2], Reply.simple("QUEUED"))
            XCTAssertTrue(r[3].isError(prefix: "EXECABORT"), "EXEC after a queued error: \(show(r[3]))")
            assertReply(try c.command("EXISTS", "\(p)b"), Reply.int(0), "nothing ran")

            let mixed = try c.pipeline([["MULTI"], ["SET", "\(p)s", "text"], ["INCR", "\(p)s"], ["SET", "\(p)t", "2"], ["EXEC"]])
            guard case .array(let results?) = mixed[4], results.count == 3 else { return XCTFail("EXEC: \(show(mixed[4]))") }
            XCTAssertEqual(results[0], Reply.ok)
            XCTAssertTrue(results[1].isError(prefix: "ERR value is not an integer"), "runtime error: \(show(results[1]))")
            XCTAssertEqual(results[2], Reply.ok, "the command after the runtime error still ran")

            let discarded = try c.pipeline([["MULTI"], ["SET", "\(p)d", "1"], ["DISCARD"], ["EXISTS", "\(p)d"]])
            XCTAssertEqual(discarded, [Reply.ok, Reply.simple("QUEUED"), Reply.ok, Reply.int(0)], "DISCARD")
            // Without a lease these reach a shared connection, where redis answers them as it would this client.
            assertErrorReply(try c.command("EXEC"), prefix: "ERR EXEC without MULTI", "EXEC without MULTI")
            assertErrorReply(try c.command("DISCARD"), prefix: "ERR DISCARD without MULTI", "DISCARD without MULTI")
            assertErrorReply(try c.pipeline([["MULTI"], ["MULTI"], ["DISCARD"]])[1], prefix: "ERR MULTI calls can not be nested",
                             "nested MULTI")
        }
    }

    /// While one client is inside MULTI on its lease, other clients' commands flow over the shared connection and
    /// are not queued into that transaction.
    func testOtherClientsAreNotCaughtInATransaction() throws {
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "2"]) { _, respool in
            let p = keyPrefix()
            let a = try respool.client()
            let b = try respool.client()
            assertReply(try a.command("MULTI"), Reply.ok, "MULTI")
            assertReply(try a.command("SET", "\(p)x", "in-tx"), Reply.simple("QUEUED"), "queued")
            for i in 0..<20 {
                assertReply(try b.command("SET", "\(p)y\(i)", "b"), Reply.ok, "B's SET \(i) during A's transaction")
            }
            assertReply(try b.command("EXISTS", "\(p)x"), Reply.int(0), "A's queued write not visible yet")
            assertReply(try a.command("EXEC"), .array([Reply.ok]), "EXEC")
            assertReply(try b.command("GET", "\(p)x"), Reply.bulk("in-tx"), "after EXEC")
        }
    }

    /// BLPOP on many clients at once (more than can hold a lease: they queue for one) while other clients run
    /// GET/SET: no stall, no mismatch; each blocked client gets exactly one pushed element; the server never sees
    /// more connections than the cap. The GET/SET clients start once every blocker is blocked or queued.
    func testManyBlockedClientsBesideMultiplexedTraffic() throws {
        let poolName = "itlease\(getpid())"
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "6", "RESPOOL_NAME": poolName,
                                      "RESPOOL_WAIT_TIMEOUT": "120"]) { redis, respool in
            let p = keyPrefix()
            let endpoint = respool.endpoint
            let blockers = 40, workers = 40
            let failures = FailureLog()
            let received = Locked([String]())
            let blocked = Worker {
                runThreads(blockers, timeout: 60, failures: failures) { t in
                    let c = try TestClient(endpoint, timeout: 30)
                    let r = try c.command("BLPOP", "\(p)queue", "0")
                    guard case .array(let items?) = r, items.count == 2, let v = items[1].string else {
                        failures.record("blocker \(t): \(show(r))")
                        return
                    }
                    XCTAssertEqual(items[0], Reply.bulk("\(p)queue"))
                    received.withLock { $0.append(v) }
                    // The client stays usable after its lease is returned.
                    let after = try c.command("ECHO", "after-\(t)")
                    if after != Reply.bulk("after-\(t)") { failures.record("blocker \(t) after BLPOP: \(show(after))") }
                }
            }
            // Every blocker is either blocked on the server (on a lease) or queued in respool for one.
            var blockedNow = 0, queuedNow = 0
            XCTAssertTrue(try waitUntil(timeout: 30) {
                blockedNow = try redis.blockedClients(in: "blpop").count
                queuedNow = respool.isDirectRedis ? 0 : Int(try respool.metric("respool_wait_queue_length"))
                return blockedNow + queuedNow == blockers || failures.count > 0
            }, "blockers not all blocked or queued: \(blockedNow) blocked, \(queuedNow) queued")
            if !respool.isDirectRedis {
                XCTAssertEqual(blockedNow, 3, "cap 6: three client leases (one connection always stays shared, one slot is the control connection's, one kept for the pub/sub connection)")
            }
            let busy = Worker {
                runThreads(workers, timeout: 60, failures: failures) { t in
                    let c = try TestClient(endpoint, timeout: 10)
                    for i in 0..<100 {
                        let r = try c.pipeline([["SET", "\(p)w\(t)", "v\(i)"], ["GET", "\(p)w\(t)"]])
                        if r != [Reply.ok, Reply.bulk("v\(i)")] {
                            failures.record("worker \(t) #\(i): \(r.map { show($0) })")
                            return
                        }
                    }
                }
            }
            XCTAssertTrue(busy.join(timeout: 60), "multiplexed clients stalled behind blocked ones")
            let sampler = try redis.client()
            var maxSeen = 0
            let pusher = try respool.client()
            for i in 0..<blockers {
                let pushed = try pusher.command("RPUSH", "\(p)queue", "item\(i)")
                guard case .integer = pushed else { return XCTFail("RPUSH: \(show(pushed))") }
                let list = try sampler.command("CLIENT", "LIST").string ?? ""
                maxSeen = max(maxSeen, list.split(separator: "\n").filter { $0.contains("name=\(poolName):pool") }.count)
            }
            XCTAssertTrue(blocked.join(timeout: 60), "blocked clients did not all get an element")
            XCTAssertEqual(failures.count, 0, failures.summary)
            XCTAssertEqual(Set(received.current), Set((0..<blockers).map { "item\($0)" }), "each element went to exactly one client")
            XCTAssertLessThanOrEqual(maxSeen, 6, "more upstream connections than the cap")
            XCTAssertGreaterThanOrEqual(maxSeen, 2, "no lease was ever seen beside the shared connection")
        }
    }

    /// A client blocked in BLPOP disconnects: its lease is released at once (the connection blocked on its behalf is
    /// closed), so with room for a single lease another client can block right after.
    func testBlockedClientDisconnectingReleasesItsLease() throws {
        // B's wait for the lease is bounded by RESPOOL_WAIT_TIMEOUT: a lease still held for A makes B's BLPOP an error.
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "2", "RESPOOL_WAIT_TIMEOUT": "2"]) { redis, respool in
            let p = keyPrefix()
            let a = try respool.client()
            try a.sendCommand(["BLPOP", "\(p)never", "0"])
            var before: [[String: String]] = []
            XCTAssertTrue(try waitUntil { before = try redis.blockedClients(in: "blpop"); return before.count == 1 },
                          "A should be blocked on the server: \(before)")
            a.close()
            let b = try respool.client(timeout: 5)
            let r = try b.command("BLPOP", "\(p)other", "0.2")
            XCTAssertEqual(r, .array(nil), "B's BLPOP timed out normally (\(show(r)))")
            // The connection that blocked for A is closed: the server drops it (B's own BLPOP has returned).
            var after: [[String: String]] = []
            XCTAssertTrue(try waitUntil { after = try redis.blockedClients(in: "blpop"); return after.isEmpty },
                          "a connection is still blocked for nobody: \(after)")
        }
    }

    /// A transaction and a blocking command run in the database the client selected.
    func testLeasesRunInTheSelectedDatabase() throws {
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "3"]) { redis, respool in
            let p = keyPrefix()
            let c = try respool.client()
            let r = try c.pipeline([["SELECT", "5"], ["MULTI"], ["SET", "\(p)tx", "in5"], ["RPUSH", "\(p)l", "e"], ["EXEC"],
                                    ["BLPOP", "\(p)l", "1"], ["SELECT", "0"], ["EXISTS", "\(p)tx"]])
            XCTAssertEqual(r, [Reply.ok, Reply.ok, Reply.simple("QUEUED"), Reply.simple("QUEUED"), .array([Reply.ok, Reply.int(1)]),
                               Reply.bulks(["\(p)l", "e"]), Reply.ok, Reply.int(0)], r.map { show($0) }.joined(separator: " "))
            let direct = try redis.client()
            assertReply(try direct.command("SELECT", "5"), Reply.ok)
            assertReply(try direct.command("GET", "\(p)tx"), Reply.bulk("in5"), "the transaction ran in db 5")
        }
    }

    /// All leasable connections taken: the next client waits RESPOOL_WAIT_TIMEOUT, then gets an error naming the
    /// cap, keeps its connection, and the commands it pipelined after the waiting one are answered in order.
    func testWaitForALeaseTimesOut() throws {
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "2", "RESPOOL_WAIT_TIMEOUT": "0.5"]) { redis, respool in
            let p = keyPrefix()
            let a = try respool.client()
            try a.sendCommand(["BLPOP", "\(p)a", "0"])
            XCTAssertTrue(try waitUntil { try redis.blockedClients(in: "blpop").count == 1 }, "A holds the only lease, blocked")
            let b = try respool.client()
            let t0 = monotonicNow()
            let r = try b.pipeline([["SET", "\(p)x", "1"], ["BLPOP", "\(p)b", "0"], ["GET", "\(p)x"]])
            let waited = monotonicNow() - t0
            XCTAssertEqual(r[0], Reply.ok)
            XCTAssertEqual(r[1].errorText, "ERR respool: no upstream connection free within 0.5s (cap 2 reached)", show(r[1]))
            XCTAssertEqual(r[2], Reply.bulk("1"))
            XCTAssertGreaterThanOrEqual(waited, 0.45, "answered before the wait timeout")
            XCTAssertLessThan(waited, 5, "waited far past the timeout")
            // Once A's lease is back, B can block.
            let pusher = try respool.client()
            guard case .integer = try pusher.command("RPUSH", "\(p)a", "v") else { return XCTFail("RPUSH") }
            assertReply(try a.readValue(), Reply.bulks(["\(p)a", "v"]))
            assertReply(try b.command("BLPOP", "\(p)b", "0.1"), .array(nil), "B gets a lease now")
        }
    }

    /// A pipelined transaction whose MULTI cannot get a connection (all leased, wait timeout) must not run its body
    /// outside a transaction: the queued commands get errors and EXEC answers EXECABORT, as redis does for a
    /// transaction whose commands failed to queue.
    func testRefusedMultiNeverRunsItsBody() throws {
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "2", "RESPOOL_WAIT_TIMEOUT": "0.3"]) { _, respool in
            let p = keyPrefix()
            let a = try respool.client()
            assertReply(try a.command("MULTI"), Reply.ok, "A holds the only lease")
            let b = try respool.client()
            let r = try b.pipeline([["MULTI"], ["INCR", "\(p)k"], ["INCR", "\(p)k"], ["EXEC"], ["GET", "\(p)k"]])
            XCTAssertTrue(r[0].isError(prefix: "ERR respool: no upstream connection free"), show(r[0]))
            XCTAssertTrue(r[1].isError(prefix: "ERR respool: command not queued"), show(r[1]))
            XCTAssertTrue(r[2].isError(prefix: "ERR respool: command not queued"), show(r[2]))
            XCTAssertTrue(r[3].isError(prefix: "EXECABORT"), show(r[3]))
            XCTAssertEqual(r[4], Reply.nilBulk, "the body never ran: \(show(r[4]))")
            // Inline, too.
            try b.send("MULTI\r\nINCR \(p)k\r\nEXEC\r\nGET \(p)k\r\n")
            let inline = try b.readValues(4)
            XCTAssertTrue(inline[2].isError(prefix: "EXECABORT"), show(inline[2]))
            XCTAssertEqual(inline[3], Reply.nilBulk)
            assertReply(try a.command("DISCARD"), Reply.ok)
            let ok = try b.pipeline([["MULTI"], ["INCR", "\(p)k"], ["EXEC"]])
            XCTAssertEqual(ok, [Reply.ok, Reply.simple("QUEUED"), .array([Reply.int(1)])], "a transaction once a lease is free")
        }
    }

    /// A RESP3 client keeps RESP3 in a transaction and in a blocking command (maps inside EXEC, null from a timed-out
    /// BLPOP) while a RESP2 client beside it gets RESP2 from the same kind of lease.
    func testLeasesKeepEachClientsProtocol() throws {
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "3"]) { _, respool in
            let p = keyPrefix()
            let c3 = try respool.client()
            guard case .map = try c3.command("HELLO", "3") else { return XCTFail("HELLO 3") }
            let c2 = try respool.client()
            assertReply(try c2.command("HSET", "\(p)h", "f", "v"), Reply.int(1))
            let r3 = try c3.pipeline([["MULTI"], ["HGETALL", "\(p)h"], ["GET", "\(p)none"], ["EXEC"], ["BLPOP", "\(p)l", "0.05"]])
            XCTAssertEqual(r3[3], .array([.map([Reply.bulk("f"), Reply.bulk("v")]), .null]), "RESP3 EXEC: \(show(r3[3]))")
            XCTAssertEqual(r3[4], .null, "RESP3 BLPOP timeout: \(show(r3[4]))")
            let r2 = try c2.pipeline([["MULTI"], ["HGETALL", "\(p)h"], ["GET", "\(p)none"], ["EXEC"], ["BLPOP", "\(p)l", "0.05"]])
            XCTAssertEqual(r2[3], .array([Reply.bulks(["f", "v"]), Reply.nilBulk]), "RESP2 EXEC: \(show(r2[3]))")
            XCTAssertEqual(r2[4], .array(nil), "RESP2 BLPOP timeout: \(show(r2[4]))")
        }
    }

    /// With a cap of 1 no connection can be leased (one always stays shared): a clear error, and the client goes on.
    func testNoLeaseWithACapOfOne() throws {
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "1"]) { _, respool in
            let c = try respool.client()
            assertErrorReply(try c.command("MULTI"), prefix: "ERR respool:", "MULTI with a cap of 1")
            assertReply(try c.command("DISCARD"), Reply.ok, "DISCARD ends the transaction that could not start")
            assertErrorReply(try c.command("BLPOP", "x", "0"), prefix: "ERR respool:", "BLPOP with a cap of 1")
            assertReply(try c.command("PING"), Reply.pong, "still usable")
        }
    }

    /// XREAD with BLOCK runs on a lease and is woken by an XADD from another client; XREAD without BLOCK stays
    /// multiplexed.
    func testXreadBlockIsWokenByAnotherClient() throws {
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "3"]) { redis, respool in
            let p = keyPrefix()
            let reader = try respool.client(timeout: 10)
            let writer = try respool.client()
            try reader.sendCommand(["XREAD", "BLOCK", "0", "STREAMS", "\(p)s", "$"])
            // "$" means entries added after the XREAD runs: the XADD goes once the reader is blocked on the server.
            XCTAssertTrue(try waitUntil { try redis.blockedClients(in: "xread").count == 1 }, "the reader is blocked in XREAD")
            assertReply(try writer.command("XADD", "\(p)s", "5-1", "f", "v"), Reply.bulk("5-1"), "XADD")
            let r = try reader.readValue()
            let expected = RESPValue.array([.array([Reply.bulk("\(p)s"), .array([.array([Reply.bulk("5-1"), Reply.bulks(["f", "v"])])])])])
            XCTAssertEqual(r, expected, "XREAD BLOCK woken by XADD: \(show(r))")
            assertReply(try reader.command("GET", "\(p)missing"), Reply.nilBulk, "the reader goes on")
        }
    }
}
