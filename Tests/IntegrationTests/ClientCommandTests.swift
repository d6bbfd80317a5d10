// CLIENT LIST / KILL / REPLY / NO-EVICT / NO-TOUCH / GETREDIR answered for respool's own clients, in redis's
// formats; names of leased upstream connections as the server's CLIENT LIST shows them.
import Foundation
import RESP
import XCTest

final class ClientCommandTests: IntegrationTestCase {
    private func entries(_ v: RESPValue) -> [[String: String]] {
        let text: String
        switch v {
        case .verbatim(_, let t): text = String(decoding: t, as: UTF8.self)
        default: text = v.string ?? ""
        }
        return text.split(separator: "\n").map { line in
            var d: [String: String] = [:]
            for field in line.split(separator: " ") {
                let parts = field.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                if parts.count == 2 { d[String(parts[0])] = String(parts[1]) }
            }
            return d
        }
    }

    func testClientListShowsRespoolsOwnClients() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "3"]) { _, respool in
            let a = try respool.client()
            let b = try respool.client()
            assertReply(try a.command("CLIENT", "SETNAME", "alpha"), Reply.ok)
            guard case .integer(let idA) = try a.command("CLIENT", "ID"), case .integer(let idB) = try b.command("CLIENT", "ID") else {
                return XCTFail("CLIENT ID")
            }
            assertReply(try b.command("SELECT", "2"), Reply.ok)
            assertReply(try b.command("MULTI"), Reply.ok)
            assertReply(try b.command("SET", "k", "v"), Reply.simple("QUEUED"))
            let list = entries(try a.command("CLIENT", "LIST"))
            XCTAssertEqual(list.count, 2, "\(list)")
            let fields = ["id", "addr", "laddr", "fd", "name", "age", "idle", "flags", "db", "sub", "psub", "multi", "cmd", "user", "resp"]
            for e in list { for f in fields { XCTAssertNotNil(e[f], "field \(f) missing in \(e)") } }
            let ea = list.first { $0["id"] == String(idA) }
            let eb = list.first { $0["id"] == String(idB) }
            XCTAssertEqual(ea?["name"], "alpha")
            XCTAssertEqual(ea?["flags"], "N")
            XCTAssertEqual(eb?["db"], "2")
            XCTAssertEqual(eb?["flags"], "x", "in MULTI")
            XCTAssertEqual(eb?["multi"], "1", "one queued command")
            XCTAssertEqual(entries(try a.command("CLIENT", "LIST", "ID", String(idB))).map { $0["id"] }, [String(idB)])
            XCTAssertEqual(entries(try a.command("CLIENT", "LIST", "TYPE", "pubsub")).count, 0)
            assertErrorReply(try a.command("CLIENT", "LIST", "TYPE", "bogus"), prefix: "ERR Unknown client type")
            let info = entries(try a.command("CLIENT", "INFO"))
            XCTAssertEqual(info.first?["id"], String(idA))
            assertReply(try b.command("EXEC"), .array([Reply.ok]))
        }
    }

    func testClientKillClosesRespoolClients() throws {
        try requireRealRespool()
        try withRedisAndRespool { _, respool in
            let killer = try respool.client()
            let v1 = try respool.client()
            let v2 = try respool.client()
            guard case .integer(let id1) = try v1.command("CLIENT", "ID") else { return XCTFail("CLIENT ID") }
            assertReply(try killer.command("CLIENT", "KILL", "ID", String(id1)), Reply.int(1), "kill by ID")
            XCTAssertEqual(v1.waitForClose(timeout: 3), .closed(reset: false), "killed client closed")
            let e2 = entries(try v2.command("CLIENT", "INFO")).first ?? [:]
            assertReply(try killer.command("CLIENT", "KILL", e2["addr"] ?? "?"), Reply.ok, "old form by addr")
            XCTAssertEqual(v2.waitForClose(timeout: 3), .closed(reset: false), "killed client closed")
            assertErrorReply(try killer.command("CLIENT", "KILL", "1.2.3.4:5"), prefix: "ERR No such client")
            assertReply(try killer.command("CLIENT", "KILL", "ID", "999999"), Reply.int(0))
            // SKIPME yes (the default) spares the caller.
            assertReply(try killer.command("CLIENT", "KILL", "USER", "default"), Reply.int(0), "only the caller is left")
            assertReply(try killer.command("PING"), Reply.pong, "the caller is still connected")
        }
    }

    func testClientReplyOffSkipOn() throws {
        try requireRealRespool()
        try withRedisAndRespool { _, respool in
            let p = keyPrefix()
            let c = try respool.client()
            try c.send(RESPWriter.command(["CLIENT", "REPLY", "OFF"]) + RESPWriter.command(["SET", "\(p)a", "1"])
                       + RESPWriter.command(["GET", "\(p)a"]) + RESPWriter.command(["PING"]) + RESPWriter.command(["CLIENT", "REPLY", "ON"])
                       + RESPWriter.command(["GET", "\(p)a"]))
            assertReply(try c.readValue(), Reply.ok, "the first reply is CLIENT REPLY ON's")
            assertReply(try c.readValue(), Reply.bulk("1"), "then GET (the SET ran while replies were off)")
            try c.send(RESPWriter.command(["CLIENT", "REPLY", "SKIP"]) + RESPWriter.command(["SET", "\(p)b", "2"])
                       + RESPWriter.command(["GET", "\(p)b"]))
            assertReply(try c.readValue(), Reply.bulk("2"), "SKIP: only the command after the skipped one answers")
            assertNoStrayReplies(c, "the skipped SET's reply never comes")
            assertReply(try c.command("CLIENT", "NO-EVICT", "on"), Reply.ok)
            assertReply(try c.command("CLIENT", "NO-TOUCH", "off"), Reply.ok)
            assertReply(try c.command("CLIENT", "GETREDIR"), Reply.int(-1))
        }
    }

    func testLeasedConnectionsCarryTheClientName() throws {
        try requireRealRespool()
        let prefix = "itnames\(getpid())"
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "3", "RESPOOL_NAME": prefix]) { redis, respool in
            let c = try respool.client()
            assertReply(try c.command("CLIENT", "SETNAME", "checkout-worker"), Reply.ok)
            assertReply(try c.command("WATCH", "k"), Reply.ok)
            let sampler = try redis.client()
            let during = try sampler.command("CLIENT", "LIST").string ?? ""
            XCTAssertTrue(during.contains("name=\(prefix):checkout-worker"), "leased connection renamed:\n\(during)")
            assertReply(try c.command("UNWATCH"), Reply.ok)
            // The lease's connection gets its pool name back (a CLIENT SETNAME respool sends after the UNWATCH reply).
            var after = ""
            let restored = try waitUntil {
                after = try sampler.command("CLIENT", "LIST").string ?? ""
                return !after.contains("name=\(prefix):checkout-worker")
            }
            XCTAssertTrue(restored, "name restored after the lease:\n\(after)")
            XCTAssertTrue(after.contains("name=\(prefix):pool"), after)
        }
    }

    /// The line of one client: its fields in order, and their values.
    private func line(_ v: RESPValue) -> [(String, String)] {
        let text: String
        switch v {
        case .verbatim(_, let t): text = String(decoding: t, as: UTF8.self)
        default: text = v.string ?? ""
        }
        return text.split(separator: "\n").first.map { l in
            l.split(separator: " ").map { f in
                let parts = f.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                return (String(parts[0]), parts.count > 1 ? String(parts[1]) : "")
            }
        } ?? []
    }

    /// CLIENT INFO through respool against a direct client of the same redis-server in the same states: the same
    /// fields in the same order, and the same values wherever they describe the client rather than a process or a
    /// socket (flags, db, subscriptions, multi, qbuf and argv-mem of the CLIENT INFO itself, events, cmd with its
    /// subcommand, redir, resp). CLIENT KILL's and CLIENT LIST's argument errors are the server's, byte for byte.
    func testClientInfoAndKillMatchRedisFieldForField() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "5"]) { redis, respool in
            let p = keyPrefix()
            let compared = ["flags", "db", "sub", "psub", "ssub", "multi", "qbuf", "argv-mem", "multi-mem", "obl", "oll",
                            "events", "cmd", "user", "redir", "resp"]
            func compare(_ context: String, _ setUp: (TestClient) throws -> Void) throws {
                let d = try redis.client(), r = try respool.client()
                try setUp(d)
                try setUp(r)
                let want = line(try d.command("CLIENT", "INFO")), got = line(try r.command("CLIENT", "INFO"))
                XCTAssertEqual(got.map(\.0), want.map(\.0), "\(context): the fields and their order")
                let w = Dictionary(want, uniquingKeysWith: { a, _ in a }), g = Dictionary(got, uniquingKeysWith: { a, _ in a })
                for f in compared where g[f] != w[f] {
                    XCTFail("\(context): \(f)=\(g[f] ?? "-") through respool, \(f)=\(w[f] ?? "-") directly")
                }
            }
            try compare("fresh") { _ in }
            try compare("after GET, in db 3") { c in
                _ = try c.command("SELECT", "3")
                _ = try c.command("GET", "\(p)k")
            }
            try compare("RESP3, tracking") { c in
                _ = try c.command("HELLO", "3")
                _ = try c.command("CLIENT", "TRACKING", "ON")
            }
            try compare("named, after CONFIG GET") { c in
                _ = try c.command("CLIENT", "SETNAME", "n1")
                _ = try c.command("CONFIG", "GET", "maxmemory")
            }
            // A blocked client and a monitor as another client's CLIENT LIST shows them.
            func flagsOf(_ open: () throws -> TestClient, _ start: [String], asker: TestClient) throws -> (String?, String?) {
                let c = try open()
                let id = try c.command("CLIENT", "ID")
                try c.sendCommand(start)
                guard case .integer(let n) = id else { return (nil, nil) }
                var entry: [(String, String)] = []
                XCTAssertTrue(try waitUntil {
                    entry = line(try asker.command("CLIENT", "LIST", "ID", String(n)))
                    let d = Dictionary(entry, uniquingKeysWith: { a, _ in a })
                    return d["cmd"] == start[0].lowercased()
                }, "\(start) shows in CLIENT LIST: \(entry)")
                let d = Dictionary(entry, uniquingKeysWith: { a, _ in a })
                c.close()
                return (d["flags"], d["cmd"])
            }
            for start in [["BLPOP", "\(p)never", "0"], ["MONITOR"]] {
                let want = try flagsOf({ try redis.client() }, start, asker: try redis.client())
                let got = try flagsOf({ try respool.client() }, start, asker: try respool.client())
                XCTAssertEqual(got.0, want.0, "\(start[0]): flags")
                XCTAssertEqual(got.1, want.1, "\(start[0]): cmd")
            }
            try assertSameReplies(direct: try redis.client(), proxied: try respool.client(), [
                ["CLIENT", "KILL", "ID", "-1"], ["CLIENT", "KILL", "ID", "0"], ["CLIENT", "KILL", "ID", "abc"],
                ["CLIENT", "KILL", "ID", "987654"], ["CLIENT", "KILL", "1.2.3.4:5"], ["CLIENT", "KILL", "BOGUS", "x"],
                ["CLIENT", "KILL", "TYPE", "bogus"], ["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "maybe"],
                ["CLIENT", "KILL", "LADDR", "1.2.3.4:5"], ["CLIENT", "KILL", "MAXAGE", "100000"], ["CLIENT", "KILL", "ID"],
                ["CLIENT", "KILL"], ["CLIENT", "KILL", "ADDR", "1.2.3.4:5", "ID", "5"], ["CLIENT", "LIST", "TYPE", "bogus"],
                ["CLIENT", "LIST", "ID", "abc"], ["CLIENT", "LIST", "ID", "0"], ["CLIENT", "LIST", "ID", "-5", "987654"],
            ], "CLIENT KILL and LIST arguments")
        }
    }
}
