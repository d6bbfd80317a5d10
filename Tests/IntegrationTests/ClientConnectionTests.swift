// One client's misbehaviour stays with that client: malformed requests, vanishing with replies in flight, the
// client limit.
import Foundation
import RESP
import XCTest
#if canImport(Glibc)
import Glibc
#endif

final class ClientConnectionTests: IntegrationTestCase {
    /// A malformed request gets "-ERR Protocol error: ..." and closes only that client; the valid command before it
    /// in the same write is answered; clients in the middle of a pipeline are unaffected.
    func testMalformedRequestClosesOnlyThatClient() throws {
        try withRedisAndRespool { _, respool in
            let p = keyPrefix()
            // Good clients: 50 SET/GET pairs each, all written except the last 5 bytes.
            var goods: [(client: TestClient, payload: [UInt8], expected: [RESPValue])] = []
            for g in 0..<3 {
                var payload: [UInt8] = []
                var expected: [RESPValue] = []
                for i in 0..<25 {
                    payload += RESPWriter.command(["SET", "\(p)g\(g):\(i)", "value-\(g)-\(i)"])
                    payload += RESPWriter.command(["GET", "\(p)g\(g):\(i)"])
                    expected += [Reply.ok, Reply.bulk("value-\(g)-\(i)")]
                }
                let c = try respool.client()
                try c.send(Array(payload.dropLast(5)))
                goods.append((c, payload, expected))
            }
            let malformed: [(String, String)] = [
                ("*1\r\n$abc\r\n", "bad bulk length"),
                ("*1\r\n+x\r\n", "'+' where '$' is expected"),
                ("*abc\r\n", "bad multibulk length"),
                ("SET \(p)q \"unbalanced\r\n", "inline request with unbalanced quotes"),
                ("*1\r\n$536870913\r\n", "bulk length above 512 MB"),
                ("*2\r\n$3\r\nGET\r\n$-5\r\n", "negative bulk length"),
                (String(repeating: "a", count: 70 << 10), "inline request over 64 KB without a newline"),
            ]
            for (bad, what) in malformed {
                let c = try respool.client(timeout: 5)
                try c.send(RESPWriter.command(["ECHO", "valid first"]) + Array(bad.utf8))
                assertReply(try c.readValue(), Reply.bulk("valid first"), "valid command before the \(what) \(preview(Array(bad.utf8)))")
                let reply = try c.readValue()
                assertErrorReply(reply, prefix: "ERR Protocol error", "reply to \(what) \(preview(Array(bad.utf8)))")
                let outcome = c.waitForClose(timeout: 5)
                XCTAssertTrue(outcome == .closed(reset: false) || outcome == .closed(reset: true),
                              "connection after the \(what): \(outcome)")
            }
            for (g, good) in goods.enumerated() {
                try good.client.send(Array(good.payload.suffix(5)))
                let replies = try good.client.readValues(good.expected.count)
                for (i, (got, exp)) in zip(replies, good.expected).enumerated() where got != exp {
                    XCTFail("good client \(g) reply #\(i): expected \(show(exp)), got \(show(got))")
                    break
                }
            }
            let fresh = try respool.client()
            assertReply(try fresh.command("GET", "\(p)g0:24"), Reply.bulk("value-0-24"), "a new client after the malformed ones")
        }
    }

