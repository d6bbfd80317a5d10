// Client authentication against RESPOOL_CLIENT_PASSWORD (redis's requirepass semantics), independent of the
// upstream's credentials, which come from the URL only.
import Foundation
import RESP
import XCTest

final class AuthTests: IntegrationTestCase {
    func testClientsMustAuthenticateWhenAPasswordIsSet() throws {
        try requireRealRespool()
        let secret = "cl1ent-pw-\(getpid())"
        try withRedisAndRespool(password: "upstream-pw-\(getpid())", env: ["RESPOOL_CLIENT_PASSWORD": secret]) { _, respool in
            let p = keyPrefix()
            let c = try respool.client()
            assertErrorReply(try c.command("GET", "\(p)k"), prefix: "NOAUTH Authentication required", "GET before AUTH")
            assertErrorReply(try c.command("CLIENT", "SETNAME", "x"), prefix: "NOAUTH", "CLIENT before AUTH")
            assertErrorReply(try c.command("MULTI"), prefix: "NOAUTH", "MULTI before AUTH")
            try c.send("GET \(p)k\r\n")
            assertErrorReply(try c.readValue(), prefix: "NOAUTH", "inline GET before AUTH")
            assertErrorReply(try c.command("AUTH", "wrong"), prefix: "WRONGPASS", "wrong password")
            assertErrorReply(try c.command("AUTH", "someone", secret), prefix: "WRONGPASS", "unknown user")
            assertErrorReply(try c.command("HELLO", "3"), prefix: "NOAUTH HELLO must be called", "HELLO without AUTH")
            // AUTH and the commands after it in one pipeline: answered in order.
            let r = try c.pipeline([["AUTH", secret], ["SET", "\(p)k", "v"], ["GET", "\(p)k"]])
            XCTAssertEqual(r, [Reply.ok, Reply.ok, Reply.bulk("v")], r.map { show($0) }.joined(separator: " "))
            assertReply(try c.command("RESET"), Reply.simple("RESET"), "RESET")
            assertErrorReply(try c.command("GET", "\(p)k"), prefix: "NOAUTH", "RESET forgets the authentication")

            let h = try respool.client()
            guard case .map = try h.command("HELLO", "3", "AUTH", "default", secret, "SETNAME", "hello-auth") else {
                return XCTFail("HELLO 3 AUTH default <password> should answer a map")
            }
            assertReply(try h.command("GET", "\(p)k"), Reply.bulk("v"), "GET after HELLO AUTH")
            assertReply(try h.command("CLIENT", "GETNAME"), Reply.bulk("hello-auth"), "SETNAME of the same HELLO")
            let out = respool.output
            XCTAssertFalse(out.contains(secret), "the client password appeared in respool's output")
        }
    }

    func testWithoutAPasswordAuthAnswersLikeAPasswordlessRedis() throws {
        try requireRealRespool()
        try withRedisAndRespool { _, respool in
            let c = try respool.client()
            assertErrorReply(try c.command("AUTH", "x"), prefix: "ERR AUTH <password> called without any password configured",
                             "AUTH without a configured password")
            assertReply(try c.command("AUTH", "default", "anything"), Reply.ok, "the default user has no password")
            assertErrorReply(try c.command("AUTH", "bob", "x"), prefix: "WRONGPASS", "unknown user")
            assertReply(try c.command("PING"), Reply.pong)
        }
    }

    /// The `cmdstat_auth` calls of the server's INFO commandstats (0 before any AUTH).
    private func authCalls(_ redis: RedisServer) throws -> Int {
        let info = try redis.client().command("INFO", "commandstats").string ?? ""
        guard let line = info.split(separator: "\r\n").first(where: { $0.hasPrefix("cmdstat_auth:") }),
              let calls = line.split(separator: ",").first?.split(separator: "=").last else { return 0 }
        return Int(calls) ?? -1
    }

