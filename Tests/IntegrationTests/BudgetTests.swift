// The connection budget under pressure: 1,000 clients mixing blocking commands, transactions and plain commands never
// make respool exceed its cap; connects that never answer time out; a deep pipeline is throttled, not refused.
import Foundation
import Glibc
import RESP
import XCTest

final class BudgetTests: IntegrationTestCase {
    func testCapHoldsWithThousandClientsMixingBlpopMultiAndGet() throws {
        try requireRealRespool()
        raiseFileLimit()
        let name = "itmix\(getpid())"
        let cap = 6
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "\(cap)", "RESPOOL_NAME": name,
                                      "RESPOOL_WAIT_TIMEOUT": "60"]) { redis, respool in
            let p = keyPrefix()
            let endpoint = respool.endpoint
            let failures = FailureLog()
            let stop = StopFlag()
            let maxSeen = Locked(0)
            let sampler = try redis.client()
            guard case .integer(let samplerID) = try sampler.command("CLIENT", "ID") else { return XCTFail("CLIENT ID") }
            // One lease held through the whole run (a client blocked in BLPOP): every sample, the first included,
            // sees it beside the shared connection, however the sampling thread is scheduled.
            let holder = try respool.client(timeout: 60)
            try holder.sendCommand(["BLPOP", "\(p)held", "0"])
            // Looked at through the sampler's own connection: no other connection to the server is ever opened.
            XCTAssertTrue(try waitUntil {
                (parseClientList(try sampler.command("CLIENT", "LIST")) ?? []).filter { $0["cmd"] == "blpop" && ($0["flags"] ?? "").contains("b") }.count == 1
            }, "the holder is blocked on its lease")
            let leasesBefore = try respool.metric("respool_leases_granted_total")
            let sampling = Worker {
                while !stop.isSet {
                    guard let list = try? sampler.command("CLIENT", "LIST").string else { break }
                    let others = list.split(separator: "\n").filter { !$0.hasPrefix("id=\(samplerID) ") }.count
                    maxSeen.withLock { $0 = max($0, others) }
                    sleepSeconds(0.005)
                }
            }
            let ok = runThreads(1000, timeout: 120, failures: failures) { t in
                let c = try TestClient(endpoint, timeout: 60)
                switch t % 10 {
                case 0:   // blocking: a short BLPOP that times out on its lease
                    let r = try c.command("BLPOP", "\(p)never\(t)", "0.05")
                    if r != .array(nil) { failures.record("BLPOP \(t): \(show(r))") }
                case 1:   // a transaction
                    let r = try c.pipeline([["MULTI"], ["INCR", "\(p)tx\(t)"], ["INCR", "\(p)tx\(t)"], ["EXEC"]])
                    if r.last != .array([Reply.int(1), Reply.int(2)]) { failures.record("MULTI \(t): \(r.map { show($0) })") }
                default:
                    for i in 0..<5 {
                        let r = try c.pipeline([["SET", "\(p)k\(t)", "\(i)"], ["GET", "\(p)k\(t)"]])
                        if r != [Reply.ok, Reply.bulk("\(i)")] { failures.record("GET \(t): \(r.map { show($0) })"); return }
                    }
                }
            }
            stop.set()
            XCTAssertTrue(sampling.join(timeout: 10))
            XCTAssertTrue(ok, "clients did not finish")
            XCTAssertEqual(failures.count, 0, failures.summary)
            XCTAssertLessThanOrEqual(maxSeen.current, cap, "the server saw more connections than the cap")
            XCTAssertGreaterThanOrEqual(maxSeen.current, 2, "no lease beside the shared connection was ever seen")
            // 100 BLPOPs and 100 transactions, each on a lease of its own.
            XCTAssertGreaterThanOrEqual(try respool.metric("respool_leases_granted_total") - leasesBefore, 200, "leases granted to the load")
            let pusher = try respool.client()
            guard case .integer = try pusher.command("RPUSH", "\(p)held", "x") else { return XCTFail("RPUSH") }
            assertReply(try holder.readValue(), Reply.bulks(["\(p)held", "x"]), "the holder kept its lease throughout")
        }
    }

    /// An upstream whose accept queue is full never answers the connect: commands get an error after
    /// RESPOOL_CONNECT_TIMEOUT instead of hanging.
    func testConnectTimeoutAgainstAPortThatNeverAnswers() throws {
        try requireRealRespool()
        // A listener that never accepts, with its backlog filled: further SYNs are dropped.
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        XCTAssertEqual(withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }, 0)
        XCTAssertEqual(listen(fd, 0), 0)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        let port = Int(UInt16(bigEndian: addr.sin_port))
        // listen(fd, 0) queues one completed connection; this one fills the queue (a second connect would hang).
        let filler = try TestClient(.loopback(port), timeout: 1)
        try withRespool(upstreamURL: "redis://127.0.0.1:\(port)", env: ["RESPOOL_CONNECT_TIMEOUT": "0.5"]) { respool in
            let c = try respool.client(timeout: 10)
            let t0 = monotonicNow()
            let r = try c.command("GET", "k")
            let took = monotonicNow() - t0
            XCTAssertTrue(r.isError(prefix: "ERR upstream"), show(r))
            XCTAssertLessThan(took, 3, "the connect did not time out")
            XCTAssertTrue(respool.waitForLog("connect timeout"), respool.stdoutText)
        }
        filler.close()
    }

    /// 5,000 commands in one write with RESPOOL_MAX_PIPELINE=100: reading pauses and resumes, all answered in order.
    func testDeepPipelineIsThrottledNotRefused() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_MAX_PIPELINE": "100"]) { _, respool in
            let p = keyPrefix()
            let c = try respool.client(timeout: 30)
            var payload: [UInt8] = []
            for i in 0..<5000 { payload += RESPWriter.command(i % 2 == 0 ? ["SET", "\(p)\(i)", "v\(i)"] : ["GET", "\(p)\(i - 1)"]) }
            let replies = try c.pipeline(raw: payload, replies: 5000)
            for (i, r) in replies.enumerated() {
                let expected = i % 2 == 0 ? Reply.ok : Reply.bulk("v\(i - 1)")
                if r != expected { return XCTFail("reply \(i): \(show(r))") }
            }
            // SIGUSR1 logs the counters.
            let line = respool.statsLine()
            let throttles = logfmtValue(line, key: "pipeline_throttles").flatMap { Int($0) } ?? 0
            XCTAssertGreaterThan(throttles, 0, "the pipeline was never throttled: \(line)")
        }
    }
}
