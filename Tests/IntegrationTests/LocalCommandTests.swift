// Commands respool answers itself (HELLO, CLIENT SETNAME/GETNAME/SETINFO/ID), RESP3 beside RESP2, commands that
// need connection state (refused with "ERR respool: ..."), and the database of the URL.
import Foundation
import RESP
import XCTest

private func sortedItems(_ items: [RESPValue]) -> [RESPValue] { items.sorted { show($0) < show($1) } }

final class LocalCommandTests: IntegrationTestCase {
    /// Checks a HELLO reply (map for RESP3, flat array for RESP2) and returns its id.
    @discardableResult
    private func checkHello(_ v: RESPValue, proto: Int, _ context: String,
                            file: StaticString = #filePath, line: UInt = #line) -> Int64? {
        switch (proto, v) {
        case (3, .map), (2, .array(_?)): break
        default:
            XCTFail("\(context): expected a RESP\(proto) \(proto == 3 ? "map" : "array"), got \(show(v))", file: file, line: line)
            return nil
        }
        guard let f = keyValuePairs(v) else {
            XCTFail("\(context): not key/value pairs: \(show(v))", file: file, line: line)
            return nil
        }
        for key in ["server", "version", "mode", "role"] {
            if case .bulkString(_?)? = f[key] { continue }
            XCTFail("\(context): \(key) should be a bulk string, got \(f[key].map { show($0) } ?? "nothing") in \(show(v))", file: file, line: line)
        }
        XCTAssertEqual(f["proto"], Reply.int(proto), "\(context): proto in \(show(v))", file: file, line: line)
        if case .array(_?)? = f["modules"] {} else {
            XCTFail("\(context): modules should be an array, got \(f["modules"].map { show($0) } ?? "nothing")", file: file, line: line)
        }
        guard case .integer(let id)? = f["id"] else {
            XCTFail("\(context): id should be an integer, got \(f["id"].map { show($0) } ?? "nothing")", file: file, line: line)
            return nil
        }
        return id
    }

    func testHelloRepliesLikeRedis() throws {
        try requireRealRespool()
        try withRedisAndRespool { _, respool in
            let c = try respool.client()
            let id2 = checkHello(try c.command("HELLO"), proto: 2, "HELLO without arguments")
            checkHello(try c.command("HELLO", "2"), proto: 2, "HELLO 2")
            let id3 = checkHello(try c.command("HELLO", "3"), proto: 3, "HELLO 3")
            checkHello(try c.command("HELLO"), proto: 3, "HELLO without arguments after HELLO 3")
            let clientID = try c.command("CLIENT", "ID")
            XCTAssertEqual(id2, id3, "HELLO ids on one connection")
            if let id3 { assertReply(clientID, .integer(id3), "CLIENT ID vs the id in HELLO") }
            checkHello(try c.command("HELLO", "2"), proto: 2, "HELLO 2 after HELLO 3")
            assertReply(try c.command("HGETALL", "nothing-here"), Reply.emptyArray, "RESP2 again after HELLO 2")
        }
    }

    func testHelloUnsupportedProtocolVersion() throws {
        try requireRealRespool()
        try withRedisAndRespool { _, respool in
            let c = try respool.client()
            assertErrorReply(try c.command("HELLO", "4"), prefix: "NOPROTO", "HELLO 4")
            assertErrorReply(try c.command("HELLO", "1"), prefix: "NOPROTO", "HELLO 1")
            XCTAssertNotNil(try c.command("HELLO", "abc").errorText, "HELLO abc must be an error")
            // Still RESP2 and usable.
            assertReply(try c.command("PING"), Reply.pong, "PING after HELLO 4")
            assertReply(try c.command("GET", keyPrefix() + "missing"), Reply.nilBulk, "RESP2 null after the failed HELLOs")
        }
    }

