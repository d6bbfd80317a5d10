// The life of upstream connections: the minimum opened at start-up, idle ones beyond it closed, old ones recycled
// under load without one failed command, idle ones kept alive by PING so a server-side idle timeout never bites.
import Foundation
import RESP
import XCTest

final class UpstreamLifecycleTests: IntegrationTestCase {
    private func ids(_ lines: [String]) -> Set<String> {
        Set(lines.compactMap { $0.split(separator: " ").first { $0.hasPrefix("id=") }.map(String.init) })
    }

    func testMinimumOpenedAndIdleConnectionsClosed() throws {
        try requireRealRespool()
        let name = "itmin\(getpid())"
        try withRedisAndRespool(env: ["RESPOOL_NAME": name, "RESPOOL_MIN_SERVER_CONNECTIONS": "2", "RESPOOL_MAX_SERVER_CONNECTIONS": "5",
                                      "RESPOOL_SERVER_IDLE_TIMEOUT": "1"]) { redis, respool in
            var lines: [String] = []
            for _ in 0..<50 {
                lines = try redis.poolConnections(name)
                if lines.count == 2 { break }
                sleepSeconds(0.05)
            }
            XCTAssertEqual(lines.count, 2, "RESPOOL_MIN_SERVER_CONNECTIONS opened at start-up: \(lines)")
            let endpoint = respool.endpoint
            let failures = FailureLog()
            runThreads(20, timeout: 60, failures: failures) { t in
                let c = try TestClient(endpoint, timeout: 10)
                for i in 0..<200 {
                    let r = try c.pipeline([["SET", "k\(t)", "\(i)"], ["GET", "k\(t)"]])
                    if r != [Reply.ok, Reply.bulk("\(i)")] { failures.record("\(t) \(i): \(r.map { show($0) })"); return }
                }
            }
            XCTAssertEqual(failures.count, 0, failures.summary)
            // Fill-first: at most 40 small requests in flight never push a connection past Pool.packLimit (8192).
            XCTAssertEqual(try redis.poolConnections(name).count, 2, "light load stays on the connections already open")
            // A connection far behind is passed over: a script holds the server for 300 ms while three clients
            // each queue 8,200 commands; the second and third find the connections open so far too busy.
            let busy = "local t = redis.call('TIME') local s = t[1] * 1000000 + t[2] " +
                "repeat local n = redis.call('TIME') until n[1] * 1000000 + n[2] - s > 300000 return 1"
            let clients = try (0..<3).map { _ in try TestClient(endpoint, timeout: 10) }
            for (k, c) in clients.enumerated() {
                var payload = k == 0 ? RESPWriter.command(["EVAL", busy, "0"]) : []
                for i in 0..<8200 { payload += RESPWriter.command(["ECHO", "c\(k)-\(i)"]) }
                try c.send(payload)
                sleepSeconds(0.02)
            }
            for (k, c) in clients.enumerated() {
                if k == 0 { assertReply(try c.readValue(), .integer(1)) }
                for i in 0..<8200 { assertReply(try c.readValue(), Reply.bulk("c\(k)-\(i)")) }
            }
            XCTAssertGreaterThan(try redis.poolConnections(name).count, 2, "the pool grew once its connections fell behind")
            // Closed at the first janitor tick (once a second) after 1 s of idleness: poll for up to 5 s.
            var count = 0
            for _ in 0..<100 {
                count = try redis.poolConnections(name).count
                if count == 2 { break }
                sleepSeconds(0.05)
            }
            XCTAssertEqual(count, 2, "idle connections beyond the minimum closed")
        }
    }

    func testLifetimeRecyclesConnectionsWithoutFailingCommands() throws {
        try requireRealRespool()
        let name = "itlife\(getpid())"
        try withRedisAndRespool(env: ["RESPOOL_NAME": name, "RESPOOL_MAX_SERVER_CONNECTIONS": "3", "RESPOOL_SERVER_LIFETIME": "1"]) { redis, respool in
            let before = ids(try redis.poolConnections(name))
            let endpoint = respool.endpoint
            let failures = FailureLog()
            let start = monotonicNow()
            runThreads(10, timeout: 60, failures: failures) { t in
                let c = try TestClient(endpoint, timeout: 10)
                var i = 0
                while monotonicNow() - start < 3 {
                    let r = try c.pipeline([["INCR", "n\(t)"], ["GET", "n\(t)"]])
                    i += 1
                    if r != [Reply.int(i), Reply.bulk("\(i)")] { failures.record("\(t) #\(i): \(r.map { show($0) })"); return }
                }
            }
            XCTAssertEqual(failures.count, 0, failures.summary)
            // A connection that was busy to the end retires when its last reply is out; the server sees the close a
            // moment later: poll for up to 3 s.
            var after = ids(try redis.poolConnections(name))
            for _ in 0..<60 where !before.isDisjoint(with: after) {
                sleepSeconds(0.05)
                after = ids(try redis.poolConnections(name))
            }
            XCTAssertTrue(before.isDisjoint(with: after), "connections older than the lifetime were replaced: \(before) -> \(after)")
            XCTAssertLessThanOrEqual(after.count, 3)
        }
    }

    func testKeepalivePingOutlivesTheServersIdleTimeout() throws {
        try requireRealRespool()
        let name = "itka\(getpid())"
        try withRedisAndRespool(redisArgs: ["--timeout", "2"],
                                env: ["RESPOOL_NAME": name, "RESPOOL_SERVER_KEEPALIVE": "0.5", "RESPOOL_MAX_SERVER_CONNECTIONS": "2"]) { redis, respool in
            let c = try respool.client()
            assertReply(try c.command("SET", "k", "v"), Reply.ok)
            let before = ids(try redis.poolConnections(name))
            sleepSeconds(4)
            assertReply(try c.command("GET", "k"), Reply.bulk("v"), "first command after 4s idle")
            let after = ids(try redis.poolConnections(name))
            XCTAssertFalse(before.isEmpty)
            XCTAssertTrue(before.isSubset(of: after), "the pooled connections survived the server's 2s timeout: \(before) -> \(after)")
            XCTAssertFalse(respool.stdoutText.contains("upstream connection lost"), respool.stdoutText)
        }
    }

    /// A connection idle past RESPOOL_SERVER_CHECK_AFTER is checked with PING before the next command goes on it;
    /// the command then succeeds on it.
    func testIdleConnectionCheckedBeforeReuse() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_SERVER_CHECK_AFTER": "0.3", "RESPOOL_SERVER_KEEPALIVE": "0",
                                      "RESPOOL_MAX_SERVER_CONNECTIONS": "2"]) { _, respool in
            let c = try respool.client()
            assertReply(try c.command("SET", "k", "v"), Reply.ok)
            sleepSeconds(0.6)
            assertReply(try c.command("GET", "k"), Reply.bulk("v"), "the command after the check")
            assertReply(try c.command("GET", "k"), Reply.bulk("v"), "and the one after it (no check: not idle)")
            // SIGUSR1 logs the counters.
            let line = respool.statsLine()
            XCTAssertGreaterThanOrEqual(logfmtValue(line, key: "upstream_checks").flatMap { Int($0) } ?? 0, 1, line)
        }
    }
}
