// A script that holds the server can be killed through respool, and while it runs other clients get the server's
// -BUSY at once, as they would directly, instead of waiting silently behind it: SCRIPT KILL, FUNCTION KILL and
// SHUTDOWN go to the control connection (the slot of the cap that ordinary traffic never fills), and a shared
// connection that answered nothing for a progress interval (0.25 s) while requests waited on it is passed over for
// new work. Each round is run directly against the same redis-server first, and respool's replies are compared with
// the server's byte for byte.
import Foundation
import RESP
import XCTest

final class ScriptControlTests: IntegrationTestCase {
    /// redis-server answers other clients -BUSY once a script has run this long (ms; the default is 5000).
    static let busyArgs = ["--busy-reply-threshold", "100"]
    static let spin = "while true do end"
    static let spinLibrary = "#!lua name=spinlib\nredis.register_function('spin', function() while true do end end)"

    func isBusy(_ v: RESPValue) -> Bool {
        if case .error(let e) = v { return e.starts(with: Array("BUSY ".utf8)) }
        return false
    }

    /// Waits until the server runs a script past its busy threshold (a direct PING answers -BUSY).
    func waitForServerBusy(_ redis: RedisServer, file: StaticString = #filePath, line: UInt = #line) throws {
        let probe = try redis.client()
        XCTAssertTrue(try waitUntil { isBusy(try probe.command("PING")) }, "the server runs the script", file: file, line: line)
    }

    /// Waits until respool has marked `count` connections as stuck (or none, with 0).
    func waitForStuck(_ respool: Respool, _ count: Int, file: StaticString = #filePath, line: UInt = #line) throws {
        XCTAssertTrue(try waitUntil {
            try respool.upstreamsInfo().filter { ($0["stuck"] as? NSNumber)?.boolValue == true }.count == count
        }, "\(count) upstream connection(s) stuck: \((try? respool.upstreamsInfo()) ?? [])", file: file, line: line)
    }

    /// One round: `runner` starts the endless script, `other` sends a pipeline while it runs, `killer` kills it.
    /// Returns the raw replies: the other client's, the kill's, the script's, and the runner's next ECHO.
    func killRound(runner: TestClient, other: TestClient, killer: TestClient, start: [String], kill: [String],
                   whenBusy: () throws -> Void) throws -> [[UInt8]] {
        try runner.sendCommand(start)
        try whenBusy()
        try other.send(RESPWriter.command(["GET", "sc:k"]) + RESPWriter.command(["ECHO", "other"]) + RESPWriter.command(["INCR", "sc:n"]))
        var replies = try other.readRawReplies(3, timeout: 10)
        try killer.sendCommand(kill)
        replies.append(try killer.readRawReply(timeout: 10))
        replies.append(try runner.readRawReply(timeout: 10))
        replies.append(contentsOf: try runner.readRawRepliesAfter(["ECHO", "runner"]))
        replies.append(contentsOf: try other.readRawRepliesAfter(["ECHO", "other again"]))
        return replies
    }

