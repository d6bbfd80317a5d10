// Pub/sub through one shared subscriber connection per protocol: exact confirmations and counts per client,
// messages fanned out to exactly the clients that asked, subscribed-mode rules, RESP3 pushes, clean-up.
import Foundation
import Glibc
import RESP
import XCTest

final class PubSubTests: IntegrationTestCase {
    private func conf(_ kind: String, _ name: String?, _ count: Int) -> RESPValue {
        .array([Reply.bulk(kind), name.map { Reply.bulk($0) } ?? Reply.nilBulk, Reply.int(count)])
    }

    /// 1,000 subscribers, channels and patterns mixed: every client gets its own confirmations with its own counts
    /// and exactly the messages it subscribed to; the server sees one subscriber connection.
    func testThousandSubscribersShareOneUpstreamConnection() throws {
        try requireRealRespool()
        raiseFileLimit()
        let poolName = "itpubsub\(getpid())"
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "4", "RESPOOL_NAME": poolName]) { redis, respool in
            let p = keyPrefix()
            let a = "\(p)ch:a", b = "\(p)ch:b", star = "\(p)ch:*", aStar = "\(p)ch:a*"
            var clients: [TestClient] = []
            for i in 0..<1000 {
                let c = try respool.client(timeout: 20)
                switch i % 3 {
                case 0:
                    XCTAssertEqual(try c.pipeline(raw: RESPWriter.command(["SUBSCRIBE", a, b]), replies: 2),
                                   [conf("subscribe", a, 1), conf("subscribe", b, 2)], "client \(i)")
                case 1:
                    XCTAssertEqual(try c.command("PSUBSCRIBE", star), conf("psubscribe", star, 1), "client \(i)")
                default:
                    XCTAssertEqual(try c.command("SUBSCRIBE", a), conf("subscribe", a, 1), "client \(i)")
                    XCTAssertEqual(try c.command("PSUBSCRIBE", aStar), conf("psubscribe", aStar, 2), "client \(i)")
                }
                clients.append(c)
            }
            let publisher = try respool.client()
            guard case .integer = try publisher.command("PUBLISH", a, "m1"), case .integer = try publisher.command("PUBLISH", b, "m2") else {
                return XCTFail("PUBLISH")
            }
            for (i, c) in clients.enumerated() {
                let expected: [RESPValue]
                switch i % 3 {
                case 0: expected = [Reply.bulks(["message", a, "m1"]), Reply.bulks(["message", b, "m2"])]
                case 1: expected = [Reply.bulks(["pmessage", star, a, "m1"]), Reply.bulks(["pmessage", star, b, "m2"])]
                default: expected = [Reply.bulks(["message", a, "m1"]), Reply.bulks(["pmessage", aStar, a, "m1"])]
                }
                let got = try c.readValues(2, timeout: 10)
                if got != expected {
                    XCTFail("client \(i) (kind \(i % 3)): \(got.map { show($0) })")
                    break
                }
            }
            assertNoStrayReplies(clients[0], "an extra message")
            let list = try redis.client().command("CLIENT", "LIST").string ?? ""
            let subscribers = list.split(separator: "\n").filter { $0.contains("flags=P") }
            XCTAssertEqual(subscribers.count, 1, "one subscriber connection for 1,000 subscribers:\n\(list)")
            XCTAssertTrue(subscribers.first?.contains("name=\(poolName):pubsub") ?? false, "\(subscribers)")
            for c in clients { c.close() }
        }
    }

    /// RESP2 subscribed mode: only the subscribe family, PING, QUIT and RESET; PING answers [pong, msg]; UNSUBSCRIBE
    /// without arguments confirms every channel and leaves subscribed mode. RESP3: push frames, and other commands
    /// keep working while subscribed.
    /// Workers blocked in BLPOP take every client lease of a cap of 6 (three: the lease limit is four, one kept for
    /// the pub/sub connection), and a fourth waits: a SUBSCRIBE still gets the pub/sub connection at once and
    /// messages flow. Before, the fourth worker took the last lease and the SUBSCRIBE waited for one to end, getting
    /// the wait-timeout error instead. (Found by scripts/fuzz connections.)
    func testSubscribeIsAnsweredWhileBlockedWorkersHoldEveryLease() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "6", "RESPOOL_WAIT_TIMEOUT": "2"]) { redis, respool in
            let p = keyPrefix()
            let workers = try (0..<4).map { _ in try respool.client() }
            for (i, w) in workers.enumerated() { try w.sendCommand(["BLPOP", "\(p)jobs\(i)", "0"]) }
            let admin = try redis.client()
            XCTAssertTrue(try waitUntil {
                (try admin.command("INFO", "clients").string ?? "").contains("blocked_clients:3")
            }, "three blocked clients on the server")
            let subscriber = try respool.client()
            assertReply(try subscriber.command("SUBSCRIBE", "\(p)news"), Reply.array([Reply.bulk("subscribe"), Reply.bulk("\(p)news"), Reply.int(1)]))
            assertReply(try respool.client().command("PUBLISH", "\(p)news", "hello"), Reply.int(1))
            assertReply(try subscriber.readValue(timeout: 10), Reply.array([Reply.bulk("message"), Reply.bulk("\(p)news"), Reply.bulk("hello")]))
            let fourth = try workers[3].readValue(timeout: 10)
            XCTAssertEqual(fourth.errorText, "ERR respool: no upstream connection free within 2s (cap 6 reached)", show(fourth))
            for i in 0..<3 { assertReply(try admin.command("RPUSH", "\(p)jobs\(i)", "j"), Reply.int(1)) }
            for (i, w) in workers.prefix(3).enumerated() {
                assertReply(try w.readValue(timeout: 10), Reply.bulks(["\(p)jobs\(i)", "j"]))
            }
        }
    }

    func testSubscribedModeRulesAndRESP3Pushes() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "4"]) { redis, respool in
            let p = keyPrefix()
            let c2 = try respool.client()
            XCTAssertEqual(try c2.pipeline(raw: RESPWriter.command(["SUBSCRIBE", "\(p)x", "\(p)y"]), replies: 2),
                           [conf("subscribe", "\(p)x", 1), conf("subscribe", "\(p)y", 2)])
            assertErrorReply(try c2.command("GET", "\(p)k"), prefix: "ERR Can't execute 'get': only (P|S)SUBSCRIBE", "GET while subscribed")
            assertReply(try c2.command("PING"), Reply.bulks(["pong", ""]), "PING while subscribed")
            assertReply(try c2.command("PING", "hi"), Reply.bulks(["pong", "hi"]), "PING msg while subscribed")
            XCTAssertEqual(try c2.pipeline(raw: RESPWriter.command(["UNSUBSCRIBE"]), replies: 2),
                           [conf("unsubscribe", "\(p)x", 1), conf("unsubscribe", "\(p)y", 0)], "UNSUBSCRIBE all")
            assertReply(try c2.command("UNSUBSCRIBE"), conf("unsubscribe", nil, 0), "UNSUBSCRIBE with nothing subscribed")
            assertReply(try c2.command("GET", "\(p)k"), Reply.nilBulk, "out of subscribed mode")

            let c3 = try respool.client()
            guard case .map = try c3.command("HELLO", "3") else { return XCTFail("HELLO 3") }
            let pushConf = RESPValue.push([Reply.bulk("subscribe"), Reply.bulk("\(p)x"), Reply.int(1)])
            assertReply(try c3.command("SUBSCRIBE", "\(p)x"), pushConf, "RESP3 confirmation is a push")
            assertReply(try c3.command("SET", "\(p)k", "v"), Reply.ok, "RESP3 client runs commands while subscribed")
            assertReply(try c3.command("GET", "\(p)k"), Reply.bulk("v"))
            let publisher = try respool.client()
            assertReply(try publisher.command("PUBLISH", "\(p)x", "hello"), Reply.int(1), "one subscriber upstream")
            assertReply(try c3.readValue(), .push([Reply.bulk("message"), Reply.bulk("\(p)x"), Reply.bulk("hello")]), "RESP3 message push")
            assertReply(try c3.command("RESET"), Reply.simple("RESET"), "RESET leaves subscribed mode")
            // The server drops the subscription once it has processed respool's unsubscribe or the subscriber
            // connection's close (which redis may complete only at the end of an event-loop turn, after a PUBLISH
            // read in the same turn): wait until it has, rather than assume it.
            let direct = try redis.client()
            var numsub = RESPValue.null
            XCTAssertTrue(try waitUntil {
                numsub = try direct.command("PUBSUB", "NUMSUB", "\(p)x")
                return numsub == .array([Reply.bulk("\(p)x"), Reply.int(0)])
            }, "still subscribed upstream after RESET: \(show(numsub))")
            assertReply(try publisher.command("PUBLISH", "\(p)x", "again"), Reply.int(0), "nobody subscribed after RESET")
        }
    }

    /// Subscriptions are reference-counted: the upstream stays subscribed while any client wants the channel, and
    /// unsubscribes (then gives back the subscriber connection) when the last one leaves or disconnects.
    func testSubscriptionsAreReferenceCounted() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "3"]) { redis, respool in
            let p = keyPrefix()
            let s1 = try respool.client()
            let s2 = try respool.client()
            assertReply(try s1.command("SUBSCRIBE", "\(p)c"), conf("subscribe", "\(p)c", 1))
            assertReply(try s2.command("SUBSCRIBE", "\(p)c"), conf("subscribe", "\(p)c", 1))
            let direct = try redis.client()
            assertReply(try direct.command("PUBSUB", "NUMSUB", "\(p)c"), .array([Reply.bulk("\(p)c"), Reply.int(1)]), "one upstream subscription")
            assertReply(try s1.command("UNSUBSCRIBE", "\(p)c"), conf("unsubscribe", "\(p)c", 0))
            let pub = try respool.client()
            assertReply(try pub.command("PUBLISH", "\(p)c", "still"), Reply.int(1), "s2 still subscribed")
            assertReply(try s2.readValue(), Reply.bulks(["message", "\(p)c", "still"]))
            // s2 has its message, so the fan-out is done: anything sent to s1 would come before this PING's answer.
            assertNoStrayReplies(s1, "s1 unsubscribed but got a message")
            s2.close()
            var numsub = RESPValue.null
            try waitUntil {
                numsub = try direct.command("PUBSUB", "NUMSUB", "\(p)c")
                return numsub == .array([Reply.bulk("\(p)c"), Reply.int(0)])
            }
            XCTAssertEqual(numsub, .array([Reply.bulk("\(p)c"), Reply.int(0)]), "unsubscribed upstream after the last subscriber left")
            let list = try direct.command("CLIENT", "LIST").string ?? ""
            XCTAssertFalse(list.contains("flags=P"), "subscriber connection given back:\n\(list)")
        }
    }
}
