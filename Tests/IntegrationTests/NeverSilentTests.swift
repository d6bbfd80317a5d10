// Every command gets exactly one reply, in order, or its client is closed with a logged reason, whatever the server,
// the network or another client does. Each test here is a case where respool once left a client silent, answered it
// wrongly or let something outside it (the wall clock, a deep reply, a key named like an option) change what it did;
// where it can, the test sends the same commands to redis-server directly and compares the bytes.
import Foundation
import RESP
import XCTest

final class NeverSilentTests: IntegrationTestCase {
    // MARK: 1. pub/sub errors from the server

    /// An upstream user without channel permissions: the server refuses the subscriber connection's SUBSCRIBE. Each
    /// client gets the server's own error in its place, keeps its order, and goes on; a second client asking for the
    /// same channel gets the same error (it once waited forever for a confirmation that never came).
    func testSubscriptionsTheServerRefusesAreAnsweredWithItsError() throws {
        try requireRealRespool()
        try withRedis { redis in
            let admin = try redis.client()
            assertReply(try admin.command("ACL", "SETUSER", "app", "on", ">pw", "~*", "resetchannels", "&ok*", "+@all"), Reply.ok)
            try withRespool(upstream: redis, upstreamURL: "redis://app:pw@127.0.0.1:\(redis.port)") { respool in
                let p = keyPrefix()
                func direct() throws -> TestClient {
                    let c = try TestClient(redis.endpoint)
                    assertReply(try c.command("AUTH", "app", "pw"), Reply.ok)
                    return c
                }
                try assertSameReplies(direct: direct(), proxied: respool.client(),
                                      [["SUBSCRIBE", "ch"], ["PING"], ["GET", "\(p)k"], ["SUBSCRIBE", "ch"], ["ECHO", "after"]],
                                      "refused channel, RESP2")
                // A pipeline mixing refused and allowed names, in subscribed mode.
                let d = try direct(), c = try respool.client()
                try assertSameReplies(direct: d, proxied: c,
                                      [["SUBSCRIBE", "ok1", "bad"], ["SUBSCRIBE", "ok1"], ["PSUBSCRIBE", "ok*"],
                                       ["PSUBSCRIBE", "x*"], ["PING"], ["SUBSCRIBE", "bad2", "ok2"], ["PING", "m"]],
                                      "mixed names")
                // Both are subscribed to ok1 and ok*, and nothing else: one PUBLISH reaches each twice.
                assertReply(try admin.command("PUBLISH", "ok1", "hello"), Reply.int(4), "channel and pattern, of the direct client and of respool's subscriber connection")
                XCTAssertEqual(try c.readRawReplies(2), try d.readRawReplies(2), "message and pmessage")
                // Several clients at once, in RESP3 as well: each gets the error, none waits.
                let clients = try (0..<4).map { _ in try respool.client() }
                for (k, cl) in clients.enumerated() {
                    if k % 2 == 1 { _ = try cl.command("HELLO", "3") }
                    try cl.sendCommand(["SUBSCRIBE", "bad3"])
                    try cl.sendCommand(["ECHO", "c\(k)"])
                }
                for (k, cl) in clients.enumerated() {
                    assertReply(try cl.readValue(), Reply.error("NOPERM this user has no permissions to access one of the channels used as arguments"), "client \(k)")
                    assertReply(try cl.readValue(), Reply.bulk("c\(k)"), "client \(k) goes on")
                }
            }
        }
    }

    // MARK: 2. a KEYS scan cut off

