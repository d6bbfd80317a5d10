// The connection-level fuzzer (scripts/fuzz connections, scripts/fuzz.d/connfuzz.py), a short fixed-seed run.
import Foundation
import XCTest

final class ConnectionFuzzTests: IntegrationTestCase {
    /// 20 clients send random pipelines (split at random points, sometimes a byte at a time) over every route:
    /// forwarded, local, leased (MULTI/WATCH/BLPOP), pub/sub, KEYS, inline, RESP2 and RESP3, and end some connections
    /// with invalid bytes. Each client's twin sends the same commands to the same redis-server directly, in its own
    /// key space: every reply through respool equals the twin's byte for byte (protocol errors and the close after
    /// them included), no client waits 40 s, respool keeps running and logs no error, and the cap holds.
    func testRandomCommandMixesAnswerAsRedisDoes() throws {
        try requireRealRespool()
        raiseFileLimit()
        let r = try runTool("/bin/bash", ["\(repositoryRoot)/scripts/fuzz", "connections", "15"], environment: [
            "RESPOOL_BIN": Respool.binary, "FUZZ_SEED": "20261201", "FUZZ_CLIENTS": "20",
        ], timeout: 150)
        let out = r.stdout + r.stderr
        XCTAssertEqual(r.status, .exited(0), out)
        let label = "replies compared with redis-server's: "
        let line = r.stdout.split(separator: "\n").first { $0.hasPrefix(label) } ?? ""
        let digits = String(line.dropFirst(label.count).prefix { $0.isNumber || $0 == "," }.filter { $0.isNumber })
        XCTAssertGreaterThan(Int(digits) ?? 0, 5_000, out)
        XCTAssertTrue(r.stdout.contains("; different: 0\n"), out)
        XCTAssertTrue(r.stdout.contains("result: ok"), out)
    }
}
