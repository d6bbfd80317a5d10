// The janitor's timeouts: idle clients are closed, but never subscribers, blocked clients or clients waiting for a
// reply; a client idle inside MULTI is closed after the transaction idle timeout and its lease freed.
import Foundation
import RESP
import TestKit
import XCTest

final class TimeoutTests: IntegrationTestCase {
    /// Idle clients are closed after RESPOOL_CLIENT_IDLE_TIMEOUT; a subscriber, a client blocked in BLPOP, a client
    /// waiting for a reply (its SET held by CLIENT PAUSE WRITE, released by the test) and an active client are not.
    /// The idle client is the last of them to have done anything: its close proves that the janitor swept while the
    /// others had been quiet for longer than the timeout, so no guessed duration is needed.
    func testIdleTimeoutClosesOnlyIdleClients() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_CLIENT_IDLE_TIMEOUT": "1", "RESPOOL_MAX_SERVER_CONNECTIONS": "4"]) { redis, respool in
            let p = keyPrefix()
            let direct = try redis.client()
            let idle = try respool.client()
            assertReply(try idle.command("PING"), Reply.pong)
            guard case .integer(let idleID) = try idle.command("CLIENT", "ID") else { return XCTFail("CLIENT ID") }
            let subscriber = try respool.client()
            assertReply(try subscriber.command("SUBSCRIBE", "\(p)ch"), .array([Reply.bulk("subscribe"), Reply.bulk("\(p)ch"), Reply.int(1)]))
            let blocked = try respool.client(timeout: 10)
            try blocked.sendCommand(["BLPOP", "\(p)list", "0"])
            XCTAssertTrue(try waitUntil { try redis.blockedClients(in: "blpop").count == 1 }, "BLPOP blocked on the server")
            // Write commands wait on the server until CLIENT UNPAUSE: the sleeper's SET stays unanswered meanwhile.
            assertReply(try direct.command("CLIENT", "PAUSE", "60000", "WRITE"), Reply.ok)
            var paused = true
            defer { if paused { _ = try? direct.command("CLIENT", "UNPAUSE") } }
            let sleeper = try respool.client(timeout: 10)
            guard case .integer(let sleeperID) = try sleeper.command("CLIENT", "ID") else { return XCTFail("CLIENT ID") }
            try sleeper.sendCommand(["SET", "\(p)held", "1"])
            XCTAssertTrue(try waitUntil { (try respool.clientInfo(id: sleeperID)?["in_flight"] as? NSNumber)?.intValue == 1 },
                          "the sleeper's SET is in flight")
            let busy = try respool.client()
            guard case .integer(let busyID) = try busy.command("CLIENT", "ID") else { return XCTFail("CLIENT ID") }
            // The idle client's last activity (answered by respool itself): later than everyone else's but busy's.
            assertReply(try idle.command("CLIENT", "ID"), .integer(idleID))
            // Busy stays active (a command answered by respool itself, which the paused server cannot hold up) until
            // the idle client is closed.
            let closedIdle = try waitUntil(timeout: 20, interval: 0.1) {
                assertReply(try busy.command("CLIENT", "ID"), .integer(busyID), "the active client")
                return try respool.clientInfo(id: idleID) == nil
            }
            XCTAssertTrue(closedIdle, "the idle client was not closed")
            XCTAssertEqual(idle.waitForClose(timeout: 5), .closed(reset: false), "the idle client is closed")
            assertReply(try direct.command("CLIENT", "UNPAUSE"), Reply.ok)
            paused = false
            assertReply(try sleeper.readValue(), Reply.ok, "the client waiting for a reply got it")
            assertReply(try busy.command("PING"), Reply.pong, "the active client is still served")
            let pusher = try respool.client()
            guard case .integer = try pusher.command("RPUSH", "\(p)list", "x") else { return XCTFail("RPUSH") }
            assertReply(try blocked.readValue(), Reply.bulks(["\(p)list", "x"]), "the blocked client was kept")
            assertReply(try pusher.command("PUBLISH", "\(p)ch", "m"), Reply.int(1), "the subscriber is still there")
            assertReply(try subscriber.readValue(), Reply.bulks(["message", "\(p)ch", "m"]))
            XCTAssertTrue(respool.waitForLog("reason=idle_timeout"), "idle close logged with its reason")
        }
    }

    func testTransactionIdleTimeoutFreesTheLease() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_TRANSACTION_IDLE_TIMEOUT": "1", "RESPOOL_CLIENT_IDLE_TIMEOUT": "0",
                                      "RESPOOL_MAX_SERVER_CONNECTIONS": "2", "RESPOOL_WAIT_TIMEOUT": "10"]) { _, respool in
            let p = keyPrefix()
            let a = try respool.client()
            let b = try respool.client(timeout: 10)
            let waitsBefore = try respool.metric("respool_wait_duration_seconds", "count")
            assertReply(try a.command("MULTI"), Reply.ok)
            // The only lease is A's: B asks for it before A's last command, so it waits until A's transaction idles out.
            try b.sendCommand(["BLPOP", "\(p)l", "0.1"])
            assertReply(try a.command("SET", "\(p)k", "never"), Reply.simple("QUEUED"))
            assertReply(try b.readValue(), .array(nil), "B leases once A is closed")
            XCTAssertEqual(try respool.metric("respool_wait_duration_seconds", "count"), waitsBefore + 1, "B waited for the lease")
            XCTAssertEqual(a.waitForClose(timeout: 5), .closed(reset: false), "A was closed")
            assertReply(try b.command("EXISTS", "\(p)k"), Reply.int(0), "A's transaction was discarded")
            XCTAssertTrue(respool.waitForLog("reason=transaction_idle_timeout"))
        }
    }

    /// A client that pipelines GETs of a 1 MB value and never reads: past RESPOOL_CLIENT_OUTPUT_LIMIT it is closed,
    /// respool's memory stays bounded, and another client is served throughout.
    func testClientThatNeverReadsIsClosedAtTheOutputLimit() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_CLIENT_OUTPUT_LIMIT": "8mb", "RESPOOL_CLIENT_OUTPUT_SOFT_LIMIT": "4mb",
                                      "RESPOOL_MAX_SERVER_CONNECTIONS": "2"]) { _, respool in
            let p = keyPrefix()
            let setup = try respool.client()
            var rng = SeededRandom(seed: 7)
            let value = rng.bytes(1 << 20)
            assertReply(try setup.command(bytes: [Array("SET".utf8), Array("\(p)big".utf8), value]), Reply.ok)
            let reader = try respool.client(timeout: 5)
            let hog = try respool.client(timeout: 5)
            var payload: [UInt8] = []
            for _ in 0..<200 { payload += RESPWriter.command(["GET", "\(p)big"]) }   // 200 MB of replies
            let write = hog.sendInBackground(payload)
            // Another client is served all along, until the hog is closed.
            var i = 0
            let closed = try waitUntil(timeout: 20) {
                assertReply(try reader.command("ECHO", "r\(i)"), Reply.bulk("r\(i)"), "another client while the hog does not read")
                i += 1
                return respool.stdoutText.contains("reason=output_limit")
            }
            _ = write
            XCTAssertTrue(closed, "the client that never reads was not closed for its output")
            if let pid = respool.process?.pid,
               let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
               let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
               let kb = Int(line.split(separator: " ").dropFirst().first { !$0.isEmpty } ?? "") {
                XCTAssertLessThan(kb, 120_000, "respool's RSS after 200 MB of unread replies: \(kb) kB")
            }
            assertReply(try reader.command("PING"), Reply.pong)
        }
    }

    /// A multiplexed command whose reply does not come within RESPOOL_COMMAND_TIMEOUT gets an error; its connection is
    /// closed, so the late reply never reaches anyone; blocking commands (leased) are exempt.
    func testCommandTimeoutNeverLetsALateReplyThrough() throws {
        try requireRealRespool()
        try withRedisAndRespool(redisArgs: ["--enable-debug-command", "yes"],
                                env: ["RESPOOL_COMMAND_TIMEOUT": "0.5", "RESPOOL_MAX_SERVER_CONNECTIONS": "3"]) { redis, respool in
            let p = keyPrefix()
            let c = try respool.client(timeout: 10)
            assertReply(try c.command("SET", "\(p)k", "value"), Reply.ok)
            // The error, not the +OK DEBUG SLEEP answers 1.5 s later: it came before the reply would have.
            let r = try c.command("DEBUG", "SLEEP", "1.5")
            XCTAssertEqual(r.errorText, "ERR upstream connection lost: command timed out after 0.5s", show(r))
            // Redis itself is still asleep (a command sent now would time out as well): a direct connection's PING is
            // answered once it is awake, after it has sent the late +OK of DEBUG SLEEP. The next commands get their own
            // replies, never that +OK.
            assertReply(try redis.client(timeout: 10).command("PING"), Reply.pong, "redis awake again")
            for i in 0..<10 {
                assertReply(try c.command("GET", "\(p)k"), Reply.bulk("value"), "GET #\(i) after the timeout")
            }
            // A blocking command on a lease is exempt.
            assertReply(try c.command("BLPOP", "\(p)list", "1"), .array(nil), "BLPOP 1 outlives the command timeout")
        }
    }
}
