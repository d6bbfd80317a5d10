// Sharing upstream connections: one client must never hold up the others (stalled half-sent request, a client
// that does not read), and replies respool makes itself must keep their place behind forwarded ones.
import Foundation
import RESP
import TestKit
import XCTest

final class MultiplexingTests: IntegrationTestCase {
    /// One upstream connection; client A sends half of a 10 MB SET and stalls. Client B's commands are answered
    /// promptly meanwhile (A's partial request must not occupy the shared connection); then A finishes and succeeds.
    func testStalledHalfSentRequestDoesNotBlockOtherClients() throws {
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "1"]) { _, respool in
            let p = keyPrefix()
            let a = try respool.client(timeout: 30)
            let b = try respool.client(timeout: 5)
            assertReply(try b.command("SET", "\(p)b", "warm"), Reply.ok, "B before")
            var rng = SeededRandom(seed: 99)
            let value = rng.bytes(10 << 20)
            let request = RESPWriter.command([Array("SET".utf8), Array("\(p)a".utf8), value])
            let half = request.count / 2
            let readBefore = respool.isDirectRedis ? 0 : try respool.metric("respool_bytes_total", "from_clients")
            try a.send(Array(request[0..<half]))
            // Respool holds A's half request (it has read every byte of it) when B's commands come.
            if !respool.isDirectRedis {
                XCTAssertTrue(try waitUntil { try respool.metric("respool_bytes_total", "from_clients") >= readBefore + Double(half) },
                              "respool read A's half request")
            }
            for i in 0..<5 {
                let t0 = monotonicNow()
                let r = try b.command("ECHO", "b\(i)")
                assertReply(r, Reply.bulk("b\(i)"), "B's ECHO while A's SET is half sent")
                XCTAssertLessThan(monotonicNow() - t0, 1.0, "B waited for A's half-sent request")
            }
            try a.send(Array(request[half...]))
            assertReply(try a.readValue(), Reply.ok, "A's SET after completing it")
            assertReply(try b.command("STRLEN", "\(p)a"), Reply.int(10 << 20), "STRLEN of A's value")
        }
    }

    /// One upstream connection; client A pipelines GETs of a 4 MB value and reads nothing for a while. Client B keeps
    /// being answered promptly; then A reads all its replies intact.
    func testClientNotReadingItsRepliesDoesNotBlockOtherClients() throws {
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "1"]) { _, respool in
            let p = keyPrefix()
            let a = try respool.client(timeout: 30)
            let b = try respool.client(timeout: 5)
            var rng = SeededRandom(seed: 5)
            let value = rng.bytes(4 << 20)
            assertReply(try a.command(bytes: [Array("SET".utf8), Array("\(p)big".utf8), value]), Reply.ok, "SET 4 MB")
            let gets = 8
            var payload: [UInt8] = []
            for _ in 0..<gets { payload += RESPWriter.command(["GET", "\(p)big"]) }
            guard case .integer(let aID) = try a.command("CLIENT", "ID") else { return XCTFail("CLIENT ID") }
            try a.send(payload)   // 32 MB of replies that A does not read yet
            // Every reply has come back from the server and respool holds at least one whole 4 MB reply that A has not
            // read when B's commands come.
            if !respool.isDirectRedis {
                var info: [String: Any]? = nil
                XCTAssertTrue(try waitUntil {
                    info = try respool.clientInfo(id: aID)
                    return (info?["in_flight"] as? NSNumber)?.intValue == 0 && ((info?["output_bytes"] as? NSNumber)?.intValue ?? 0) >= 4 << 20
                }, "A's replies pile up in respool: \(info ?? [:])")
            }
            for i in 0..<5 {
                let t0 = monotonicNow()
                assertReply(try b.command("ECHO", "b\(i)"), Reply.bulk("b\(i)"), "B's ECHO while A does not read")
                XCTAssertLessThan(monotonicNow() - t0, 1.0, "B waited for A to read its replies")
            }
            for i in 0..<gets {
                let r = try a.readValue()
                if r != Reply.bulk(value) {
                    XCTFail("A's GET #\(i): \(show(r, limit: 40))")
                    break
                }
            }
            assertReply(try a.command("ECHO", "a done"), Reply.bulk("a done"), "A after reading everything")
        }
    }

    /// Replies respool makes itself (CLIENT ID/SETNAME/GETNAME, HELLO, refused commands, QUIT) keep their place in
    /// the pipeline behind a slow forwarded command, and each reply uses the protocol in force when its request was
    /// made (a HELLO 3 in the middle of a pipeline only changes the replies after it).
    func testLocalRepliesKeepTheirPlaceBehindSlowForwardedCommands() throws {
        try requireRealRespool()
        try withRedisAndRespool(redisArgs: ["--enable-debug-command", "yes"]) { _, respool in
            let p = keyPrefix()
            let c = try respool.client()
            assertReply(try c.command("HSET", "\(p)h", "f", "v"), Reply.int(1), "HSET")
            guard case .integer(let id) = try c.command("CLIENT", "ID") else { return XCTFail("CLIENT ID") }
            let commands: [[String]] = [
                ["DEBUG", "SLEEP", "0.3"], ["CLIENT", "ID"], ["HGETALL", "\(p)h"], ["CLIENT", "SETNAME", "it-order"],
                ["ECHO", "e1"], ["CLIENT", "GETNAME"], ["BLPOP", "\(p)l", "0.1"], ["GET", "\(p)missing"],
                ["HELLO", "3"], ["HGETALL", "\(p)h"], ["GET", "\(p)missing"], ["CLIENT", "GETNAME"],
                ["HELLO", "2"], ["HGETALL", "\(p)h"], ["GET", "\(p)missing"], ["QUIT"],
            ]
            var payload: [UInt8] = []
            for cmd in commands { payload += RESPWriter.command(cmd) }
            try c.send(payload)
            var replies: [RESPValue] = []
            for _ in commands { replies.append(try c.readValue()) }
            let resp2Hash = Reply.bulks(["f", "v"])
            let resp3Hash = RESPValue.map([Reply.bulk("f"), Reply.bulk("v")])
            let checks: [(Int, (RESPValue) -> Bool, String)] = [
                (0, { $0 == Reply.ok }, "+OK"), (1, { $0 == .integer(id) }, ":\(id)"), (2, { $0 == resp2Hash }, "RESP2 array"),
                (3, { $0 == Reply.ok }, "+OK"), (4, { $0 == Reply.bulk("e1") }, "\"e1\""), (5, { $0 == Reply.bulk("it-order") }, "\"it-order\""),
                (6, { $0 == .array(nil) }, "*-1 (BLPOP timed out on its lease)"), (7, { $0 == Reply.nilBulk }, "$-1"),
                (8, { if case .map = $0 { return true } else { return false } }, "a HELLO map"), (9, { $0 == resp3Hash }, "RESP3 map"),
                (10, { $0 == .null }, "_"), (11, { $0 == Reply.bulk("it-order") }, "\"it-order\""),
                (12, { if case .array(_?) = $0 { return true } else { return false } }, "a HELLO array"),
                (13, { $0 == resp2Hash }, "RESP2 array"), (14, { $0 == Reply.nilBulk }, "$-1"), (15, { $0 == Reply.ok }, "+OK (QUIT)"),
            ]
            for (i, check, what) in checks where !check(replies[i]) {
                XCTFail("reply #\(i) to \(commands[i]) (behind DEBUG SLEEP): expected \(what), got \(show(replies[i]))")
            }
            let outcome = c.waitForClose()
            XCTAssertTrue(outcome == .closed(reset: false) || outcome == .closed(reset: true), "after QUIT: \(outcome)")
        }
    }

    /// RESPOOL_MAX_CLIENTS=5: refused connections and closed clients give their slots back.
    func testClientSlotsAreNotLeakedByRefusedOrClosedClients() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_MAX_CLIENTS": "5"]) { _, respool in
            for round in 0..<3 {
                // The closes of the round before have been processed: every slot is free again.
                var open = -1.0
                XCTAssertTrue(try waitUntil { open = try respool.metric("respool_clients"); return open == 0 },
                              "round \(round): \(open) clients still counted open")
                var clients: [TestClient] = []
                for i in 0..<5 {
                    let c = try respool.client(timeout: 5)
                    assertReply(try c.command("ECHO", "r\(round)"), Reply.bulk("r\(round)"), "round \(round) client \(i) admitted")
                    clients.append(c)
                }
                for i in 0..<10 {
                    let extra = try respool.client(timeout: 5)
                    assertReply(try extra.readValue(), Reply.error("ERR max number of clients reached"), "round \(round) extra client \(i)")
                }
                for c in clients { c.close() }
            }
        }
    }
}
