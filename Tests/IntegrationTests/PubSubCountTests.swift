// Pub/sub counts as Redis counts them: PUBLISH's receivers, PUBSUB NUMSUB / SHARDNUMSUB / NUMPAT, SPUBLISH, through
// respool (whose clients share one subscriber connection per protocol) equal to the same subscriptions made directly
// against the same redis-server; NUMPAT right after each PUNSUBSCRIBE is confirmed.
import Foundation
import RESP
import XCTest

final class PubSubCountTests: IntegrationTestCase {
    /// The same subscribers directly and through respool (channels, a pattern, shard channels, a RESP3 client, a
    /// client on a channel and a matching pattern, counted twice): a publisher gets the same counts either way.
    func testCountsAreRedissForRespoolsClients() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "6"]) { redis, respool in
            let d = "\(keyPrefix("d"))", r = "\(keyPrefix("r"))"
            /// Subscribes four clients as (prefix): returns them (kept open).
            func subscribers(_ p: String, _ open: () throws -> TestClient) throws -> [TestClient] {
                let c = try (0..<4).map { _ in try open() }
                _ = try c[0].command("SUBSCRIBE", "\(p)ch")
                _ = try c[1].pipeline([["SUBSCRIBE", "\(p)ch", "\(p)other"]]).count
                _ = try c[1].readValue()
                _ = try c[2].command("SUBSCRIBE", "\(p)ch")
                _ = try c[2].command("PSUBSCRIBE", "\(p)c*")
                _ = try c[3].command("HELLO", "3")
                _ = try c[3].command("SUBSCRIBE", "\(p)ch")
                _ = try c[3].command("SSUBSCRIBE", "\(p)s")
                _ = try c[0].command("SSUBSCRIBE", "\(p)s")
                return c
            }
            let direct = try subscribers(d) { try redis.client() }
            let proxied = try subscribers(r) { try respool.client() }
            let commands: [[String]] = [
                ["PUBLISH", "{p}ch", "m"], ["PUBLISH", "{p}other", "m"], ["PUBLISH", "{p}cx", "m"], ["PUBLISH", "{p}none", "m"],
                ["SPUBLISH", "{p}s", "m"], ["PUBSUB", "NUMSUB", "{p}ch", "{p}other", "{p}none"],
                ["PUBSUB", "SHARDNUMSUB", "{p}s", "{p}none"], ["PUBSUB", "NUMPAT"],
            ]
            // NUMSUB and SHARDNUMSUB name the channels: respool's prefix is read as the direct one's (same length).
            func replies(_ c: TestClient, _ p: String) throws -> [String] {
                try c.send(commands.flatMap { RESPWriter.command($0.map { $0.replacingOccurrences(of: "{p}", with: p) }) })
                return try c.readRawReplies(commands.count).map { String(decoding: $0, as: UTF8.self).replacingOccurrences(of: p, with: "<p>") }
            }
            XCTAssertEqual(d.count, r.count)
            let want = try replies(try redis.client(), d), got = try replies(try respool.client(), r)
            for (k, command) in commands.enumerated() where got[k] != want[k] {
                XCTFail("\(command): redis-server answered \(want[k].debugDescription), respool \(got[k].debugDescription)")
            }
            XCTAssertEqual(want[0], ":5\r\n", "four on the channel, one of them also on a matching pattern")
            // NUMPAT right after the PUNSUBSCRIBEs are confirmed.
            // (Each subscriber has messages queued from the PUBLISHes above: read up to the confirmation itself.)
            func punsubscribe(_ c: TestClient, _ pattern: String) throws {
                try c.sendCommand(["PUNSUBSCRIBE", pattern])
                while true {
                    let v = try c.readValue(timeout: 10)
                    var items: [RESPValue] = []
                    if case .array(let a?) = v { items = a } else if case .push(let a) = v { items = a }
                    if items.first?.string == "punsubscribe" { return }
                }
            }
            try punsubscribe(direct[2], "\(d)c*")
            try punsubscribe(proxied[2], "\(r)c*")
            try assertSameReplies(direct: try redis.client(), proxied: try respool.client(),
                                  [["PUBSUB", "NUMPAT"], ["PUBLISH", "{p}cx", "m"], ["PUBLISH", "{p}ch", "m"]], "after PUNSUBSCRIBE", keys: (d, r))
            assertReply(try respool.client().command("PUBSUB", "NUMPAT"), Reply.int(0))
            for c in direct + proxied { c.close() }
        }
    }
}
