// Ordinary commands through respool: many clients, deep pipelines, large values, inline syntax, every reply type.
// Each reply is checked against the request it answers.
import Foundation
import RESP
import TestKit
import XCTest

/// What one client's keys hold, to predict each reply. Keys are private to the client; values are unique per command.
struct ClientModel {
    var rng: SeededRandom
    let prefix: String
    let client: Int
    private var strings: [String: String] = [:]
    private var counters: [String: Int] = [:]
    private var hashes: [String: [String: String]] = [:]
    private var lists: [String: [String]] = [:]   // head first

    init(prefix: String, client: Int, seed: UInt64) {
        self.prefix = prefix
        self.client = client
        rng = SeededRandom(seed: seed)
    }

    private mutating func pick(_ kind: String, _ n: Int) -> String { "\(prefix)\(kind)\(rng.next() % UInt64(n))" }

    private mutating func value(_ i: Int) -> String {
        "v\(client).\(i)." + rng.letters(Int(rng.next() % 40))
    }

    /// The command number `i` of this client and the reply it must get.
    mutating func next(_ i: Int) -> (command: [String], expected: RESPValue) {
        switch rng.next() % 100 {
        case 0..<15:
            let k = pick("s", 4), v = value(i)
            strings[k] = v
            return (["SET", k, v], Reply.ok)
        case 15..<30:
            let k = pick("s", 4)
            return (["GET", k], Reply.bulk(strings[k]))
        case 30..<40:
            let k = pick("n", 2)
            let n = (counters[k] ?? 0) + 1
            counters[k] = n
            return (["INCR", k], Reply.int(n))
        case 40..<50:
            let k = pick("s", 4), v = value(i)
            let s = (strings[k] ?? "") + v
            strings[k] = s
            return (["APPEND", k, v], Reply.int(s.utf8.count))
        case 50..<60:
            let k = pick("h", 2), f = "f\(rng.next() % 4)", v = value(i)
            let isNew = hashes[k]?[f] == nil
            hashes[k, default: [:]][f] = v
            return (["HSET", k, f, v], Reply.int(isNew ? 1 : 0))
        case 60..<70:
            let k = pick("h", 2), f = "f\(rng.next() % 4)"
            return (["HGET", k, f], Reply.bulk(hashes[k]?[f]))
        case 70..<80:
            let k = pick("l", 2), v = value(i)
            lists[k, default: []].insert(v, at: 0)
            return (["LPUSH", k, v], Reply.int(lists[k]!.count))
        case 80..<90:
            let k = pick("l", 2)
            return (["LRANGE", k, "0", "4"], Reply.bulks(Array((lists[k] ?? []).prefix(5))))
        default:
            let all = (0..<4).map { "\(prefix)s\($0)" } + (0..<2).map { "\(prefix)n\($0)" }
                + (0..<2).map { "\(prefix)h\($0)" } + (0..<2).map { "\(prefix)l\($0)" }
            let k = all[Int(rng.next() % UInt64(all.count))]
            var existed = false
            if strings.removeValue(forKey: k) != nil { existed = true }
            if counters.removeValue(forKey: k) != nil { existed = true }
            if let h = hashes.removeValue(forKey: k), !h.isEmpty { existed = true }
            if let l = lists.removeValue(forKey: k), !l.isEmpty { existed = true }
            return (["DEL", k], Reply.int(existed ? 1 : 0))
        }
    }
}

