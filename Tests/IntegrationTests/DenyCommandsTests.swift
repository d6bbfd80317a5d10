// RESPOOL_DENY_COMMANDS: denied commands get NOPERM and never reach the server; inside MULTI they make EXEC fail as
// an ACL denial does on a direct connection.
import Foundation
import RESP
import XCTest

final class DenyCommandsTests: IntegrationTestCase {
    func testDeniedCommandsGetNopermInOrderAndNeverReachTheServer() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_DENY_COMMANDS": "flushall, FLUSHDB,Config|Set,debug"]) { redis, respool in
            let p = keyPrefix()
            let c = try respool.client()
            // Pipelined: each reply in its place, the denied ones answered by respool, the others by the server.
            let r = try c.pipeline([["SET", "\(p)k", "v"], ["FLUSHALL"], ["flushdb", "ASYNC"], ["CONFIG", "SET", "maxmemory", "1"],
                                    ["CONFIG", "GET", "maxmemory"], ["DEBUG", "SLEEP", "0"], ["GET", "\(p)k"]])
            XCTAssertEqual(r[0], Reply.ok)
            XCTAssertEqual(r[1].errorText, "NOPERM respool denies the 'flushall' command here (RESPOOL_DENY_COMMANDS)")
            XCTAssertEqual(r[2].errorText, "NOPERM respool denies the 'flushdb' command here (RESPOOL_DENY_COMMANDS)")
            XCTAssertEqual(r[3].errorText, "NOPERM respool denies the 'config|set' command here (RESPOOL_DENY_COMMANDS)")
            XCTAssertEqual(r[4], Reply.bulks(["maxmemory", "0"]), "CONFIG GET is not denied")
            XCTAssertEqual(r[5].errorText, "NOPERM respool denies the 'debug' command here (RESPOOL_DENY_COMMANDS)")
            XCTAssertEqual(r[6], Reply.bulk("v"), "nothing was flushed")
            // Inline too.
            try c.send("FLUSHALL\r\nPING\r\n")
            let inline = try c.readValues(2, timeout: 10)
            XCTAssertEqual(inline[0].errorText, "NOPERM respool denies the 'flushall' command here (RESPOOL_DENY_COMMANDS)")
            XCTAssertEqual(inline[1], Reply.pong)
            let stats = try redis.client().command("INFO", "commandstats").string ?? ""
            for command in ["flushall", "flushdb", "config|set", "debug"] {
                XCTAssertFalse(stats.contains("cmdstat_\(command):"), "the server ran \(command):\n\(stats)")
            }
            XCTAssertTrue(stats.contains("cmdstat_config|get:"), stats)
        }
    }

    /// The same transaction through respool (FLUSHALL denied by RESPOOL_DENY_COMMANDS) and directly as a user whose
    /// ACL lacks FLUSHALL: the same replies but the NOPERM text, EXEC aborted, nothing of the transaction run, and
    /// the connection usable afterwards; the same for WATCH + MULTI and for DISCARD.
    func testDeniedCommandInsideMultiAbortsExecAsAnACLDenialDoes() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_DENY_COMMANDS": "flushall"]) { redis, respool in
            let p = keyPrefix()
            let admin = try redis.client()
            assertReply(try admin.command("ACL", "SETUSER", "\(p)limited", "on", ">pw", "~*", "&*", "+@all", "-flushall"), Reply.ok)
            let direct = try redis.client()
            assertReply(try direct.command("AUTH", "\(p)limited", "pw"), Reply.ok)
            let proxied = try respool.client()
            for (name, c) in [("direct", direct), ("respool", proxied)] {
                let k = "\(p)\(name)"
                let r = try c.pipeline([["WATCH", "\(k):w"], ["MULTI"], ["SET", k, "1"], ["FLUSHALL"], ["INCR", k], ["EXEC"],
                                        ["GET", k], ["MULTI"], ["FLUSHALL"], ["DISCARD"], ["MULTI"], ["SET", k, "2"], ["EXEC"]])
                let shown = r.map { v -> String in
                    if let e = v.errorText, e.hasPrefix("NOPERM") { return "-NOPERM" }
                    return show(v)
                }
                XCTAssertEqual(shown, [show(Reply.ok), show(Reply.ok), show(Reply.simple("QUEUED")), "-NOPERM", show(Reply.simple("QUEUED")),
                                       "-EXECABORT Transaction discarded because of previous errors.", show(Reply.nilBulk),
                                       show(Reply.ok), "-NOPERM", show(Reply.ok), show(Reply.ok), show(Reply.simple("QUEUED")),
                                       show(.array([Reply.ok]))], name)
                assertReply(try c.command("GET", k), Reply.bulk("2"), name)
            }
            guard case .integer(let keys) = try admin.command("DBSIZE") else { return XCTFail("DBSIZE") }
            XCTAssertGreaterThan(keys, 0, "nothing was flushed")
        }
    }

    /// EXEC itself denied: EXECABORT with the NOPERM reason, the transaction discarded (nothing of it ran, and a new
    /// MULTI is not "nested"), as directly for a user whose ACL lacks EXEC.
    func testDeniedExecDiscardsTheTransaction() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_DENY_COMMANDS": "exec"]) { redis, respool in
            let p = keyPrefix()
            let admin = try redis.client()
            assertReply(try admin.command("ACL", "SETUSER", "\(p)noexec", "on", ">pw", "~*", "&*", "+@all", "-exec"), Reply.ok)
            let direct = try redis.client()
            assertReply(try direct.command("AUTH", "\(p)noexec", "pw"), Reply.ok)
            for (name, c) in [("direct", direct), ("respool", try respool.client())] {
                let r = try c.pipeline([["MULTI"], ["SET", "\(p)\(name)", "1"], ["EXEC"], ["MULTI"], ["DISCARD"], ["EXISTS", "\(p)\(name)"]])
                XCTAssertEqual(r[0], Reply.ok, name)
                XCTAssertEqual(r[1], Reply.simple("QUEUED"), name)
                XCTAssertTrue(r[2].isError(prefix: "EXECABORT Transaction discarded because of: NOPERM"), "\(name): \(show(r[2]))")
                XCTAssertEqual(Array(r[3...]), [Reply.ok, Reply.ok, Reply.int(0)], name)
            }
        }
    }
}
