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
        // The connect timeout is far away: the connection opened while the server is stopped must simply wait for it.
        try withRedisAndRespool(env: ["RESPOOL_NAME": name, "RESPOOL_MIN_SERVER_CONNECTIONS": "2", "RESPOOL_MAX_SERVER_CONNECTIONS": "5",
                                      "RESPOOL_SERVER_IDLE_TIMEOUT": "1", "RESPOOL_CONNECT_TIMEOUT": "60"]) { redis, respool in
            var lines: [String] = []
            XCTAssertTrue(try waitUntil { lines = try redis.poolConnections(name); return lines.count == 2 },
                          "RESPOOL_MIN_SERVER_CONNECTIONS opened at start-up: \(lines)")
            // Connections opened so far: a counter, so a connection opened and closed again in between still shows.
            let connectsAtStart = try respool.metric("respool_upstream_connects_total")
            XCTAssertEqual(connectsAtStart, 2, "the minimum, opened once")
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
            XCTAssertEqual(try respool.metric("respool_upstream_connects_total"), connectsAtStart,
                           "light load stays on the connections already open (none opened, even briefly)")
            XCTAssertEqual(try redis.poolConnections(name).count, 2, "light load stays on the connections already open")
            // A connection far behind is passed over: with the server stopped (SIGSTOP: nothing is answered until
            // SIGCONT), three clients each queue 8,200 commands, one after the other once respool has read the previous
            // one's; the second finds the first connection too busy and takes the other; the third finds both too busy,
            // and the pool grows.
            let clients = try (0..<3).map { _ in try TestClient(endpoint, timeout: 30) }
            redis.pause()
            var paused = true
            defer { if paused { redis.resume() } }
            for (k, c) in clients.enumerated() {
                var payload: [UInt8] = []
                for i in 0..<8200 { payload += RESPWriter.command(["ECHO", "c\(k)-\(i)"]) }
                try c.send(payload)
                var pending = 0
                XCTAssertTrue(try waitUntil { pending = try respool.upstreamPending(); return pending >= 8200 * (k + 1) },
                              "respool read client \(k)'s 8,200 commands: \(pending) pending upstream")
            }
            var upstreams: [[String: Any]] = []
            XCTAssertTrue(try waitUntil { upstreams = try respool.upstreamsInfo(); return upstreams.count > 2 },
                          "the pool grew once its connections fell behind: \(upstreams)")
            redis.resume()
            paused = false
            for (k, c) in clients.enumerated() {
                for i in 0..<8200 {
                    let r = try c.readValue()
                    if r != Reply.bulk("c\(k)-\(i)") { return XCTFail("client \(k) reply #\(i): \(show(r))") }
                }
            }
            XCTAssertGreaterThan(try respool.metric("respool_upstream_connects_total"), connectsAtStart,
                                 "the pool grew once its connections fell behind")
            // Closed at the first janitor tick (once a second) after 1 s of idleness.
            var count = 0
            XCTAssertTrue(try waitUntil { count = try redis.poolConnections(name).count; return count == 2 },
                          "idle connections beyond the minimum closed: \(count) left")
        }
    }

    func testLifetimeRecyclesConnectionsWithoutFailingCommands() throws {
        try requireRealRespool()
        let name = "itlife\(getpid())"
        try withRedisAndRespool(env: ["RESPOOL_NAME": name, "RESPOOL_MAX_SERVER_CONNECTIONS": "3", "RESPOOL_SERVER_LIFETIME": "1"]) { redis, respool in
            var before: Set<String> = []
            XCTAssertTrue(try waitUntil { before = ids(try redis.poolConnections(name)); return !before.isEmpty },
                          "the minimum connection is on the server")
            let endpoint = respool.endpoint
            let failures = FailureLog()
            let stop = StopFlag()
            let load = Worker {
                runThreads(10, timeout: 120, failures: failures) { t in
                    let c = try TestClient(endpoint, timeout: 10)
                    var i = 0
                    while !stop.isSet {
                        let r = try c.pipeline([["INCR", "n\(t)"], ["GET", "n\(t)"]])
                        i += 1
                        if r != [Reply.int(i), Reply.bulk("\(i)")] { failures.record("\(t) #\(i): \(r.map { show($0) })"); return }
                    }
                }
            }
            // The load runs until every connection that was there before it has been recycled (counted by respool
            // and gone from the server), so the recycling happens under load.
            var after: Set<String> = []
            var recycled = 0.0
            let replaced = try waitUntil(timeout: 30) {
                recycled = try respool.metric("respool_upstream_recycled_total")
                after = ids(try redis.poolConnections(name))
                return (recycled >= Double(before.count) && before.isDisjoint(with: after)) || failures.count > 0
            }
            stop.set()
            XCTAssertTrue(load.join(timeout: 60), "client threads stuck")
            XCTAssertEqual(failures.count, 0, failures.summary)
            XCTAssertTrue(replaced, "connections older than the lifetime were replaced under load: \(before) -> \(after), \(recycled) recycled")
            XCTAssertLessThanOrEqual(after.count, 3)
        }
    }

    func testKeepalivePingOutlivesTheServersIdleTimeout() throws {
        try requireRealRespool()
        let name = "itka\(getpid())"
        // No advisor INFO: only the keepalive can keep respool's connections from looking idle to the server.
        try withRedisAndRespool(redisArgs: ["--timeout", "2"],
                                env: ["RESPOOL_NAME": name, "RESPOOL_SERVER_KEEPALIVE": "0.5", "RESPOOL_MAX_SERVER_CONNECTIONS": "2",
                                      "RESPOOL_ADVISOR_INTERVAL": "0"]) { redis, respool in
            let c = try respool.client()
            assertReply(try c.command("SET", "k", "v"), Reply.ok)
            let before = ids(try redis.poolConnections(name))
            // A witness connected after respool's connections were last used, then left idle: the server closing it is
            // the proof that its 2 s timeout has struck (it checks every client ~10 times a second, so respool's
            // connections, idle longer, would have been closed no later than the witness had nothing kept them alive).
            let witness = try redis.client(timeout: 10)
            assertReply(try witness.command("PING"), Reply.pong)
            XCTAssertEqual(witness.waitForClose(timeout: 15), .closed(reset: false), "the server's idle timeout closed an idle connection")
            let after = ids(try redis.poolConnections(name))
            XCTAssertFalse(before.isEmpty)
            XCTAssertTrue(before.isSubset(of: after), "the pooled connections survived the server's 2s timeout: \(before) -> \(after)")
            assertReply(try c.command("GET", "k"), Reply.bulk("v"), "first command after the server's idle timeout")
            respool.logMarker()   // every line logged so far is captured
            XCTAssertFalse(respool.stdoutText.contains("upstream connection lost"), respool.stdoutText)
        }
    }

    /// A connection idle past RESPOOL_SERVER_CHECK_AFTER is checked with PING before the next command goes on it;
    /// the command then succeeds on it.
    func testIdleConnectionCheckedBeforeReuse() throws {
        try requireRealRespool()
        // Nothing but this test's commands touches the connection: no keepalive, no advisor INFO, and the COMMAND
        // respool sends once at start-up answered before the test begins.
        try withRedisAndRespool(env: ["RESPOOL_SERVER_CHECK_AFTER": "0.3", "RESPOOL_SERVER_KEEPALIVE": "0",
                                      "RESPOOL_ADVISOR_INTERVAL": "0", "RESPOOL_MAX_SERVER_CONNECTIONS": "2"]) { _, respool in
            XCTAssertTrue(respool.waitForLog("command table learned from the server"))
            let c = try respool.client()
            assertReply(try c.command("SET", "k", "v"), Reply.ok)
            // The idleness under test: at least RESPOOL_SERVER_CHECK_AFTER since the reply (a lower bound, which a
            // sleep guarantees; nothing is assumed to happen meanwhile).
            sleepSeconds(0.6)
            assertReply(try c.command("GET", "k"), Reply.bulk("v"), "the command after the check")
            assertReply(try c.command("GET", "k"), Reply.bulk("v"), "and the one after it (no check: not idle)")
            // SIGUSR1 logs the counters.
            let line = respool.statsLine()
            XCTAssertGreaterThanOrEqual(logfmtValue(line, key: "upstream_checks").flatMap { Int($0) } ?? 0, 1, line)
        }
    }
}