final class DataPathTests: IntegrationTestCase {
    /// 200 clients at once, 1,000 mixed commands each in seeded random-depth pipelines; every reply equals what a
    /// model of that client's keys predicts (so a reply routed to the wrong client or out of order fails).
    func testConcurrentClientsMixedCommandsMatchModel() throws {
        try withRedisAndRespool { _, respool in
            let clients = 200, perClient = 1000
            let prefix = keyPrefix()
            let endpoint = respool.endpoint
            let failures = FailureLog()
            let ready = Barrier(parties: clients)
            let started = monotonicNow()
            let finished = runThreads(clients, timeout: 150, failures: failures) { c in
                var model = ClientModel(prefix: "\(prefix)c\(c):", client: c, seed: 0x5EED_0000 &+ UInt64(c))
                let conn: TestClient
                do {
                    conn = try TestClient(endpoint, timeout: 30)
                } catch {
                    ready.arrive()
                    throw error
                }
                ready.arriveAndWait()
                var sent = 0
                while sent < perClient {
                    let depth = min(Int(model.rng.next() % 32) + 1, perClient - sent)
                    var commands: [[String]] = []
                    var expected: [RESPValue] = []
                    for _ in 0..<depth {
                        let (cmd, exp) = model.next(sent)
                        commands.append(cmd)
                        expected.append(exp)
                        sent += 1
                    }
                    let replies = try conn.pipeline(commands)
                    for i in 0..<depth where replies[i] != expected[i] {
                        failures.record("client \(c) command #\(sent - depth + i) (pipeline depth \(depth)) "
                            + "sent \(commands[i]): expected \(show(expected[i])), got \(show(replies[i]))")
                        return
                    }
                }
            }
            let elapsed = monotonicNow() - started
            print("[\(name)] \(clients * perClient) commands from \(clients) clients in \(String(format: "%.2f", elapsed))s")
            XCTAssertTrue(finished, "client threads still running after 150s")
            XCTAssertEqual(failures.count, 0, failures.summary)
        }
    }

    /// 10,000 SETs in one write, then 10,000 GETs in one write: every reply, in order.
    func testTenThousandPipelinedCommandsInOneWrite() throws {
        try withRedisAndRespool { _, respool in
            let p = keyPrefix()
            let n = 10_000
            let conn = try respool.client(timeout: 30)
            var sets: [UInt8] = []
            var gets: [UInt8] = []
            for i in 0..<n {
                sets += RESPWriter.command(["SET", "\(p)k_\(i)", "v_\(i)"])
                gets += RESPWriter.command(["GET", "\(p)k_\(i)"])
            }
            let setReplies = try conn.pipeline(raw: sets, replies: n)
            for (i, r) in setReplies.enumerated() where r != Reply.ok {
                XCTFail("SET \(p)k_\(i) v_\(i) (#\(i) of \(n)): got \(show(r))")
                break
            }
            let getReplies = try conn.pipeline(raw: gets, replies: n)
            for (i, r) in getReplies.enumerated() where r != Reply.bulk("v_\(i)") {
                XCTFail("GET \(p)k_\(i) (#\(i) of \(n)): expected \"v_\(i)\", got \(show(r))")
                break
            }
            assertNoStrayReplies(conn, "extra bytes after the 10,000 replies")
        }
    }

    /// A 10 MB binary value (all byte values, CR LF inside) SET and read back byte-exact.
    func testTenMegabyteValueRoundTrip() throws {
        try withRedisAndRespool { _, respool in
            let key = keyPrefix() + "big"
            var rng = SeededRandom(seed: 42)
            var value = rng.bytes(10 << 20)
            value.replaceSubrange(1000..<1004, with: [13, 10, 13, 10])
            let conn = try respool.client(timeout: 30)
            assertReply(try conn.command(bytes: [Array("SET".utf8), Array(key.utf8), value]), Reply.ok, "SET 10 MB")
            assertReply(try conn.command("STRLEN", key), Reply.int(10 << 20), "STRLEN")
            let got = try conn.command("GET", key)
            guard case .bulkString(let bytes?) = got else {
                return XCTFail("GET of the 10 MB value: got \(show(got))")
            }
            XCTAssertEqual(bytes.count, value.count, "length of the value read back")
            if bytes != value {
                let first = zip(bytes, value).enumerated().first { $0.element.0 != $0.element.1 }?.offset
                XCTFail("10 MB value differs, first at byte \(first.map(String.init) ?? "end")")
            }
            // The connection still works for small commands after it.
            assertReply(try conn.command("ECHO", "after"), Reply.bulk("after"), "ECHO after the big value")
        }
    }

