// The KEYS guard (RESPOOL_KEYS): allow, warn (one rate-limited log line), deny (error suggesting SCAN), scan (the
// answer of KEYS built from an incremental SCAN; the server never runs KEYS).
import Foundation
import RESP
import XCTest

final class KeysGuardTests: IntegrationTestCase {
    private func populate(_ c: TestClient, prefix p: String, count: Int) throws {
        var payload: [UInt8] = []
        for i in 0..<count { payload += RESPWriter.command(["SET", "\(p)key:\(i)", "v"]) }
        let replies = try c.pipeline(raw: payload, replies: count)
        XCTAssertTrue(replies.allSatisfy { $0 == Reply.ok })
    }

    private func keySet(_ v: RESPValue) -> Set<String>? {
        guard case .array(let items?) = v else { return nil }
        return Set(items.compactMap { $0.string })
    }

    func testScanModeAnswersKeysWithoutRunningKeys() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_KEYS": "scan"]) { redis, respool in
            let p = keyPrefix()
            let c = try respool.client()
            try populate(c, prefix: p, count: 2500)
            try populate(c, prefix: "\(p)other", count: 10)
            let expected = Set((0..<2500).map { "\(p)key:\($0)" })
            let r = try c.command("KEYS", "\(p)key:*")
            guard case .array(let items?) = r else { return XCTFail("KEYS: \(show(r))") }
            XCTAssertEqual(items.count, 2500, "no duplicates")
            XCTAssertEqual(keySet(r), expected)
            assertReply(try c.command("KEYS", "\(p)nothing*"), Reply.emptyArray, "no match")
            // In the pipeline order, and in the client's database.
            let piped = try c.pipeline([["SELECT", "1"], ["SET", "\(p)key:db1", "v"], ["KEYS", "\(p)key:*"], ["SELECT", "0"], ["GET", "\(p)key:1"]])
            XCTAssertEqual(keySet(piped[2]), ["\(p)key:db1"], "KEYS in db 1")
            XCTAssertEqual(piped[4], Reply.bulk("v"))
            let stats = try redis.client().command("INFO", "commandstats").string ?? ""
            XCTAssertFalse(stats.contains("cmdstat_keys:"), "the server ran KEYS:\n\(stats)")
            XCTAssertTrue(stats.contains("cmdstat_scan:"), "no SCAN on the server:\n\(stats)")
        }
    }

    func testDenyModeSuggestsScan() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_KEYS": "deny"]) { _, respool in
            let c = try respool.client()
            let r = try c.pipeline([["SET", "a", "1"], ["KEYS", "*"], ["GET", "a"]])
            XCTAssertEqual(r[0], Reply.ok)
            XCTAssertTrue(r[1].isError(prefix: "ERR respool: KEYS is disabled") && (r[1].errorText ?? "").contains("SCAN"), show(r[1]))
            XCTAssertEqual(r[2], Reply.bulk("1"))
        }
    }

    func testWarnModeLogsOnceAndAllowModeStaysQuiet() throws {
        try requireRealRespool()
        for mode in ["warn", "allow"] {
            try withRedisAndRespool(env: ["RESPOOL_KEYS": mode]) { _, respool in
                let p = keyPrefix()
                let c = try respool.client()
                assertReply(try c.command("SET", "\(p)k", "v"), Reply.ok)
                for _ in 0..<3 { assertReply(try c.command("KEYS", "\(p)*"), Reply.bulks(["\(p)k"]), "KEYS forwarded (\(mode))") }
                // A line logged after the three KEYS: every line they caused is captured by now.
                XCTAssertFalse(respool.logMarker().isEmpty, "no stats line after SIGUSR1")
                let lines = respool.stdoutText.split(separator: "\n").filter { $0.contains("KEYS used") }
                XCTAssertEqual(lines.count, mode == "warn" ? 1 : 0, "\(mode): \(lines)")
            }
        }
    }
}
