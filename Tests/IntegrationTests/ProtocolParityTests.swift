// Forwarded commands answer exactly what redis-server answers: each command is sent to redis directly and through
// respool, in RESP2 and in RESP3, and the two decoded replies must be equal (same keys, same server).
import Foundation
import RESP
import XCTest

final class ProtocolParityTests: IntegrationTestCase {
    private func parityCommands(_ p: String) -> [[String]] {
        [
            ["GET", "\(p)str"], ["GET", "\(p)missing"], ["MGET", "\(p)str", "\(p)missing", "\(p)h"],
            ["STRLEN", "\(p)str"], ["GETRANGE", "\(p)str", "0", "2"], ["TYPE", "\(p)h"], ["EXISTS", "\(p)str", "\(p)missing"],
            ["TTL", "\(p)str"], ["OBJECT", "ENCODING", "\(p)h"],
            ["HGETALL", "\(p)h"], ["HGETALL", "\(p)missing"], ["HKEYS", "\(p)h"], ["HMGET", "\(p)h", "f1", "nope"],
            ["HSTRLEN", "\(p)h", "f1"],
            ["SMEMBERS", "\(p)s"], ["SISMEMBER", "\(p)s", "a"], ["SMISMEMBER", "\(p)s", "a", "zz"], ["SINTER", "\(p)s", "\(p)s"],
            ["ZRANGE", "\(p)z", "0", "-1"], ["ZRANGE", "\(p)z", "0", "-1", "WITHSCORES"],
            ["ZRANGEBYSCORE", "\(p)z", "-inf", "+inf", "WITHSCORES"], ["ZSCORE", "\(p)z", "b"], ["ZSCORE", "\(p)z", "nope"],
            ["ZMSCORE", "\(p)z", "a", "nope"], ["ZRANK", "\(p)z", "b"], ["ZCARD", "\(p)z"],
            ["LRANGE", "\(p)l", "0", "-1"], ["LPOS", "\(p)l", "nope"], ["LPOS", "\(p)l", "y"], ["LINDEX", "\(p)l", "99"],
            ["XRANGE", "\(p)x", "-", "+"], ["XREAD", "COUNT", "5", "STREAMS", "\(p)x", "0"], ["XREAD", "STREAMS", "\(p)x", "$"],
            ["XLEN", "\(p)x"],
            ["LCS", "\(p)k1", "\(p)k2"], ["LCS", "\(p)k1", "\(p)k2", "IDX", "WITHMATCHLEN"],
            ["CONFIG", "GET", "maxmemory-policy"],
            ["EVAL", "return true", "0"], ["EVAL", "return false", "0"], ["EVAL", "return {double=3.5}", "0"],
            ["EVAL", "return {big_number='123456789012345678901234567890'}", "0"],
            ["EVAL", "redis.setresp(3); return redis.call('HGETALL', KEYS[1])", "1", "\(p)h"],
            ["EVAL", "return {1, {'a', {2.5}}, nil, 3}", "0"],
            ["EVAL", "return {err='MYERR from lua'}", "0"],
            ["PING"], ["PING", "msg"], ["ECHO", "\r\nbinary\u{0}\r\n"],
            // Errors produced by redis-server.
            ["LPUSH", "\(p)str", "x"], ["SET", "\(p)str", "v", "XX", "YY"], ["INCR", "\(p)str"], ["GET"],
            ["HSET", "\(p)h", "odd"], ["ZADD", "\(p)z", "notanumber", "m"], ["XADD", "\(p)x", "0-0", "f", "v"],
        ]
    }

    private func setUpKeys(_ c: TestClient, _ p: String) throws {
        let setup: [[String]] = [
            ["SET", "\(p)str", "hello"], ["HSET", "\(p)h", "f1", "v1", "f2", "v2", "f3", "v3"],
            ["SADD", "\(p)s", "a", "b", "c", "dd"], ["ZADD", "\(p)z", "1", "a", "2.5", "b", "-3", "c"],
            ["RPUSH", "\(p)l", "x", "y", "z"], ["XADD", "\(p)x", "1-1", "f", "v"], ["XADD", "\(p)x", "2-1", "g", "w", "h", "u"],
            ["SET", "\(p)k1", "ohmytext"], ["SET", "\(p)k2", "mynewtext"],
        ]
        for r in try c.pipeline(setup) where r.errorText != nil {
            throw TestClientError.io("setup failed: \(show(r))")
        }
    }

    private func checkParity(proto: Int) throws {
        try withRedisAndRespool { redis, respool in
            let p = keyPrefix()
            let direct = try redis.client()
            let proxied = try respool.client()
            try setUpKeys(direct, p)
            if proto == 3 {
                guard case .map = try direct.command("HELLO", "3"), case .map = try proxied.command("HELLO", "3") else {
                    return XCTFail("HELLO 3 did not return a map")
                }
            }
            let commands = parityCommands(p)
            // One at a time, then all pipelined: both must equal redis's own replies.
            var expected: [RESPValue] = []
            for cmd in commands {
                let want = try direct.command(cmd)
                expected.append(want)
                let got = try proxied.command(cmd)
                assertReply(got, want, "RESP\(proto) \(cmd): respool vs redis-server")
            }
            let piped = try proxied.pipeline(commands)
            for (i, cmd) in commands.enumerated() where piped[i] != expected[i] {
                XCTFail("RESP\(proto) pipelined \(cmd): expected \(show(expected[i])), got \(show(piped[i]))")
            }
        }
    }

    func testRESP2RepliesMatchRedisServer() throws { try checkParity(proto: 2) }

    /// A command refused before it runs is worded as redis-server's rejectCommand words it; for EXEC that is
    /// "EXECABORT Transaction discarded because of: <reason>", with or without a transaction (before AUTH, with a
    /// wrong argument count, in RESP2 subscribed mode): the same bytes through respool as directly. (Found by
    /// scripts/fuzz connections.)
    func testRefusedExecIsWordedAsRedisWordsIt() throws {
        try requireRealRespool()
        try withRedisAndRespool(password: "pw", env: ["RESPOOL_CLIENT_PASSWORD": "pw"]) { redis, respool in
            // Argument counts are judged from the server's command table, which respool learns just after start.
            XCTAssertNotNil(respool.stdout?.waitForLine(timeout: 20) { $0.contains("msg=\"command table learned from the server\"") },
                            respool.output)
            let direct = try TestClient(redis.endpoint, timeout: 10), proxied = try respool.client()   // not authenticated yet
            let steps: [[String]] = [["EXEC"], ["EXEC", "x"], ["MULTI"], ["AUTH", "pw"], ["EXEC", "x"], ["SUBSCRIBE", "\(keyPrefix())ch"],
                                     ["EXEC"], ["MULTI"], ["DISCARD"], ["PING"], ["RESET"], ["EXEC"]]
            for step in steps {
                try direct.sendCommand(step)
                try proxied.sendCommand(step)
                let want = String(decoding: try direct.readRawReply(timeout: 10), as: UTF8.self)
                XCTAssertEqual(String(decoding: try proxied.readRawReply(timeout: 10), as: UTF8.self), want, "\(step)")
            }
        }
    }

    func testRESP3RepliesMatchRedisServer() throws {
        try requireRealRespool()
        try checkParity(proto: 3)
    }
}