    /// RESPOOL_CLIENT_PASSWORD unset: every AUTH and HELLO AUTH is the server's to judge (its answer byte for byte,
    /// compared with a direct client), and a client authenticated as an ACL user runs its commands as that user, on
    /// connections of that user's own pool (its rights, not respool's: NOPERM where the user has none, for commands
    /// and for SUBSCRIBE); a credential the server accepted is accepted again without asking it.
    func testAuthIsTheServersAndCommandsRunAsTheUser() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "6", "RESPOOL_NAME": "au"]) { redis, respool in
            let admin = try redis.client()
            assertReply(try admin.command("ACL", "SETUSER", "app", "on", ">apw", "~app:*", "&app:*", "+@all", "-flushall"), Reply.ok)
            try assertSameReplies(direct: try redis.client(), proxied: try respool.client(), [
                ["AUTH", "wrong"], ["AUTH", "app", "wrong"], ["AUTH", "nobody", "x"], ["AUTH", "default", "anything"],
                ["AUTH", "app", "apw"], ["ACL", "WHOAMI"], ["SET", "app:k", "v"], ["SET", "other:k", "v"], ["GET", "app:k"],
                ["SUBSCRIBE", "other:ch"], ["PING"], ["RESET"], ["ACL", "WHOAMI"], ["SET", "other:k", "v"],
            ], "AUTH judged by the server, then commands as app, and RESET back to the default user")
            let calls = try authCalls(redis)
            let second = try respool.client()
            assertReply(try second.command("AUTH", "app", "apw"), Reply.ok)
            assertReply(try second.command("ACL", "WHOAMI"), Reply.bulk("app"))
            XCTAssertEqual(try authCalls(redis), calls, "the accepted credential was not checked again")
            XCTAssertTrue(try second.command("CLIENT", "INFO").string?.contains(" user=app ") == true, "CLIENT INFO names the user")
            // A password changed through respool: the cached verdict goes, the server judges again.
            assertReply(try respool.client().command("ACL", "SETUSER", "app", "resetpass", ">newpw"), Reply.ok)
            let third = try respool.client()
            assertErrorReply(try third.command("AUTH", "app", "apw"), prefix: "WRONGPASS", "the old password, no longer cached")
            assertReply(try third.command("AUTH", "app", "newpw"), Reply.ok)
            assertReply(try admin.command("ACL", "SETUSER", "app", "resetpass", ">apw"), Reply.ok)
            let subscriber = try respool.client()
            assertReply(try subscriber.command("AUTH", "app", "apw"), Reply.ok)
            _ = try subscriber.command("SUBSCRIBE", "app:ch")
            assertReply(try admin.command("PUBLISH", "app:ch", "m"), Reply.int(1))
            assertReply(try subscriber.readValue(), Reply.bulks(["message", "app:ch", "m"]))
            // HELLO 3 AUTH: the server judges it too.
            let h = try respool.client()
            assertErrorReply(try h.command("HELLO", "3", "AUTH", "app", "nope"), prefix: "WRONGPASS")
            guard case .map = try h.command("HELLO", "3", "AUTH", "app", "apw") else { return XCTFail("HELLO 3 AUTH app") }
            assertReply(try h.command("ACL", "WHOAMI"), Reply.bulk("app"))
            // A client that never authenticated is the URL's user; the server sees app's own connections.
            assertReply(try respool.client().command("ACL", "WHOAMI"), Reply.bulk("default"))
            let list = try admin.command("CLIENT", "LIST").string ?? ""
            XCTAssertTrue(list.split(separator: "\n").contains { $0.contains("name=au:") && $0.contains(" user=app ") }, list)
            XCTAssertFalse(respool.stdoutText.contains("apw"), "no password in the log")
        }
    }

    /// A password changed through respool (CONFIG SET requirepass) leaves the URL's credential refused: /healthz
    /// turns 503 naming the user and the server's error, and 200 again once the password is back.
    func testPasswordChangedThroughRespoolShowsInHealth() throws {
        try requireRealRespool()
        try withRedis(password: "pw") { redis in
            try withRespool(upstream: redis) { respool in
                guard let port = respool.statsPort else { return XCTFail("no stats port") }
                XCTAssertTrue(try waitUntil { try httpGet(port, "/healthz").0 == 200 })
                let c = try respool.client()
                assertReply(try c.command("AUTH", "pw"), Reply.ok, "the URL's password, without asking the server")
                assertReply(try c.command("CONFIG", "SET", "requirepass", "changed"), Reply.ok)
                var body = ""
                XCTAssertTrue(try waitUntil { let r = try httpGet(port, "/healthz"); body = r.1; return r.0 == 503 }, body)
                XCTAssertTrue(body.contains("upstream refuses respool's credentials (user default): WRONGPASS"), body)
                XCTAssertFalse(body.contains("pw"), "no password: \(body)")
                XCTAssertTrue(respool.waitForLog("reason=\"upstream refuses respool's credentials (user default)"), respool.stdoutText)
                // Clients that know the new password still get through, as they would directly: their credential
                // is checked on a connection of its own, and their commands run on connections opened with it.
                let d = try TestClient(redis.endpoint)
                try assertSameReplies(direct: d, proxied: try respool.client(),
                                      [["AUTH", "wrong"], ["AUTH", "changed"], ["SET", "k", "v"], ["GET", "k"], ["ACL", "WHOAMI"]],
                                      "the new password")
                assertReply(try c.command("CONFIG", "SET", "requirepass", "pw"), Reply.ok)
                XCTAssertTrue(try waitUntil { try httpGet(port, "/healthz").0 == 200 }, "healthy again")
                XCTAssertTrue(respool.waitForLog("msg=\"healthy again\""), respool.stdoutText)
                XCTAssertFalse(respool.stdoutText.contains("changed"), "no password in the log")
            }
        }
    }

    /// An app that knows only respool's client password cannot read the upstream's password through respool: CONFIG
    /// GET of requirepass (directly, by a pattern, by "*", in RESP2 and RESP3) shows "(masked by respool)"; other
    /// parameters are the server's reply byte for byte; RESPOOL_MASK_SECRETS=off passes the value.
    func testConfigGetMasksTheUpstreamsSecrets() throws {
        try requireRealRespool()
        let upstream = "upstream-pw-\(getpid())"
        try withRedisAndRespool(password: upstream, env: ["RESPOOL_CLIENT_PASSWORD": "client-pw"]) { redis, respool in
            let c = try respool.client()
            assertReply(try c.command("AUTH", "client-pw"), Reply.ok)
            assertReply(try c.command("CONFIG", "GET", "requirepass"), Reply.bulks(["requirepass", "(masked by respool)"]))
            for pattern in ["*", "*pass*", "REQUIREPASS"] {
                let v = try c.command("CONFIG", "GET", pattern)
                XCTAssertFalse(show(v).contains(upstream), "CONFIG GET \(pattern) leaks the upstream password")
                XCTAssertTrue(show(v).contains("(masked by respool)"), "CONFIG GET \(pattern): \(show(v).prefix(200))")
            }
            let direct = try redis.client()
            for d in [direct, c] { try d.sendCommand(["CONFIG", "GET", "maxmemory*"]) }
            XCTAssertEqual(try c.readRawReply(timeout: 10), try direct.readRawReply(timeout: 10), "other parameters untouched")
            guard case .map = try c.command("HELLO", "3") else { return XCTFail("HELLO 3") }
            try c.sendCommand(["CONFIG", "GET", "requirepass"])
            XCTAssertEqual(String(decoding: try c.readRawReply(timeout: 10), as: UTF8.self),
                           "%1\r\n$11\r\nrequirepass\r\n$19\r\n(masked by respool)\r\n")
        }
        try withRedisAndRespool(password: upstream, env: ["RESPOOL_CLIENT_PASSWORD": "client-pw", "RESPOOL_MASK_SECRETS": "off"]) { _, respool in
            let c = try respool.client()
            assertReply(try c.command("AUTH", "client-pw"), Reply.ok)
            assertReply(try c.command("CONFIG", "GET", "requirepass"), Reply.bulks(["requirepass", upstream]), "off: as the server answers")
        }
    }
}