    /// Clients that disconnect (FIN or RST) with thousands of commands in flight, or in the middle of a command,
    /// do not disturb a client working alongside, and respool survives.
    func testClientsVanishingWithRepliesInFlight() throws {
        try withRedisAndRespool { _, respool in
            let p = keyPrefix()
            let stop = StopFlag()
            let failures = FailureLog()
            let endpoint = respool.endpoint
            let iterations = Locked(0)
            let steady = Worker {
                do {
                    let c = try TestClient(endpoint, timeout: 10)
                    var i = 0
                    while !stop.isSet {
                        let replies = try c.pipeline([["SET", "\(p)steady", "s\(i)"], ["GET", "\(p)steady"], ["ECHO", "e\(i)"]])
                        let expected = [Reply.ok, Reply.bulk("s\(i)"), Reply.bulk("e\(i)")]
                        if replies != expected {
                            failures.record("steady client iteration \(i): expected \(expected.map { show($0) }), got \(replies.map { show($0) })")
                            return
                        }
                        i += 1
                        iterations.withLock { $0 = i }
                    }
                } catch {
                    failures.record("steady client: \(error)")
                }
            }
            for round in 0..<20 {
                let c = try respool.client()
                var payload: [UInt8] = []
                for i in 0..<2000 {
                    payload += RESPWriter.command(i % 2 == 0 ? ["SET", "\(p)gone\(round):\(i)", String(repeating: "x", count: 100)]
                                                             : ["GET", "\(p)gone\(round):\(i - 1)"])
                }
                if round % 3 == 2 { payload += Array("*3\r\n$3\r\nSET\r\n$2\r\nab".utf8) }  // ends mid-command
                try c.send(payload)
                if round % 2 == 1 {
                    // RST instead of FIN.
                    var lin = linger(l_onoff: 1, l_linger: 0)
                    setsockopt(c.fd, SOL_SOCKET, SO_LINGER, &lin, socklen_t(MemoryLayout<linger>.size))
                }
                c.close()
            }
            // Respool is done with the vanished clients (all closed, their commands answered or dropped) while the
            // steady client kept going; it then completes a few more pipelines.
            if !respool.isDirectRedis {
                var open = -1.0, pending = -1
                XCTAssertTrue(try waitUntil {
                    open = try respool.metric("respool_clients")
                    pending = try respool.upstreamPending()
                    return (open == 1 && pending <= 3) || failures.count > 0
                }, "vanished clients still open (\(open) clients) or in flight (\(pending) upstream)")
            }
            let mark = iterations.current
            XCTAssertTrue(waitUntil { iterations.current >= mark + 3 || failures.count > 0 }, "the steady client stopped")
            stop.set()
            XCTAssertTrue(steady.join(timeout: 30), "steady client stuck")
            XCTAssertEqual(failures.count, 0, failures.summary)
            XCTAssertTrue(respool.isRunning, "respool died:\n\(respool.output)")
            let after = try respool.client()
            assertReply(try after.command("SET", "\(p)after", "a"), Reply.ok, "SET on a new client after the vanished ones")
            assertReply(try after.command("GET", "\(p)after"), Reply.bulk("a"), "GET on a new client after the vanished ones")
        }
    }

    /// RESPOOL_MAX_CLIENTS=5: the 6th client gets "-ERR max number of clients reached" and EOF; the 5 keep working,
    /// and a slot freed by a disconnect admits a new client.
    func testMaxClientsRejectsTheNextClient() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_MAX_CLIENTS": "5"]) { _, respool in
            var clients: [TestClient] = []
            for i in 0..<5 {
                let c = try respool.client()
                assertReply(try c.command("ECHO", "client \(i)"), Reply.bulk("client \(i)"), "client \(i) of 5")
                clients.append(c)
            }
            let sixth = try respool.client(timeout: 5)
            let reply = try sixth.readValue()   // sent on accept, before any request (as redis-server does)
            assertReply(reply, Reply.error("ERR max number of clients reached"), "6th client")
            let outcome = sixth.waitForClose(timeout: 5)
            XCTAssertTrue(outcome == .closed(reset: false) || outcome == .closed(reset: true), "6th client after the error: \(outcome)")
            for (i, c) in clients.enumerated() {
                assertReply(try c.command("PING"), Reply.pong, "client \(i) after the 6th was refused")
            }
            clients.removeFirst().close()
            // The disconnect has been processed (4 open), so the slot is free: the next client is admitted.
            var open = -1.0
            XCTAssertTrue(try waitUntil { open = try respool.metric("respool_clients"); return open == 4 }, "\(open) clients counted open")
            let c = try respool.client(timeout: 5)
            assertReply(try c.command("PING"), Reply.pong, "a client admitted after one of the 5 disconnected")
        }
    }
}