    /// Inline commands (with quoting) and multibulk mixed in one write.
    func testInlineCommandsMixedWithMultibulk() throws {
        try withRedisAndRespool { _, respool in
            let p = keyPrefix()
            let conn = try respool.client()
            var payload = Array("SET \(p)a 1\r\n".utf8)
            payload += RESPWriter.command(["GET", "\(p)a"])
            payload += Array("SET \(p)b \"hello world\"\r\n".utf8)
            payload += Array("PING\r\n".utf8)
            payload += RESPWriter.command(["GET", "\(p)b"])
            payload += Array("ECHO \"tab\\there\\x41\" \r\n".utf8)
            payload += Array("set \(p)c 'single quoted'\n".utf8)          // lowercase, LF only
            payload += RESPWriter.command(["GET", "\(p)c"])
            payload += Array("INCRBY \(p)n 5\r\n".utf8)
            payload += Array("ping\n".utf8)
            let expected: [RESPValue] = [
                Reply.ok, Reply.bulk("1"), Reply.ok, Reply.pong, Reply.bulk("hello world"), Reply.bulk("tab\thereA"),
                Reply.ok, Reply.bulk("single quoted"), Reply.int(5), Reply.pong,
            ]
            let replies = try conn.pipeline(raw: payload, replies: expected.count)
            for (i, (got, exp)) in zip(replies, expected).enumerated() {
                assertReply(got, exp, "reply #\(i) of the mixed inline/multibulk write \(preview(payload, limit: 400))")
            }
            assertNoStrayReplies(conn, "extra bytes after the expected replies")
        }
    }

    /// Reply types pass through unchanged: errors, nil bulk, empty array, integers, nested arrays.
    func testReplyTypesPassThrough() throws {
        try withRedisAndRespool { _, respool in
            let p = keyPrefix()
            let conn = try respool.client()
            assertReply(try conn.command("SET", "\(p)str", "v"), Reply.ok, "SET")
            assertReply(try conn.command("LPUSH", "\(p)str", "x"),
                        Reply.error("WRONGTYPE Operation against a key holding the wrong kind of value"), "LPUSH on a string")
            assertReply(try conn.command("SET", "\(p)str", "v", "XX", "YY"), Reply.error("ERR syntax error"), "SET with bad options")
            assertReply(try conn.command("GET", "\(p)missing"), Reply.nilBulk, "GET missing key")
            assertReply(try conn.command("LRANGE", "\(p)missing", "0", "-1"), Reply.emptyArray, "LRANGE missing key")
            assertReply(try conn.command("INCRBY", "\(p)n", "41"), Reply.int(41), "INCRBY")
            assertReply(try conn.command("DECRBY", "\(p)n", "100"), Reply.int(-59), "DECRBY")
            assertReply(try conn.command("INCRBY", "\(p)big", "9223372036854775807"), Reply.int(Int.max), "INCRBY max")
            assertReply(try conn.command("HSET", "\(p)h", "f1", "v1", "f2", "v2"), Reply.int(2), "HSET")
            assertReply(try conn.command("HGETALL", "\(p)h"), Reply.bulks(["f1", "v1", "f2", "v2"]), "HGETALL (RESP2)")
            assertReply(try conn.command("RPUSH", "\(p)l", "a", "b", "c"), Reply.int(3), "RPUSH")
            assertReply(try conn.command("LRANGE", "\(p)l", "0", "-1"), Reply.bulks(["a", "b", "c"]), "LRANGE")
            assertReply(try conn.command("MGET", "\(p)str", "\(p)missing", "\(p)l"),
                        Reply.array([Reply.bulk("v"), Reply.nilBulk, Reply.nilBulk]), "MGET")
            assertReply(try conn.command("EVAL", "return {1, {2, {3, 'x'}}, 'y', {}}", "0"),
                        Reply.array([Reply.int(1), Reply.array([Reply.int(2), Reply.array([Reply.int(3), Reply.bulk("x")])]),
                                     Reply.bulk("y"), Reply.emptyArray]), "EVAL nested arrays")
            assertReply(try conn.command("EVAL", "return redis.error_reply('MYERR custom failure')", "0"),
                        Reply.error("MYERR custom failure"), "EVAL error reply")
            assertReply(try conn.command("EVAL", "return redis.status_reply('FINE')", "0"), Reply.simple("FINE"), "EVAL status")
            assertReply(try conn.command("EVAL", "return redis.call('GET', KEYS[1])", "1", "\(p)str"), Reply.bulk("v"), "EVAL with a key")
            assertReply(try conn.command("ZADD", "\(p)z", "1.5", "m"), Reply.int(1), "ZADD")
            assertReply(try conn.command("ZSCORE", "\(p)z", "m"), Reply.bulk("1.5"), "ZSCORE (RESP2 bulk)")
            assertReply(try conn.command("PING"), Reply.pong, "PING")
            assertReply(try conn.command("PING", "hi there"), Reply.bulk("hi there"), "PING with message")
            assertReply(try conn.command("ECHO", ""), Reply.bulk(""), "ECHO empty string")
            // COMMAND and INFO are forwarded (large replies of real content).
            let info = try conn.command("INFO", "server")
            XCTAssertTrue(info.string?.contains("redis_version:") ?? false, "INFO server: \(show(info))")
            let cmdInfo = try conn.command("COMMAND", "INFO", "get")
            guard case .array(let entries?) = cmdInfo, entries.count == 1, case .array(let entry?) = entries[0],
                  entry.first == Reply.bulk("get") else {
                return XCTFail("COMMAND INFO get: \(show(cmdInfo))")
            }
        }
    }

