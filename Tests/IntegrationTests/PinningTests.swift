// Pinning (session mode): a client that sends a command tying server state to its connection gets an upstream
// connection of its own while that state lasts, counted like a lease, instead of an error; when the state ends (RESET,
// the client closing) the connection is reset (RESET, respool's name and database) and goes back to the pool.
// MONITOR's feed is compared byte for byte with a direct MONITOR on the same redis-server.
import Foundation
import RESP
import XCTest

final class PinningTests: IntegrationTestCase {
    /// Reads monitor lines until one contains `marker`; returns the lines before it.
    func monitorLines(_ c: TestClient, until marker: String) throws -> [[UInt8]] {
        var lines: [[UInt8]] = []
        while true {
            let raw = try c.readRawReply(timeout: 10)
            if String(decoding: raw, as: UTF8.self).contains(marker) { return lines }
            lines.append(raw)
        }
    }

    /// MONITOR through respool: the client gets the server's own feed (the same lines, byte for byte, as a direct
    /// MONITOR gets), its connection is pinned (/clients, /upstreams, the metric, the log line, CLIENT LIST's O flag),
    /// CLIENT ID still answers respool's id, and RESET ends it: the connection is reset and shared again.
    func testMonitorThroughRespoolIsTheServersFeed() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "4", "RESPOOL_NAME": "pin"]) { redis, respool in
            let p = keyPrefix()
            let direct = try redis.client(), proxied = try respool.client(), other = try respool.client(), admin = try redis.client()
            let id = try proxied.command("CLIENT", "ID")
            try assertSameReplies(direct: direct, proxied: proxied, [["MONITOR"]], "MONITOR")
            // Both are monitoring once a command sent after both MONITORs shows up in both feeds.
            _ = try admin.command("ECHO", "\(p)sync")
            _ = try monitorLines(direct, until: "\(p)sync")
            _ = try monitorLines(proxied, until: "\(p)sync")
            assertReply(try other.command("SET", "\(p)k", "v"), Reply.ok)
            assertReply(try other.command("GET", "\(p)k"), Reply.bulk("v"))
            assertReply(try admin.command("INCR", "\(p)n"), Reply.int(1))
            _ = try admin.command("ECHO", "\(p)end")
            let want = try monitorLines(direct, until: "\(p)end")
            let got = try monitorLines(proxied, until: "\(p)end")
            XCTAssertEqual(got, want, "the feed through respool is the server's")
            XCTAssertTrue(want.contains { String(decoding: $0, as: UTF8.self).contains("\"SET\" \"\(p)k\" \"v\"") }, "\(want.map { showBytes($0) })")

            XCTAssertEqual(try respool.metric("respool_pins_total", "monitor"), 1)
            XCTAssertEqual(try respool.metric("respool_upstream_connections", "pinned"), 1)
            guard case .integer(let idNumber) = id else { return XCTFail("CLIENT ID: \(show(id))") }
            let info = try respool.clientInfo(id: idNumber)
            XCTAssertEqual(info?["state"] as? String, "pinned", "\(String(describing: info))")
            XCTAssertEqual(info?["pin"] as? String, "monitor")
            XCTAssertEqual(try respool.upstreamsInfo().filter { $0["state"] as? String == "pinned" }.count, 1)
            XCTAssertTrue(respool.waitForLog("msg=\"client pinned an upstream connection"), respool.stdoutText)
            XCTAssertTrue(respool.stdoutText.contains("command=MONITOR"), respool.stdoutText)
            let list = try admin.command("CLIENT", "LIST").string ?? ""
            XCTAssertEqual(list.split(separator: "\n").filter { $0.contains("flags=O") }.count, 2, "two monitors: \(list)")

            // Still respool's client: CLIENT ID is respool's id, CLIENT INFO shows the O flag.
            assertReply(try proxied.command("CLIENT", "ID"), id, "CLIENT ID while monitoring")
            XCTAssertTrue(try proxied.command("CLIENT", "INFO").string?.contains("flags=O ") == true)
            assertReply(try proxied.command("RESET"), Reply.simple("RESET"))
            // The connection is reset, not closed, and shared again under respool's name.
            XCTAssertTrue(try waitUntil {
                let l = try admin.command("CLIENT", "LIST").string ?? ""
                return l.split(separator: "\n").filter { $0.contains("flags=O") }.count == 1
            }, "the pinned connection left MONITOR")
            XCTAssertEqual(try respool.metric("respool_leases_reset_total"), 1)
            XCTAssertEqual(try respool.metric("respool_upstream_connections", "pinned"), 0)
            assertReply(try proxied.command("GET", "\(p)k"), Reply.bulk("v"), "an ordinary client again")
            assertNoStrayReplies(proxied, "no monitor line after RESET")
            let pool = try redis.poolConnections("pin")
            XCTAssertFalse(pool.isEmpty)
            XCTAssertTrue(pool.allSatisfy { !$0.contains("flags=O") && $0.contains(" db=0 ") }, "\(pool)")
            _ = try direct.command("RESET")
        }
    }

    /// A monitoring client that disconnects gives its connection back reset (no reconnect), and the next client can
    /// use it; MONITOR inside MULTI is queued and refused at EXEC exactly as redis-server does it.
    func testPinnedClientDisconnectingGivesItsConnectionBackReset() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "3", "RESPOOL_NAME": "pin"]) { redis, respool in
            let m = try respool.client()
            assertReply(try m.command("MONITOR"), Reply.ok)
            let connects = try respool.metric("respool_upstream_connects_total")
            m.close()
            let admin = try redis.client()
            XCTAssertTrue(try waitUntil {
                !(try admin.command("CLIENT", "LIST").string ?? "").contains("flags=O")
            }, "the monitor connection left MONITOR")
            XCTAssertTrue(try waitUntil { try respool.metric("respool_leases_reset_total") == 1 })
            XCTAssertEqual(try respool.metric("respool_upstream_connects_total"), connects, "reset, not reconnected")
            XCTAssertEqual(try respool.metric("respool_upstream_connections", "leased"), 0)
            // Cap 3 allows one lease: it is free again.
            let b = try respool.client()
            assertReply(try b.command("MONITOR"), Reply.ok, "the lease is free again")
            assertReply(try b.command("RESET"), Reply.simple("RESET"))
            try assertSameReplies(direct: try redis.client(), proxied: try respool.client(),
                                  [["MULTI"], ["MONITOR"], ["PING"], ["EXEC"], ["PING", "after"]], "MONITOR inside MULTI")
        }
    }

    /// 100 clients send MONITOR at once with a cap of 4 (two leases): two are pinned, every other gets the wait
    /// timeout's error and keeps working, nothing hangs, and the server never sees more than 4 connections from
    /// respool. Once the monitors close, another client can pin.
    func testCapHoldsWithAHundredClientsPinning() throws {
        try requireRealRespool()
        raiseFileLimit()
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "4", "RESPOOL_WAIT_TIMEOUT": "1", "RESPOOL_NAME": "pin"]) { redis, respool in
            let clients = try (0..<100).map { _ in try respool.client(timeout: 20) }
            for c in clients { try c.sendCommand(["MONITOR"]) }
            var pinned: [TestClient] = []
            var refused = 0
            for (k, c) in clients.enumerated() {
                let r = try c.readValue(timeout: 20)
                if r == Reply.ok {
                    pinned.append(c)
                } else if let e = r.errorText, e.hasPrefix("ERR respool: no upstream connection free within 1s (cap 4 reached)") {
                    refused += 1
                    assertReply(try c.command("ECHO", "c\(k)"), Reply.bulk("c\(k)"), "client \(k) goes on")
                } else {
                    XCTFail("client \(k): \(show(r))")
                }
            }
            XCTAssertEqual(pinned.count, 2, "leases at most cap - 2")
            XCTAssertEqual(refused, 98)
            let ours = (try redis.client().command("CLIENT", "LIST").string ?? "").split(separator: "\n").filter { $0.contains("name=pin:") }
            XCTAssertLessThanOrEqual(ours.count, 4, "\(ours)")
            for c in pinned { c.close() }
            XCTAssertTrue(try waitUntil { try respool.metric("respool_leases_reset_total") == 2 })
            let late = try respool.client()
            assertReply(try late.command("MONITOR"), Reply.ok, "a lease is free again")
        }
    }
}

