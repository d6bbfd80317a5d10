// The janitor's timeouts: idle clients are closed, but never subscribers, blocked clients or clients waiting for a
// reply; a client idle inside MULTI is closed after the transaction idle timeout and its lease freed.
import Foundation
import RESP
import XCTest

final class TimeoutTests: IntegrationTestCase {
    func testIdleTimeoutClosesOnlyIdleClients() throws {
        try requireRealRespool()
        try withRedisAndRespool(redisArgs: ["--enable-debug-command", "yes"],
                                env: ["RESPOOL_CLIENT_IDLE_TIMEOUT": "1", "RESPOOL_MAX_SERVER_CONNECTIONS": "4"]) { _, respool in
            let p = keyPrefix()
            let idle = try respool.client()
            assertReply(try idle.command("PING"), Reply.pong)
            let subscriber = try respool.client()
            assertReply(try subscriber.command("SUBSCRIBE", "\(p)ch"), .array([Reply.bulk("subscribe"), Reply.bulk("\(p)ch"), Reply.int(1)]))
            let blocked = try respool.client(timeout: 10)
            try blocked.sendCommand(["BLPOP", "\(p)list", "0"])
            let sleeper = try respool.client(timeout: 10)
            try sleeper.sendCommand(["DEBUG", "SLEEP", "2.5"])
            let busy = try respool.client()
            let t0 = monotonicNow()
            while monotonicNow() - t0 < 3.2 {
                assertReply(try busy.command("PING"), Reply.pong, "a client active every 0.3s")
                sleepSeconds(0.3)
            }
            XCTAssertEqual(idle.waitForClose(timeout: 1), .closed(reset: false), "the idle client is closed")
            assertReply(try sleeper.readValue(), Reply.ok, "the client waiting 2.5s for a reply got it")
            let pusher = try respool.client()
            guard case .integer = try pusher.command("RPUSH", "\(p)list", "x") else { return XCTFail("RPUSH") }
            assertReply(try blocked.readValue(), Reply.bulks(["\(p)list", "x"]), "the blocked client was kept")
            assertReply(try pusher.command("PUBLISH", "\(p)ch", "m"), Reply.int(1), "the subscriber is still there")
            assertReply(try subscriber.readValue(), Reply.bulks(["message", "\(p)ch", "m"]))
            XCTAssertTrue(respool.stdoutText.contains("reason=idle_timeout"), "idle close logged with its reason")
        }
    }

    func testTransactionIdleTimeoutFreesTheLease() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_TRANSACTION_IDLE_TIMEOUT": "1", "RESPOOL_CLIENT_IDLE_TIMEOUT": "0",
                                      "RESPOOL_MAX_SERVER_CONNECTIONS": "2", "RESPOOL_WAIT_TIMEOUT": "10"]) { _, respool in
            let p = keyPrefix()
            let a = try respool.client()
            assertReply(try a.command("MULTI"), Reply.ok)
            assertReply(try a.command("SET", "\(p)k", "never"), Reply.simple("QUEUED"))
            // The only lease is A's: B waits for it until A's transaction idles out.
            let b = try respool.client(timeout: 10)
            let t0 = monotonicNow()
            assertReply(try b.command("BLPOP", "\(p)l", "0.1"), .array(nil), "B leases once A is closed")
            XCTAssertGreaterThan(monotonicNow() - t0, 0.5)
            XCTAssertEqual(a.waitForClose(timeout: 2), .closed(reset: false), "A was closed")
            assertReply(try b.command("EXISTS", "\(p)k"), Reply.int(0), "A's transaction was discarded")
            XCTAssertTrue(respool.stdoutText.contains("reason=transaction_idle_timeout"))
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
            for i in 0..<20 {
                assertReply(try reader.command("ECHO", "r\(i)"), Reply.bulk("r\(i)"), "another client while the hog does not read")
                sleepSeconds(0.05)
            }
            _ = write
            var closed = false
            let deadline = monotonicNow() + 10
            while monotonicNow() < deadline && !closed {
                closed = respool.stdoutText.contains("reason=output_limit")
                sleepSeconds(0.05)
            }
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
                                env: ["RESPOOL_COMMAND_TIMEOUT": "0.5", "RESPOOL_MAX_SERVER_CONNECTIONS": "3"]) { _, respool in
            let p = keyPrefix()
            let c = try respool.client(timeout: 10)
            assertReply(try c.command("SET", "\(p)k", "value"), Reply.ok)
            let t0 = monotonicNow()
            let r = try c.command("DEBUG", "SLEEP", "1.5")
            XCTAssertEqual(r.errorText, "ERR upstream connection lost: command timed out after 0.5s", show(r))
            XCTAssertLessThan(monotonicNow() - t0, 1.4, "the error came before the reply would have")
            // Redis itself is still asleep for another second (a command sent now would time out as well); then the
            // next commands get their own replies, never the late +OK of DEBUG SLEEP.
            sleepSeconds(1.2)
            for i in 0..<10 {
                assertReply(try c.command("GET", "\(p)k"), Reply.bulk("value"), "GET #\(i) after the timeout")
                sleepSeconds(0.15)
            }
            // A blocking command on a lease is exempt.
            assertReply(try c.command("BLPOP", "\(p)list", "1"), .array(nil), "BLPOP 1 outlives the command timeout")
        }
    }
}