    /// Requests arriving one byte per TCP segment (every split point of multibulk and inline framing).
    func testRequestsDripFedOneByteAtATime() throws {
        try withRedisAndRespool { _, respool in
            let p = keyPrefix()
            let conn = try respool.client()
            var payload = RESPWriter.command(["SET", "\(p)drip", "a\r\nb"])
            payload += RESPWriter.command(["GET", "\(p)drip"])
            payload += Array("ECHO \"x y\"\r\n".utf8)
            payload += Array("*0\r\n".utf8)
            payload += RESPWriter.command(["APPEND", "\(p)drip", String(repeating: "z", count: 20)])
            for b in payload {
                try conn.send([b])
                usleep(300)
            }
            let expected = [Reply.ok, Reply.bulk("a\r\nb"), Reply.bulk("x y"), Reply.int(24)]
            let replies = try conn.readValues(expected.count)
            for (i, (got, exp)) in zip(replies, expected).enumerated() {
                assertReply(got, exp, "reply #\(i) to requests sent a byte at a time")
            }
            assertNoStrayReplies(conn, "extra bytes after the expected replies")
        }
    }

    /// Requests with 100,000 arguments and replies with 100,000 elements, both spanning many reads.
    func testHugeArgumentListsAndArrayReplies() throws {
        try withRedisAndRespool { _, respool in
            let p = keyPrefix()
            let n = 100_000
            let conn = try respool.client(timeout: 30)
            let items = (0..<n).map { "item-\($0)" }
            assertReply(try conn.command(["RPUSH", "\(p)list"] + items), Reply.int(n), "RPUSH of \(n) items in one request")
            let all = try conn.command("LRANGE", "\(p)list", "0", "-1")
            if all != Reply.bulks(items) {
                guard case .array(let got?) = all else { return XCTFail("LRANGE of \(n) items: \(show(all, limit: 40))") }
                let firstBad = zip(got, items).enumerated().first { $0.element.0 != Reply.bulk($0.element.1) }?.offset
                XCTFail("LRANGE of \(n) items: \(got.count) elements, first difference at \(firstBad.map(String.init) ?? "the end")")
            }
            var mset = ["MSET"]
            for i in 0..<20_000 { mset += ["\(p)m\(i)", "v\(i)"] }
            assertReply(try conn.command(mset), Reply.ok, "MSET of 20,000 keys")
            let mget = try conn.command(["MGET"] + (0..<20_000).map { "\(p)m\($0)" })
            XCTAssertTrue(mget == Reply.bulks((0..<20_000).map { "v\($0)" }), "MGET of 20,000 keys: \(show(mget, limit: 40))")
            assertReply(try conn.command("ECHO", "still in sync"), Reply.bulk("still in sync"), "ECHO after the big ones")
        }
    }