    /// RESPOOL_KEYS=scan: the SCAN steps of a KEYS are cut off when their connection is closed (here by the command
    /// timeout, while a script holds the server). The client gets one error for its KEYS, can go on, and is still
    /// closed when it idles (its scan once stayed marked as running, which exempted it from the idle timeout).
    func testKeysScanCutOffIsAnsweredAndForgotten() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_KEYS": "scan", "RESPOOL_COMMAND_TIMEOUT": "0.5", "RESPOOL_CLIENT_IDLE_TIMEOUT": "2",
                                      "RESPOOL_MAX_SERVER_CONNECTIONS": "3"]) { redis, respool in
            let p = keyPrefix()
            let admin = try redis.client()
            var fill: [[String]] = []
            for i in 0..<6000 { fill.append(["SET", "\(p)\(i)", "v"]) }
            _ = try admin.pipeline(fill)
            let busy = "local t = redis.call('TIME') local s = t[1] * 1000000 + t[2] " +
                "repeat local n = redis.call('TIME') until n[1] * 1000000 + n[2] - s > 1500000 return 1"
            let holder = try respool.client()
            let scanner = try respool.client()
            try scanner.sendCommand(["KEYS", "\(p)*"])
            try holder.sendCommand(["EVAL", busy, "0"])
            // Fill-first puts both on the one shared connection: the script holds the server past the command
            // timeout, wherever it falls between the SCAN steps.
            assertErrorReply(try scanner.readValue(), prefix: "ERR upstream connection lost: command timed out", "the KEYS")
            assertErrorReply(try holder.readValue(), prefix: "ERR upstream connection lost: command timed out", "the script")
            assertReply(try scanner.command("ECHO", "still here"), Reply.bulk("still here"))
            XCTAssertEqual(scanner.waitForClose(timeout: 10), .closed(reset: false), "closed by the idle timeout")
            XCTAssertTrue(respool.stdoutText.contains("reason=idle_timeout"), respool.stdoutText)
        }
    }

    /// RESPOOL_KEYS=scan: commands pipelined after a KEYS wait for its answer (they once ran between its SCAN steps
    /// and their replies overtook it).
    func testCommandsAfterAScannedKeysKeepTheirOrder() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_KEYS": "scan"]) { redis, respool in
            let p = keyPrefix()
            var fill: [[String]] = []
            for i in 0..<5000 { fill.append(["SET", "\(p)\(i)", "v"]) }
            _ = try redis.client().pipeline(fill)
            let c = try respool.client()
            let replies = try c.pipeline([["KEYS", "\(p)*"], ["ECHO", "after"], ["KEYS", "\(p)1*"], ["PING"]])
            guard case .array(let keys?) = replies[0] else { return XCTFail("KEYS first: \(show(replies[0]))") }
            XCTAssertEqual(keys.count, 5000)
            assertReply(replies[1], Reply.bulk("after"))
            guard case .array(let ones?) = replies[2] else { return XCTFail("second KEYS: \(show(replies[2]))") }
            XCTAssertEqual(ones.count, 1111)
            assertReply(replies[3], Reply.pong)
        }
    }

    // MARK: 3. HELLO inside WATCH

    /// HELLO 3 after WATCH: the client holds a lease, and its replies must switch to RESP3 on it as they would on a
    /// direct connection (the leased connection once stayed RESP2).
    func testHelloInsideWatchSwitchesTheLeasedConnection() throws {
        try requireRealRespool()
        try withRedisAndRespool { redis, respool in
            let d = try redis.client(), c = try respool.client()
            let keys = (keyPrefix("direct"), keyPrefix("respool"))
            try assertSameReplies(direct: d, proxied: c, [["HSET", "{p}h", "f", "v"], ["WATCH", "{p}h"]], keys: keys)
            for client in [d, c] {
                guard case .map = try client.command("HELLO", "3") else { return XCTFail("HELLO 3 answers a map") }
            }
            try assertSameReplies(direct: d, proxied: c, [["HGETALL", "{p}h"], ["MULTI"], ["HGETALL", "{p}h"], ["EXEC"],
                                                          ["HGETALL", "{p}h"], ["WATCH", "{p}h"]], "RESP3 inside and after WATCH", keys: keys)
            for client in [d, c] {
                guard case .array = try client.command("HELLO", "2") else { return XCTFail("HELLO 2 answers an array") }
            }
            try assertSameReplies(direct: d, proxied: c, [["HGETALL", "{p}h"], ["UNWATCH"], ["HGETALL", "{p}h"]], "back to RESP2", keys: keys)
        }
    }

    // MARK: 4. error texts are one line

    /// Errors respool composes never carry a CR or LF from what the client sent (a command named "GE\r\n+OK" once put
    /// a forged +OK line into the client's own reply stream); the texts are redis-server's, byte for byte.
    func testErrorsAreOneLineAsRedisWritesThem() throws {
        try requireRealRespool()
        try withRedisAndRespool { redis, respool in
            // Which commands exist is the server's answer to COMMAND, asked for once its first connection is ready.
            XCTAssertTrue(respool.waitForLog("command table learned from the server"))
            try assertSameReplies(direct: redis.client(), proxied: respool.client(),
                                  [["SUBSCRIBE", "a"], ["GE\r\n+OK"], ["GET", "x\r\n+OK"], ["NO\r\nSUCH", "arg\r\n1", "arg2"], ["PING"]],
                                  "RESP2 subscribed mode")
            try assertSameReplies(direct: redis.client(), proxied: respool.client(),
                                  [["HELLO", "3", "x\r\n+OK"], ["CLIENT", "KILL", "TYPE", "x\r\n+OK"], ["CLIENT", "LIST", "TYPE", "x\r\n+OK"],
                                   ["CLIENT", "NOSUCH\r\n+OK"], ["CLIENT", "SETNAME", "a\r\nb"], ["SELECT", "x\r\n+OK"],
                                   ["CLIENT", "REPLY", "x\r\n+OK"], ["PING"]],
                                  "local commands")
        }
    }

    // MARK: 5. the client password

    /// RESPOOL_CLIENT_PASSWORD: the password followed by NUL bytes (256 of them once passed, the length having been
    /// compared in 8 bits) is a wrong password, as on redis-server with the same requirepass.
    func testPasswordWithTrailingBytesIsRefused() throws {
        try requireRealRespool()
        let secret = "s3cret-\(getpid())"
        try withRedisAndRespool(password: secret, env: ["RESPOOL_CLIENT_PASSWORD": secret]) { redis, respool in
            let pw = Array(secret.utf8)
            for extra in [[UInt8](repeating: 0, count: 256), [0], [UInt8](repeating: 0, count: 512), Array("x".utf8)] {
                for args in [[Array("AUTH".utf8), pw + extra], [Array("AUTH".utf8), Array("default".utf8), pw + extra],
                             [Array("HELLO".utf8), Array("2".utf8), Array("AUTH".utf8), Array("default".utf8), pw + extra]] {
                    let d = try TestClient(redis.endpoint), c = try respool.client()
                    try d.send(RESPWriter.command(args))
                    try c.send(RESPWriter.command(args))
                    XCTAssertEqual(showBytes(try c.readRawReply()), showBytes(try d.readRawReply()), "\(args.count) args, \(extra.count) extra bytes")
                    assertErrorReply(try c.command("GET", "k"), prefix: "NOAUTH", "still unauthenticated")
                }
            }
            let c = try respool.client()
            assertReply(try c.command(bytes: [Array("AUTH".utf8), pw]), Reply.ok, "the password itself")
            assertReply(try c.command("PING"), Reply.pong)
        }
    }

    // MARK: 6. deadlines and the wall clock

    /// The wall clock jumps an hour ahead (as an NTP step does; libfaketime fakes it for respool alone): no client
    /// is closed as idle. Deadlines, ages and back-offs run on the monotonic clock. (libevent's cached wall time
    /// follows a step within 5 s; the test waits for 7 stats lines, one a second, after the step.)
    func testWallClockStepClosesNoClient() throws {
        try requireRealRespool()
        if ProcessInfo.processInfo.environment["RESPOOL_IT_SANITIZER"] != nil {
            // ASan's runtime must be the first library loaded; libfaketime's LD_PRELOAD would go before it.
            throw XCTSkip("libfaketime's LD_PRELOAD cannot be combined with a sanitized respool (runs in the plain pass)")
        }
        let lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
        guard FileManager.default.fileExists(atPath: lib) else { return XCTFail("\(lib) is missing: scripts/setup installs libfaketime") }
        let dir = try makeTempDir("faketime")
        defer { removeTree(dir) }
        let clockFile = "\(dir)/offset"
        try "+0\n".write(toFile: clockFile, atomically: true, encoding: .utf8)
        try withRedisAndRespool(env: ["LD_PRELOAD": lib, "FAKETIME_TIMESTAMP_FILE": clockFile, "FAKETIME_NO_CACHE": "1",
                                      "FAKETIME_DONT_FAKE_MONOTONIC": "1", "RESPOOL_STATS_INTERVAL": "1",
                                      "RESPOOL_CLIENT_IDLE_TIMEOUT": "30"]) { _, respool in
            let idle = try respool.client()
            assertReply(try idle.command("PING"), Reply.pong)
            let linesBefore = respool.stdoutText.components(separatedBy: "msg=stats").count
            try "+3600\n".write(toFile: clockFile, atomically: true, encoding: .utf8)
            XCTAssertTrue(waitUntil(timeout: 20) { respool.stdoutText.components(separatedBy: "msg=stats").count >= linesBefore + 7 },
                          "seven stats lines after the step")
            XCTAssertFalse(respool.stdoutText.contains("reason=idle_timeout"), respool.stdoutText)
            assertReply(try idle.command("PING"), Reply.pong, "the idle client is still connected")
        }
    }

    // MARK: 7. accept failures

    /// Descriptor exhaustion (`ulimit -n 64`, which respool cannot raise, and 120 clients at once): respool lowers
    /// its max clients to what fits (64 - 32 reserved - the cap of 2 = 30) and says so once; every client gets PONG
    /// or `-ERR max number of clients reached` and is closed, none is left hanging in the backlog; rejections are
    /// logged at most once a second; once they are gone the loop's events are back to the baseline.
    func testDescriptorLimitLowersMaxClientsAndNoClientHangs() throws {
        try requireRealRespool()
        try withRedis { redis in
            try withRespool(upstream: redis, env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "2"], fileLimit: 64) { respool in
                XCTAssertTrue(respool.stdoutText.contains("max clients lowered to fit"), respool.stdoutText)
                XCTAssertEqual(logfmtValue(respool.startedLine, key: "max_clients"), "30", respool.startedLine)
                let ping = try respool.client()
                assertReply(try ping.command("PING"), Reply.pong)
                let baseline = try respool.metric("respool_event_loop_events")
                let clients = try (0..<120).map { _ in try TestClient(respool.endpoint, timeout: 10) }
                for c in clients { try c.sendCommand(["PING"]) }
                var pong = 0, rejected = 0
                for (k, c) in clients.enumerated() {
                    let r = try c.readValue(timeout: 10)
                    if r == Reply.pong {
                        pong += 1
                    } else if r.errorText == "ERR max number of clients reached" {
                        rejected += 1
                        if case .closed = c.waitForClose(timeout: 10) {} else { XCTFail("client \(k) is closed after the error") }
                    } else {
                        XCTFail("client \(k): \(show(r))")
                    }
                }
                XCTAssertEqual(pong, 29, "max clients (30) minus the first")
                XCTAssertEqual(rejected, 91)
                XCTAssertEqual(try respool.metric("respool_clients_rejected_total"), 91)
                let lines = respool.stdoutText.components(separatedBy: "msg=\"client rejected\"").count - 1
                XCTAssertTrue(lines >= 1 && lines <= 20, "rejections logged at most once a second: \(lines) lines")
                XCTAssertEqual(respool.stdoutText.components(separatedBy: "max clients lowered to fit").count - 1, 1, "said once")
                for c in clients { c.close() }
                XCTAssertTrue(waitUntil(timeout: 20) { (try? respool.metric("respool_clients")) == 1 })
                assertReply(try ping.command("PING"), Reply.pong)
                XCTAssertEqual(try respool.metric("respool_event_loop_events"), baseline, "events allocated by the loop, back to the baseline")
            }
        }
    }

    /// A soft open-files limit below what RESPOOL_MAX_CLIENTS needs, with a hard limit above it: respool raises the
    /// soft limit (100 clients + cap 2 + 32 reserved = 134) and keeps its max clients, without a warning.
    func testSoftDescriptorLimitIsRaised() throws {
        try requireRealRespool()
        try withRedis { redis in
            var env = respoolEnv(upstreamURL: redis.url)
            env["RESPOOL_MAX_CLIENTS"] = "100"
            env["RESPOOL_MAX_SERVER_CONNECTIONS"] = "2"
            let respool = try Respool.launch(env: env, softFileLimit: 64)
            defer { respool.terminate() }
            XCTAssertEqual(logfmtValue(respool.startedLine, key: "max_clients"), "100", respool.startedLine)
            XCTAssertFalse(respool.stdoutText.contains("max clients lowered"), respool.stdoutText)
            let limits = try String(contentsOfFile: "/proc/\(respool.process!.pid)/limits", encoding: .utf8)
            let line = limits.split(separator: "\n").first { $0.hasPrefix("Max open files") } ?? ""
            XCTAssertEqual(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst(3).first, "134", String(line))
        }
    }

    // MARK: 8. fill-first and connections still connecting

    /// Clients that arrive while the pool's only connection is still in its handshake (the server is paused) queue
    /// behind it instead of each opening another connection up to the cap.
    func testClientsArrivingDuringAHandshakeShareTheConnection() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "8", "RESPOOL_NAME": "itfill\(getpid())"]) { redis, respool in
            let warm = try respool.client()
            assertReply(try warm.command("PING"), Reply.pong)
            let connects = try respool.metric("respool_upstream_connects_total")
            let admin = try redis.client()
            let pool = try redis.poolConnections("itfill\(getpid())")
            XCTAssertEqual(pool.count, 1, "\(pool)")
            guard let id = pool.first?.split(separator: " ").first(where: { $0.hasPrefix("id=") })?.dropFirst(3) else { return XCTFail("\(pool)") }
            // Atomically: pause every client for 3 s, and close respool's connection, so the one it opens next waits
            // for its HELLO until the pause ends.
            let r = try admin.pipeline([["MULTI"], ["CLIENT", "PAUSE", "3000", "ALL"], ["CLIENT", "KILL", "ID", String(id)], ["EXEC"]])
            XCTAssertEqual(r.last, .array([Reply.ok, Reply.int(1)]), r.map { show($0) }.joined(separator: " "))
            XCTAssertTrue(try waitUntil { try respool.metric("respool_upstream_connects_total") == connects + 1 }, "reconnected")
            let clients = try (0..<20).map { _ in try respool.client() }
            for (k, c) in clients.enumerated() { try c.sendCommand(["ECHO", "c\(k)"]) }
            for (k, c) in clients.enumerated() { assertReply(try c.readValue(), Reply.bulk("c\(k)"), "client \(k)") }
            XCTAssertEqual(try respool.metric("respool_upstream_connects_total"), connects + 1, "no connection opened beside the one connecting")
        }
    }

    // MARK: 9. XREAD options

    /// A stream key named "block" (or "count") is a key, not the BLOCK option: the read is not leased (with a cap of
    /// 1 a lease is refused, which once made respool answer an error for a plain read).
    func testXreadOfAStreamNamedBlockIsAnOrdinaryRead() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "1"]) { redis, respool in
            try assertSameReplies(direct: redis.client(), proxied: respool.client(), [
                ["XREAD", "STREAMS", "block", "0"], ["XADD", "block", "1-1", "f", "v"], ["XREAD", "STREAMS", "block", "0"],
                ["XREAD", "COUNT", "1", "STREAMS", "block", "0"], ["XREAD", "STREAMS", "count", "block", "0", "0"],
                ["XGROUP", "CREATE", "block", "g", "0"], ["XREADGROUP", "GROUP", "g", "c", "STREAMS", "block", ">"],
                ["XREADGROUP", "GROUP", "g", "c", "COUNT", "1", "STREAMS", "block", "0"], ["DEL", "block"],
            ])
            assertErrorReply(try respool.client().command("XREAD", "BLOCK", "10", "STREAMS", "block", "$"),
                             prefix: "ERR respool: this command needs a dedicated upstream connection", "a real BLOCK is still leased")
        }
    }

    // MARK: 10. deep replies

    /// A script whose reply nests arrays until Lua's stack runs out (7,995 levels on redis 7.0, then an error): the
    /// reply passes byte for byte, and the commands around it, of this client and another one on the same
    /// connection, are answered as usual (the framer once gave up at 64 levels and dropped the connection).
    func testRepliesNestedAnyDepthPassUntouched() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "2"]) { redis, respool in
            let deep = "local a = {}; local b = {a}; a[1] = b; return a"
            let other = try respool.client()
            try other.sendCommand(["SET", "k", "v"])
            try assertSameReplies(direct: redis.client(), proxied: respool.client(),
                                  [["PING"], ["EVAL", deep, "0"], ["ECHO", "after"], ["EVAL", "return {{{{{{{{{{1}}}}}}}}}}", "0"]])
            assertReply(try other.readValue(), Reply.ok)
            assertReply(try other.command("GET", "k"), Reply.bulk("v"))
            XCTAssertFalse(respool.stdoutText.contains("upstream connection lost"), respool.stdoutText)
        }
    }
}