    /// A RESP3 client gets maps, sets, doubles and '_' while RESP2 clients working at the same time get arrays,
    /// bulk strings and $-1, over the same pool.
    func testResp3ClientBesideResp2Clients() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "2"]) { _, respool in
            let p = keyPrefix()
            let setup = try respool.client()
            _ = try setup.pipeline([["HSET", "\(p)h", "f1", "v1", "f2", "v2"], ["SADD", "\(p)s", "a", "b", "c"],
                                    ["ZADD", "\(p)z", "1.5", "m"], ["SET", "\(p)str", "v"]])
            let endpoint = respool.endpoint
            let failures = FailureLog()
            let commands = [["HGETALL", "\(p)h"], ["GET", "\(p)missing"], ["SMEMBERS", "\(p)s"], ["ZSCORE", "\(p)z", "m"],
                            ["GET", "\(p)str"], ["LRANGE", "\(p)missing", "0", "-1"], ["CLIENT", "GETNAME"], ["HGET", "\(p)h", "f2"]]
            let resp3: [RESPValue] = [.map(["f1", "v1", "f2", "v2"].map { Reply.bulk($0) }), .null,
                                      .set(["a", "b", "c"].map { Reply.bulk($0) }), .double(Array("1.5".utf8)),
                                      Reply.bulk("v"), Reply.emptyArray, .null, Reply.bulk("v2")]
            let resp2: [RESPValue] = [Reply.bulks(["f1", "v1", "f2", "v2"]), Reply.nilBulk, Reply.bulks(["a", "b", "c"]),
                                      Reply.bulk("1.5"), Reply.bulk("v"), Reply.emptyArray, Reply.nilBulk, Reply.bulk("v2")]
            @Sendable func normalized(_ v: RESPValue) -> RESPValue {
                switch v {
                case .set(let items): return .set(sortedItems(items))
                case .array(let items?) where items.count == 3: return .array(sortedItems(items))  // SMEMBERS order
                default: return v
                }
            }
            runThreads(8, timeout: 60, failures: failures) { t in
                let conn = try TestClient(endpoint, timeout: 10)
                let isResp3 = t % 2 == 0
                if isResp3 {
                    let hello = try conn.command("HELLO", "3")
                    guard case .map = hello else {
                        failures.record("thread \(t): HELLO 3 got \(show(hello))")
                        return
                    }
                }
                let expected = isResp3 ? resp3 : resp2
                for round in 0..<100 {
                    let replies = try conn.pipeline(commands)
                    for (i, r) in replies.enumerated() where normalized(r) != expected[i] {
                        failures.record("RESP\(isResp3 ? 3 : 2) client \(t) round \(round) \(commands[i]): expected "
                            + "\(show(expected[i])), got \(show(r))")
                        return
                    }
                }
            }
            XCTAssertEqual(failures.count, 0, failures.summary)
        }
    }

    /// With a single upstream connection, RESP2 and RESP3 clients must take turns on it: respool switches the
    /// connection's protocol in-stream (HELLO, swallowed) only while nothing is in flight on it, so every client still
    /// gets its own protocol's replies, and redis never sees a second connection.
    func testProtocolSwitchOnASingleUpstreamConnection() throws {
        try requireRealRespool()
        let poolName = "itswitch\(getpid())"
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "1", "RESPOOL_NAME": poolName]) { redis, respool in
            let p = keyPrefix()
            let setup = try respool.client()
            _ = try setup.pipeline([["HSET", "\(p)h", "f", "v"]])
            let endpoint = respool.endpoint
            let failures = FailureLog()
            runThreads(6, timeout: 60, failures: failures) { t in
                let conn = try TestClient(endpoint, timeout: 10)
                let isResp3 = t % 2 == 1
                if isResp3 {
                    guard case .map = try conn.command("HELLO", "3") else {
                        failures.record("thread \(t): HELLO 3 did not answer a map")
                        return
                    }
                }
                for round in 0..<50 {
                    let replies = try conn.pipeline([["HGETALL", "\(p)h"], ["GET", "\(p)missing"], ["ECHO", "t\(t)r\(round)"]])
                    let expected: [RESPValue] = isResp3
                        ? [.map([Reply.bulk("f"), Reply.bulk("v")]), .null, Reply.bulk("t\(t)r\(round)")]
                        : [Reply.bulks(["f", "v"]), Reply.nilBulk, Reply.bulk("t\(t)r\(round)")]
                    if replies != expected {
                        failures.record("RESP\(isResp3 ? 3 : 2) client \(t) round \(round): got \(replies.map { show($0) })")
                        return
                    }
                }
            }
            XCTAssertEqual(failures.count, 0, failures.summary)
            let sampler = try redis.client()
            let list = try sampler.command("CLIENT", "LIST").string ?? ""
            let pooled = list.split(separator: "\n").filter { $0.contains("name=\(poolName):pool") }
            XCTAssertEqual(pooled.count, 1, "expected exactly one upstream connection:\n\(list)")
        }
    }

    /// SELECT is per client: clients on different databases share the pool without seeing each other's keys, in
    /// pipelines mixed with SELECTs, also when the cap forces connections to switch database in-stream; SELECT of a
    /// database that does not exist answers Redis's error.
    func testSelectIsolatesClientsAcrossTheSharedPool() throws {
        for cap in ["1", "4"] {
            try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": cap]) { redis, respool in
                let p = keyPrefix()
                let endpoint = respool.endpoint
                let failures = FailureLog()
                runThreads(8, timeout: 60, failures: failures) { t in
                    let c = try TestClient(endpoint, timeout: 10)
                    let mydb = t % 4
                    for round in 0..<30 {
                        let r = try c.pipeline([["SELECT", "\(mydb)"], ["SET", "\(p)shared", "db\(mydb)"], ["GET", "\(p)shared"],
                                                ["SELECT", "\((mydb + 1) % 4)"], ["EXISTS", "\(p)only\(mydb)"], ["SELECT", "\(mydb)"],
                                                ["SET", "\(p)only\(mydb)", "x"]])
                        let expected: [RESPValue] = [Reply.ok, Reply.ok, Reply.bulk("db\(mydb)"), Reply.ok, Reply.int(0), Reply.ok, Reply.ok]
                        if r != expected {
                            failures.record("cap \(cap) client \(t) round \(round): \(r.map { show($0) })")
                            return
                        }
                    }
                }
                XCTAssertEqual(failures.count, 0, failures.summary)
                let direct = try redis.client()
                for d in 0..<4 {
                    assertReply(try direct.command("SELECT", "\(d)"), Reply.ok)
                    assertReply(try direct.command("GET", "\(p)shared"), Reply.bulk("db\(d)"), "db \(d) directly")
                }
                let c = try respool.client()
                assertErrorReply(try c.command("SELECT", "16"), prefix: "ERR DB index is out of range", "SELECT 16")
                assertErrorReply(try c.command("SELECT", "x"), prefix: "ERR value is not an integer", "SELECT x")
            }
        }
    }

    /// Names set by HELLO SETNAME / CLIENT SETNAME are answered by CLIENT GETNAME on that connection only, and do
    /// not reach redis (the upstream connections keep their pool name).
    func testClientNamesAreLocalToTheClient() throws {
        try requireRealRespool()
        let poolName = "itnames\(getpid())"
        try withRedisAndRespool(env: ["RESPOOL_NAME": poolName]) { redis, respool in
            let a = try respool.client()
            let hello = try a.command("HELLO", "3", "SETNAME", "it-app-one")
            checkHello(hello, proto: 3, "HELLO 3 SETNAME it-app-one")
            assertReply(try a.command("CLIENT", "GETNAME"), Reply.bulk("it-app-one"), "GETNAME after HELLO SETNAME")
            checkHello(try a.command("HELLO", "2", "SETNAME", "it-app-two"), proto: 2, "HELLO 2 SETNAME it-app-two")
            assertReply(try a.command("CLIENT", "GETNAME"), Reply.bulk("it-app-two"), "GETNAME after HELLO 2 SETNAME")

            let b = try respool.client()
            assertReply(try b.command("CLIENT", "GETNAME"), Reply.nilBulk, "GETNAME on a new client")
            assertReply(try b.command("CLIENT", "SETNAME", "it-app-three"), Reply.ok, "CLIENT SETNAME")
            assertReply(try b.command("CLIENT", "GETNAME"), Reply.bulk("it-app-three"), "GETNAME after CLIENT SETNAME")
            assertReply(try a.command("CLIENT", "GETNAME"), Reply.bulk("it-app-two"), "the other client's name is unchanged")
            XCTAssertNotNil(try b.command("CLIENT", "SETNAME", "has space").errorText, "CLIENT SETNAME with a space must be an error")
            assertReply(try b.command("CLIENT", "GETNAME"), Reply.bulk("it-app-three"), "name unchanged by the refused SETNAME")
            assertReply(try b.command("CLIENT", "SETNAME", ""), Reply.ok, "CLIENT SETNAME \"\" clears the name")
            assertReply(try b.command("CLIENT", "GETNAME"), Reply.nilBulk, "GETNAME after clearing")

            // Force traffic so pool connections exist, then look at them from redis.
            assertReply(try a.command("SET", keyPrefix() + "k", "v"), Reply.ok, "SET")
            let direct = try redis.client()
            let list = try direct.command("CLIENT", "LIST")
            let text = list.string ?? ""
            XCTAssertFalse(text.contains("it-app-"), "a client's own name reached redis:\n\(text)")
            XCTAssertTrue(text.contains("name=\(poolName):pool"), "no upstream connection named \(poolName):pool:\n\(text)")
        }
    }

    func testClientSetinfoAndClientID() throws {
        try requireRealRespool()
        try withRedisAndRespool { _, respool in
            let a = try respool.client()
            let b = try respool.client()
            // redis-server 7.0 has no CLIENT SETINFO: only respool itself can answer these.
            assertReply(try a.command("CLIENT", "SETINFO", "lib-name", "it-lib"), Reply.ok, "CLIENT SETINFO lib-name")
            assertReply(try a.command("CLIENT", "SETINFO", "LIB-VER", "1.2.3"), Reply.ok, "CLIENT SETINFO LIB-VER")
            XCTAssertNotNil(try a.command("CLIENT", "SETINFO", "no-such-attr", "x").errorText, "CLIENT SETINFO of an unknown attribute")
            let idA = try a.command("CLIENT", "ID")
            let idB = try b.command("CLIENT", "ID")
            guard case .integer(let na) = idA, case .integer(let nb) = idB else {
                return XCTFail("CLIENT ID: \(show(idA)) and \(show(idB))")
            }
            XCTAssertNotEqual(na, nb, "two clients with the same CLIENT ID")
            assertReply(try a.command("CLIENT", "ID"), idA, "CLIENT ID is stable on one connection")
            assertReply(try a.command("client", "id"), idA, "lowercase client id")
            assertReply(try a.command("PING"), Reply.pong, "PING after CLIENT SETINFO")
        }
    }

    /// With RESPOOL_PINNING=deny, commands that need connection state are refused with "ERR respool: ... '<name>' ..."
    /// in their place in the pipeline, and the client keeps working.
    func testStatefulCommandsAreRefusedAndClientKeepsWorking() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_PINNING": "deny"]) { _, respool in
            let p = keyPrefix()
            let conn = try respool.client(timeout: 5)
            assertReply(try conn.command("SET", "\(p)k", "v0"), Reply.ok, "SET")
            assertReply(try conn.command("XADD", "\(p)stream", "1-1", "f", "v"), Reply.bulk("1-1"), "XADD")
            // (Transactions and blocking commands run on leases: see LeaseTests; pub/sub: PubSubTests.)
            let cases: [([String], String)] = [
                (["MONITOR"], "'monitor'"),
                (["CLIENT", "TRACKING", "ON"], "'client|tracking'"),
            ]
            for (i, (command, quotedName)) in cases.enumerated() {
                let replies = try conn.pipeline([["SET", "\(p)k", "v\(i)"], command, ["GET", "\(p)k"]])
                assertReply(replies[0], Reply.ok, "SET before \(command)")
                let err = replies[1].errorText ?? ""
                XCTAssertTrue(err.hasPrefix("ERR respool:") && err.contains(quotedName),
                              "\(command): expected \"ERR respool: ...\(quotedName)...\", got \(show(replies[1]))")
                assertReply(replies[2], Reply.bulk("v\(i)"), "GET after \(command) in the same pipeline")
                assertReply(try conn.command("ECHO", "alive \(i)"), Reply.bulk("alive \(i)"), "ECHO after \(command)")
            }
            assertNoStrayReplies(conn, "unexpected bytes (a subscription or MONITOR feed?)")
        }
    }

    /// XREAD without BLOCK is an ordinary command.
    func testXreadWithoutBlockIsForwarded() throws {
        try withRedisAndRespool { _, respool in
            let p = keyPrefix()
            let conn = try respool.client()
            assertReply(try conn.command("XADD", "\(p)s", "1-1", "f", "v"), Reply.bulk("1-1"), "XADD")
            assertReply(try conn.command("XREAD", "COUNT", "10", "STREAMS", "\(p)s", "0"),
                        Reply.array([Reply.array([Reply.bulk("\(p)s"), Reply.array([Reply.array([Reply.bulk("1-1"), Reply.bulks(["f", "v"])])])])]),
                        "XREAD COUNT 10 STREAMS s 0")
            assertReply(try conn.command("XREAD", "STREAMS", "\(p)s", "1-1"), .array(nil), "XREAD with nothing newer (nil array)")
        }
    }

    /// The URL's database: commands run there; SELECT of that db is accepted, another db refused.
    func testDatabaseFromURL() throws {
        try requireRealRespool()
        try withRedis { redis in
            try withRespool(upstream: redis, upstreamURL: redis.url + "/3") { respool in
                let p = keyPrefix()
                let conn = try respool.client()
                assertReply(try conn.command("SET", "\(p)k", "in-db-3"), Reply.ok, "SET")
                let direct = try redis.client()
                assertReply(try direct.command("GET", "\(p)k"), Reply.nilBulk, "db 0 directly")
                assertReply(try direct.command("SELECT", "3"), Reply.ok, "SELECT 3 directly")
                assertReply(try direct.command("GET", "\(p)k"), Reply.bulk("in-db-3"), "db 3 directly")
                assertReply(try conn.command("SELECT", "3"), Reply.ok, "SELECT of the URL's db")
                assertReply(try conn.command("SELECT", "0"), Reply.ok, "SELECT 0 with the URL on db 3")
                assertReply(try conn.command("GET", "\(p)k"), Reply.nilBulk, "GET in db 0")
                assertReply(try conn.command("RESET"), Reply.simple("RESET"), "RESET")
                assertReply(try conn.command("GET", "\(p)k"), Reply.bulk("in-db-3"), "RESET returns to the URL's db")
            }
        }
    }
}