    /// Pipelined SET of a 1 MB value immediately followed by GET of it (read-your-writes inside one pipeline), from
    /// several clients, while other clients run small commands on the same pool.
    func testLargeValuesPipelinedReadYourWritesUnderLoad() throws {
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "3"]) { _, respool in
            let p = keyPrefix()
            let endpoint = respool.endpoint
            let failures = FailureLog()
            let stop = StopFlag()
            let small = Worker {
                runThreads(10, timeout: 60, failures: failures) { c in
                    let conn = try TestClient(endpoint, timeout: 30)
                    var i = 0
                    while !stop.isSet {
                        let replies = try conn.pipeline([["SET", "\(p)small\(c)", "s\(i)"], ["GET", "\(p)small\(c)"]])
                        if replies != [Reply.ok, Reply.bulk("s\(i)")] {
                            failures.record("small client \(c) iteration \(i): got \(replies.map { show($0) })")
                            return
                        }
                        i += 1
                    }
                }
            }
            runThreads(4, timeout: 60, failures: failures) { c in
                let conn = try TestClient(endpoint, timeout: 30)
                var rng = SeededRandom(seed: 7 &+ UInt64(c))
                for i in 0..<5 {
                    let key = Array("\(p)big\(c)".utf8)
                    let value = rng.bytes(1 << 20)
                    let payload = RESPWriter.command([Array("SET".utf8), key, value]) + RESPWriter.command([Array("GET".utf8), key])
                        + RESPWriter.command(["STRLEN", "\(p)big\(c)"])
                    let replies = try conn.pipeline(raw: payload, replies: 3)
                    if replies[0] != Reply.ok || replies[1] != Reply.bulk(value) || replies[2] != Reply.int(1 << 20) {
                        failures.record("big client \(c) iteration \(i): SET \(show(replies[0])), GET "
                            + "\(replies[1] == Reply.bulk(value) ? "the value" : show(replies[1], limit: 40)), STRLEN \(show(replies[2]))")
                        return
                    }
                }
            }
            stop.set()
            XCTAssertTrue(small.join(timeout: 60), "small clients stuck")
            XCTAssertEqual(failures.count, 0, failures.summary)
        }
    }

    /// Empty requests ("*0", blank inline line) get no reply: the next thing read answers the next command.
    func testEmptyRequestsGetNoReply() throws {
        try withRedisAndRespool { _, respool in
            let conn = try respool.client()
            try conn.send("*0\r\n\r\n\n")
            assertNoStrayReplies(conn, "bytes arrived after empty requests alone")
            try conn.send("*0\r\n" + "\r\n" + "*1\r\n$4\r\nPING\r\n" + "*0\r\n" + "ECHO next\r\n")
            assertReply(try conn.readValue(), Reply.pong, "first reply after *0 and a blank line")
            assertReply(try conn.readValue(), Reply.bulk("next"), "reply after another *0")
            assertNoStrayReplies(conn, "extra bytes after the expected replies")
        }
    }

    /// QUIT answers +OK and closes; commands before it in the pipeline are answered, commands after it are not.
    func testQuitRepliesOKAndCloses() throws {
        try withRedisAndRespool { _, respool in
            let conn = try respool.client()
            assertReply(try conn.command("QUIT"), Reply.ok, "QUIT")
            XCTAssertEqual(conn.waitForClose(), .closed(reset: false), "after QUIT")

            let piped = try respool.client()
            try piped.send(RESPWriter.command(["ECHO", "before"]) + RESPWriter.command(["QUIT"]) + RESPWriter.command(["ECHO", "after"]))
            assertReply(try piped.readValue(), Reply.bulk("before"), "ECHO before QUIT")
            assertReply(try piped.readValue(), Reply.ok, "QUIT")
            let outcome = piped.waitForClose()
            XCTAssertTrue(outcome == .closed(reset: false) || outcome == .closed(reset: true),
                          "after QUIT with a command behind it: \(outcome)")

            // Other clients are unaffected.
            let other = try respool.client()
            assertReply(try other.command("PING"), Reply.pong, "PING on another client")
        }
    }
}