    /// EVAL that never ends, then FCALL of a function that never ends: other clients get -BUSY at once, SCRIPT KILL
    /// and FUNCTION KILL from a third client stop them, each reply byte for byte what the server gives direct
    /// clients. /healthz says the server is busy meanwhile, and the stuck mark goes once the server answers again.
    func testBusyScriptsAnswerOthersBusyAndCanBeKilled() throws {
        try requireRealRespool()
        try withRedisAndRespool(redisArgs: Self.busyArgs, env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "4", "RESPOOL_NAME": "sc"]) { redis, respool in
            assertReply(try redis.client().command("FUNCTION", "LOAD", Self.spinLibrary), Reply.bulk("spinlib"))
            for (start, kill) in [(["EVAL", Self.spin, "0"], ["SCRIPT", "KILL"]), (["FCALL", "spin", "0"], ["FUNCTION", "KILL"])] {
                let expected = try killRound(runner: redis.client(), other: redis.client(), killer: redis.client(),
                                             start: start, kill: kill) { try waitForServerBusy(redis) }
                XCTAssertTrue(expected[0].starts(with: Array("-BUSY ".utf8)), showBytes(expected[0]))
                // Through respool: the three clients have used the pool before, so fill-first puts them all on the
                // connection the script will hold.
                let clients = try (0..<3).map { _ in try respool.client() }
                for c in clients { assertReply(try c.command("ECHO", "warm"), Reply.bulk("warm")) }
                let got = try killRound(runner: clients[0], other: clients[1], killer: clients[2], start: start, kill: kill) {
                    try waitForServerBusy(redis)
                    try waitForStuck(respool, 1)
                    XCTAssertGreaterThanOrEqual(try respool.metric("respool_upstream_stuck_total"), 1)
                    let (status, body) = try httpGet(respool.statsPort!, "/healthz")
                    XCTAssertEqual(status, 503, body)
                    XCTAssertTrue(body.contains("BUSY"), "the control connection's PING got the server's -BUSY: \(body)")
                }
                XCTAssertEqual(got.count, expected.count)
                for (k, what) in ["GET", "ECHO", "INCR", "the kill", "the script's error", "runner's ECHO", "ECHO after"].enumerated()
                    where k < got.count && got[k] != expected[k] {
                    XCTFail("\(start[0]) round, \(what): redis-server answered \(showBytes(expected[k])), respool \(showBytes(got[k]))")
                }
                try waitForStuck(respool, 0)
            }
            let names = try redis.client().command("CLIENT", "LIST").string ?? ""
            XCTAssertTrue(names.contains("name=sc:control "), "the kills went on the control connection: \(names)")
            XCTAssertLessThanOrEqual(names.split(separator: "\n").filter { $0.contains("name=sc:") }.count, 4, names)
            XCTAssertEqual(try respool.metric("respool_upstream_connections", "leased"), 0)
            XCTAssertTrue(respool.waitForLog("msg=\"upstream connection answers again\""), respool.stdoutText)
        }
    }

    /// Cap 3: a blocked BLPOP holds the one lease and the script holds the one other data connection, so every slot
    /// ordinary traffic may use is taken. SCRIPT KILL still gets through (the kept slot), a new client's GET waits
    /// behind the script and is answered once it is killed, the BLPOP is served afterwards, and respool never has
    /// more than 3 connections to the server.
    func testKillGetsThroughWhenEveryDataSlotIsTaken() throws {
        try requireRealRespool()
        try withRedisAndRespool(redisArgs: Self.busyArgs, env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "3", "RESPOOL_NAME": "sc"]) { redis, respool in
            let p = keyPrefix()
            let blocked = try respool.client(), runner = try respool.client(), killer = try respool.client()
            try blocked.sendCommand(["BLPOP", "\(p)list", "0"])
            XCTAssertTrue(try waitUntil { try respool.metric("respool_upstream_connections", "leased") == 1 }, "BLPOP holds the lease")
            assertReply(try runner.command("SET", "\(p)k", "v"), Reply.ok)
            try runner.sendCommand(["EVAL", Self.spin, "0"])
            try waitForServerBusy(redis)
            try waitForStuck(respool, 1)
            let late = try respool.client()
            try late.sendCommand(["GET", "\(p)k"])
            assertReply(try killer.command("SCRIPT", "KILL"), Reply.ok, "through the kept slot")
            assertErrorReply(try runner.readValue(), prefix: "ERR Script killed by user with SCRIPT KILL")
            assertReply(try late.readValue(), Reply.bulk("v"), "waited behind the script, answered after it")
            let list = try redis.client().command("CLIENT", "LIST").string ?? ""
            let ours = list.split(separator: "\n").filter { $0.contains("name=sc:") }
            XCTAssertEqual(ours.count, 3, "the cap: \(list)")
            XCTAssertTrue(list.contains("name=sc:control "), list)
            assertReply(try killer.command("RPUSH", "\(p)list", "x"), Reply.int(1))
            assertReply(try blocked.readValue(), Reply.array([Reply.bulk("\(p)list"), Reply.bulk("x")]))
            assertReply(try runner.command("ECHO", "after"), Reply.bulk("after"))
        }
    }

    /// SHUTDOWN NOSAVE while a script runs: the server exits, and the client that sent it sees its connection close
    /// without a reply, as a direct client does (client libraries take that as SHUTDOWN's success); the script's
    /// client gets an error and respool logs why.
    func testShutdownNosaveWhileAScriptRuns() throws {
        try requireRealRespool()
        try withRedisAndRespool(redisArgs: Self.busyArgs, env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "4"]) { redis, respool in
            let runner = try respool.client(), closer = try respool.client()
            assertReply(try runner.command("ECHO", "warm"), Reply.bulk("warm"))
            try runner.sendCommand(["EVAL", Self.spin, "0"])
            try waitForServerBusy(redis)
            try closer.sendCommand(["SHUTDOWN", "NOSAVE"])
            XCTAssertEqual(closer.waitForClose(timeout: 10), .closed(reset: false), "no reply, as directly")
            assertErrorReply(try runner.readValue(), prefix: "ERR upstream connection lost")
            XCTAssertTrue(respool.waitForLog("msg=\"the server closed the connection after a client's SHUTDOWN\""), respool.stdoutText)
            XCTAssertTrue(waitUntil { !redis.isRunning }, "the server is gone")
        }
    }
}

extension TestClient {
    /// Sends one command and reads its raw reply.
    func readRawRepliesAfter(_ command: [String]) throws -> [[UInt8]] {
        try sendCommand(command)
        return [try readRawReply(timeout: 10)]
    }
}