/// CLIENT TRACKING (RESP3 pushes on the pinned connection; RESP2 REDIRECT to another respool client through the
/// subscriber connection) and CLIENT UNBLOCK (respool's ids translated to the server's), each compared with the same
/// commands sent to the same redis-server directly.
final class TrackingTests: IntegrationTestCase {
    func integer(_ v: RESPValue) -> Int64 {
        if case .integer(let n) = v { return n }
        XCTFail("not an integer: \(show(v))")
        return -1
    }

    /// RESP3, default mode and OPTIN: the tracking client's connection is pinned while tracking is on, and the
    /// invalidation pushes it gets are byte for byte a direct RESP3 client's; OFF gives the connection back.
    func testResp3TrackingGetsTheServersInvalidations() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "4"]) { redis, respool in
            let p = keyPrefix()
            let writer = try redis.client()
            let direct = try redis.client(), proxied = try respool.client()
            for c in [direct, proxied] {
                _ = try c.command("HELLO", "3")   // (its id differs: not compared)
                assertReply(try c.command("CLIENT", "TRACKING", "ON"), Reply.ok)
                assertReply(try c.command("SET", "\(p)a", "1"), Reply.ok)
                assertReply(try c.command("GET", "\(p)a"), Reply.bulk("1"))
            }
            XCTAssertEqual(try respool.metric("respool_upstream_connections", "pinned"), 1)
            XCTAssertEqual(try respool.metric("respool_pins_total", "tracking"), 1)
            assertReply(try proxied.command("CLIENT", "GETREDIR"), Reply.int(0), "tracking without REDIRECT")
            assertReply(try writer.command("SET", "\(p)a", "2"), Reply.ok)
            let want = try direct.readRawReply(timeout: 10)
            XCTAssertEqual(try proxied.readRawReply(timeout: 10), want, "the invalidation push: \(showBytes(want))")
            XCTAssertTrue(want.starts(with: Array(">2\r\n$10\r\ninvalidate\r\n".utf8)), showBytes(want))
            // OPTIN: only keys read right after CLIENT CACHING YES are tracked.
            try assertSameReplies(direct: direct, proxied: proxied,
                                  [["CLIENT", "TRACKING", "ON", "OPTIN"], ["CLIENT", "CACHING", "YES"], ["GET", "\(p)b"],
                                   ["GET", "\(p)c"], ["CLIENT", "TRACKING", "OFF"], ["CLIENT", "CACHING", "YES"]], "OPTIN")
            assertReply(try proxied.command("CLIENT", "GETREDIR"), Reply.int(-1), "tracking off")
            XCTAssertTrue(try waitUntil { try respool.metric("respool_upstream_connections", "pinned") == 0 }, "OFF ends the pin")
            for c in [direct, proxied] {
                assertReply(try c.command("CLIENT", "TRACKING", "ON", "OPTIN"), Reply.ok)
                assertReply(try c.command("CLIENT", "CACHING", "YES"), Reply.ok)
                assertReply(try c.command("GET", "\(p)b"), .null)
                assertReply(try c.command("GET", "\(p)c"), .null)
            }
            _ = try writer.command("MSET", "\(p)c", "x", "\(p)b", "y")
            let wantB = try direct.readRawReply(timeout: 10)
            XCTAssertEqual(try proxied.readRawReply(timeout: 10), wantB, "only b was cached: \(showBytes(wantB))")
            XCTAssertTrue(String(decoding: wantB, as: UTF8.self).contains("\(p)b"))
            assertNoStrayReplies(proxied, "no invalidation for c")
        }
    }

    /// RESP2 with REDIRECT, the pair redis-py and Lettuce use: one client subscribes to __redis__:invalidate, another
    /// tracks with REDIRECT to its (respool) id; the subscriber gets the server's invalidation message byte for byte
    /// as a direct pair does. GETREDIR answers the id given; an unknown id gets the server's error; CLIENT UNBLOCK
    /// of a respool client blocked in BLPOP unblocks it (TIMEOUT and ERROR), of one not blocked answers 0.
    func testResp2RedirectAndUnblockTranslateRespoolIds() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "5"]) { redis, respool in
            let p = keyPrefix()
            let writer = try redis.client()
            func pair(_ open: () throws -> TestClient) throws -> (sub: TestClient, tracker: TestClient, subID: Int64) {
                let sub = try open(), tracker = try open()
                let subID = integer(try sub.command("CLIENT", "ID"))
                _ = try sub.command("SUBSCRIBE", "__redis__:invalidate")
                assertReply(try tracker.command("CLIENT", "TRACKING", "ON", "REDIRECT", String(subID)), Reply.ok)
                assertReply(try tracker.command("CLIENT", "GETREDIR"), Reply.int(Int(subID)))
                assertReply(try tracker.command("GET", "\(p)k"), Reply.nilBulk)
                return (sub, tracker, subID)
            }
            let d = try pair { try redis.client() }
            let r = try pair { try respool.client() }
            assertReply(try writer.command("SET", "\(p)k", "v"), Reply.ok)
            let want = try d.sub.readRawReply(timeout: 10)
            XCTAssertEqual(try r.sub.readRawReply(timeout: 10), want, "the invalidation message: \(showBytes(want))")
            XCTAssertTrue(String(decoding: want, as: UTF8.self).contains("__redis__:invalidate"))
            try assertSameReplies(direct: try redis.client(), proxied: try respool.client(),
                                  [["CLIENT", "TRACKING", "ON", "REDIRECT", "987654"], ["PING"]], "REDIRECT to an unknown id")
            assertReply(try r.tracker.command("CLIENT", "TRACKING", "OFF"), Reply.ok)
            _ = try r.sub.command("UNSUBSCRIBE")
            XCTAssertTrue(try waitUntil { try respool.metric("respool_upstream_connections", "pubsub") == 0 },
                          "the subscriber connection closes once nobody subscribes or tracks")

            // CLIENT UNBLOCK: the same three cases directly and through respool.
            func unblockRound(_ open: () throws -> TestClient, blockedID: (TestClient) throws -> Int64) throws -> [[UInt8]] {
                var out: [[UInt8]] = []
                for mode in [[], ["ERROR"]] {
                    let blocked = try open(), other = try open()
                    let id = try blockedID(blocked)
                    try blocked.sendCommand(["BLPOP", "\(p)never", "0"])
                    XCTAssertTrue(try waitUntil { try redis.blockedClients(in: "blpop").count == 1 }, "BLPOP is blocked")
                    try other.sendCommand(["CLIENT", "UNBLOCK", String(id)] + mode)
                    out.append(try other.readRawReply(timeout: 10))
                    out.append(try blocked.readRawReply(timeout: 10))
                    try other.sendCommand(["CLIENT", "UNBLOCK", String(id)])
                    out.append(try other.readRawReply(timeout: 10))
                }
                return out
            }
            let wantUnblock = try unblockRound({ try redis.client() }) { integer(try $0.command("CLIENT", "ID")) }
            let gotUnblock = try unblockRound({ try respool.client() }) { integer(try $0.command("CLIENT", "ID")) }
            XCTAssertEqual(gotUnblock, wantUnblock, "\(gotUnblock.map { showBytes($0) }) against \(wantUnblock.map { showBytes($0) })")
            XCTAssertEqual(wantUnblock.first, Array(":1\r\n".utf8))
        }
    }

    /// A RESP3 tracker with REDIRECT to a respool client that has not subscribed yet, while idle shared connections
    /// exist: the pool makes one of them the subscriber connection (no new handshake), and the tracker gets its OK as
    /// directly, then the redirect target gets the invalidations once it subscribes. (redis-py's suite in RESP3 hung
    /// here: the switched connection was never marked ready.)
    func testRedirectToAClientNotYetSubscribedWhileIdleConnectionsExist() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "6", "RESPOOL_MIN_SERVER_CONNECTIONS": "4"]) { redis, respool in
            XCTAssertTrue(try waitUntil { try respool.metric("respool_upstream_connections", "shared") == 4 }, "the minimum is open")
            let p = keyPrefix()
            let writer = try redis.client()
            func pair(_ open: () throws -> TestClient) throws -> (target: TestClient, tracker: TestClient, out: [[UInt8]]) {
                let target = try open(), tracker = try open()
                let targetID = integer(try target.command("CLIENT", "ID"))
                var out: [[UInt8]] = []
                for c in [["HELLO", "3"], ["CLIENT", "TRACKING", "ON", "REDIRECT", String(targetID)], ["GET", "\(p)k"]] {
                    try tracker.sendCommand(c)
                    out.append(try tracker.readRawReply(timeout: 10))
                }
                out.removeFirst()   // HELLO's reply carries the client id, which differs
                try target.sendCommand(["SUBSCRIBE", "__redis__:invalidate"])
                out.append(try target.readRawReply(timeout: 10))
                return (target, tracker, out)
            }
            let d = try pair { try redis.client() }
            let r = try pair { try respool.client() }
            XCTAssertEqual(r.out, d.out, "\(r.out.map { showBytes($0) }) against \(d.out.map { showBytes($0) })")
            assertReply(try writer.command("SET", "\(p)k", "v"), Reply.ok)
            let want = try d.target.readRawReply(timeout: 10)
            XCTAssertEqual(try r.target.readRawReply(timeout: 10), want, "the invalidation message: \(showBytes(want))")
        }
    }
}
