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
}
