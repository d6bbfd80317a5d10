// Faults of the server and of clients under load: scripts/soak's fault run, shortened (the soak runs it for longer).
import Foundation
import XCTest

final class FaultInjectionTests: IntegrationTestCase {
    /// 300 clients mixing pipelines, transactions, WATCH, BLPOP, SELECT and pub/sub, with unique values, through
    /// respool (cap 4) while the server is, in turn, SIGKILLed and restarted, SIGSTOPped for longer than respool's
    /// timeouts, shut down and restarted empty, and made slow; clients vanish mid-pipeline, mid-MULTI, mid-BLPOP,
    /// mid-subscribe and mid-reply. Every reply is checked against a model of the client's own keys (a value of
    /// another client in a reply is never excused), no client waits 15 s for a reply, the cap holds (the server's
    /// CLIENT LIST and respool's own count), and afterwards respool holds no client, lease, pin, waiter, subscriber
    /// or channel, has its starting descriptors back, and exits 0 on SIGTERM.
    func testThreeHundredClientsThroughServerFaultsAndVanishingClients() throws {
        try requireRealRespool()
        raiseFileLimit()
        let r = try runTool("/bin/bash", ["\(repositoryRoot)/scripts/soak"], environment: [
            "RESPOOL_BIN": Respool.binary, "SOAK_SECONDS": "30", "SOAK_CLIENTS": "300", "SOAK_CAP": "4",
            "SOAK_CHAOS": "2.5", "SOAK_FAULTS": "kill stop shutdown slow",
            // A sanitizer build keeps freed memory in its quarantine: the RSS bound holds in the plain pass only.
            "SOAK_RSS_CHECK": ProcessInfo.processInfo.environment["RESPOOL_IT_SANITIZER"] == nil ? "1" : "0",
        ], timeout: 150)
        let out = r.stdout + r.stderr
        XCTAssertEqual(r.status, .exited(0), out)
        func line(_ prefix: String) -> String {
            r.stdout.split(separator: "\n").first { $0.hasPrefix(prefix) }.map(String.init) ?? ""
        }
        func count(_ label: String, in text: String) -> Int {
            guard let range = text.range(of: label + " ") else { return 0 }
            return Int(text[range.upperBound...].prefix { $0.isNumber || $0 == "," }.filter(\.isNumber)) ?? 0
        }
        let faults = line("soak: ")
        for kind in ["kill", "stop", "shutdown", "slow"] {
            XCTAssertGreaterThanOrEqual(count(kind, in: faults), 1, "fault \(kind) done: \(out)")
        }
        let vanished = line("clients vanished: ")
        for kind in ["mid-pipeline", "mid-multi", "mid-blpop", "mid-subscribe", "mid-reply"] {
            XCTAssertGreaterThanOrEqual(count(kind, in: vanished), 1, "clients vanished \(kind): \(out)")
        }
        let replies = line("replies checked: ")
        XCTAssertGreaterThan(count("replies checked:", in: replies), 10_000, out)
        XCTAssertTrue(replies.hasSuffix("mismatches: 0; replies of another client: 0; hung clients: 0"), out)
        XCTAssertEqual(line("left over in respool after every client closed: "),
                       "left over in respool after every client closed: nothing", out)
        let cap = line("upstream connections named ")
        XCTAssertLessThanOrEqual(count("respool's own count: max", in: cap), 4, out)
        XCTAssertTrue(r.stdout.contains("respool exit status on SIGTERM: 0"), out)
    }
}
