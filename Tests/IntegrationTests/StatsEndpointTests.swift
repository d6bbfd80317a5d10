// The stats endpoint: /metrics parsed by a real Prometheus text parser (prometheus_client, from Debian) with
// counters that move under a known workload; /stats, /clients and /upstreams parse as JSON with their fields;
// /healthz follows the upstream; no password anywhere.
import Foundation
import Glibc
import RESP
import XCTest

final class StatsEndpointTests: IntegrationTestCase {
    private func statsPort(_ respool: Respool) -> Int? { respool.statsPort }
    private func get(_ port: Int, _ path: String) throws -> (Int, String) { try httpGet(port, path) }

    /// Parses Prometheus text with prometheus_client's parser; returns "name{labels} value" lines or throws its error.
    private func parsePrometheus(_ text: String) throws -> [String: Double] {
        let script = """
            import sys
            from prometheus_client.parser import text_string_to_metric_families
            for fam in text_string_to_metric_families(sys.stdin.read()):
                for s in fam.samples:
                    labels = ",".join(f'{k}={v}' for k, v in sorted(s.labels.items()))
                    print(f"{s.name}{{{labels}}} {s.value}")
            """
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        p.arguments = ["-c", script]
        let input = Pipe(), output = Pipe(), errors = Pipe()
        p.standardInput = input
        p.standardOutput = output
        p.standardError = errors
        try p.run()
        input.fileHandleForWriting.write(Data(text.utf8))
        try input.fileHandleForWriting.close()
        let out = output.fileHandleForReading.readDataToEndOfFile()
        let err = errors.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            throw TestClientError.io("prometheus_client rejected /metrics: \(String(decoding: err, as: UTF8.self))")
        }
        var samples: [String: Double] = [:]
        for line in String(decoding: out, as: UTF8.self).split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count == 2, let v = Double(parts[1]) { samples[String(parts[0])] = v }
        }
        return samples
    }

    func testMetricsParseAndCountersMove() throws {
        try requireRealRespool()
        let secret = "st4ts-pw-\(getpid())"
        try withRedisAndRespool(password: secret, env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "3"]) { _, respool in
            guard let port = statsPort(respool) else { return XCTFail("no stats= in the start-up line:\n\(respool.output)") }
            let (status0, text0) = try get(port, "/metrics")
            XCTAssertEqual(status0, 200)
            let before = try parsePrometheus(text0)
            XCTAssertNotNil(before["respool_uptime_seconds{}"], "\(before.keys.sorted())")
            let c = try respool.client()
            for i in 0..<50 { assertReply(try c.command("SET", "k\(i)", "v"), Reply.ok) }
            assertReply(try c.command("MULTI"), Reply.ok)
            assertReply(try c.command("EXEC"), .array([]))
            // A blocking command's wait (on a lease) is neither sampled nor an upstream round trip: no sample reaches
            // 1 s, the BLPOP's 1.2 s wait would (a plain command is not held up for a second, however busy the machine).
            assertReply(try c.command("BLPOP", "stats:nothing", "1.2"), .array(nil))
            let (_, text1) = try get(port, "/metrics")
            XCTAssertTrue(text1.contains("# TYPE respool_commands_total counter"), text1)
            let after = try parsePrometheus(text1)
            let forwarded0 = before["respool_commands_total{outcome=forwarded}"] ?? -1
            let forwarded1 = after["respool_commands_total{outcome=forwarded}"] ?? -1
            XCTAssertGreaterThanOrEqual(forwarded1 - forwarded0, 53, "50 SETs, MULTI, EXEC and BLPOP forwarded")
            XCTAssertEqual(after["respool_clients{}"], 1, "one client open")
            XCTAssertGreaterThanOrEqual(after["respool_leases_granted_total{}"] ?? 0, 1)
            XCTAssertEqual(after["respool_upstream_connections_max{}"], 3)
            XCTAssertEqual((after["respool_replies_total{outcome=ok}"] ?? 0) - (before["respool_replies_total{outcome=ok}"] ?? 0), 53,
                           "53 OK replies (50 SETs, MULTI, EXEC, BLPOP's nil)")
            XCTAssertGreaterThanOrEqual(after["respool_commands_by_class_total{class=leased}"] ?? 0, 2, "MULTI and EXEC on a lease")
            XCTAssertGreaterThan(after["respool_bytes_total{direction=to_upstream}"] ?? 0, 0)
            let sampled = after["respool_command_duration_seconds_count{}"] ?? 0
            XCTAssertGreaterThanOrEqual(sampled, 3, "1 in 16 of 50 multiplexed commands sampled")
            XCTAssertEqual(after["respool_command_duration_seconds_bucket{le=+Inf}"], sampled)
            XCTAssertEqual(after["respool_command_duration_seconds_bucket{le=1.0}"], sampled, "the BLPOP's wait was not sampled")
            XCTAssertGreaterThan(after["respool_command_duration_seconds_sum{}"] ?? 0, 0)
            // One request at a time: every SET's round trip is timed (not MULTI and EXEC: on a lease).
            let trips = (after["respool_upstream_round_trip_seconds_count{}"] ?? 0) - (before["respool_upstream_round_trip_seconds_count{}"] ?? 0)
            XCTAssertGreaterThanOrEqual(trips, 50, "round trips timed")
            XCTAssertLessThanOrEqual(trips, 55, "at most one probe per request, none on the lease")
            XCTAssertEqual(after["respool_upstream_round_trip_seconds_bucket{le=+Inf}"], after["respool_upstream_round_trip_seconds_count{}"])
            XCTAssertEqual(after["respool_upstream_round_trip_seconds_bucket{le=1.0}"], after["respool_upstream_round_trip_seconds_count{}"],
                           "the BLPOP's 1.2 s wait was not taken for a round trip")
            for path in ["/metrics", "/stats", "/clients", "/upstreams", "/healthz"] {
                let (_, body) = try get(port, path)
                XCTAssertFalse(body.contains(secret), "the upstream password appeared in \(path)")
            }
        }
    }

    func testJSONEndpoints() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "3"]) { _, respool in
            guard let port = statsPort(respool) else { return XCTFail("no stats port") }
            let a = try respool.client()
            assertReply(try a.command("CLIENT", "SETNAME", "stats-client"), Reply.ok)
            assertReply(try a.command("SUBSCRIBE", "ch"), .array([Reply.bulk("subscribe"), Reply.bulk("ch"), Reply.int(1)]))
            let (s1, statsText) = try get(port, "/stats")
            XCTAssertEqual(s1, 200)
            let stats = try JSONSerialization.jsonObject(with: Data(statsText.utf8)) as? [String: Any]
            XCTAssertNotNil(stats?["version"])
            XCTAssertNotNil(stats?["uptime_seconds"])
            XCTAssertNotNil((stats?["config"] as? [String: Any])?["max_server_connections"])
            XCTAssertEqual(((stats?["metrics"] as? [String: Any])?["respool_clients"] as? NSNumber)?.intValue, 1)
            let (_, clientsText) = try get(port, "/clients")
            let clients = try JSONSerialization.jsonObject(with: Data(clientsText.utf8)) as? [[String: Any]]
            XCTAssertEqual(clients?.count, 1)
            XCTAssertEqual(clients?.first?["name"] as? String, "stats-client")
            XCTAssertEqual(clients?.first?["state"] as? String, "subscribed")
            for key in ["id", "addr", "db", "age", "idle", "last_command", "output_bytes"] { XCTAssertNotNil(clients?.first?[key], key) }
            let (_, upstreamsText) = try get(port, "/upstreams")
            let upstreams = try JSONSerialization.jsonObject(with: Data(upstreamsText.utf8)) as? [[String: Any]]
            XCTAssertTrue(upstreams?.contains { $0["state"] as? String == "pubsub" } ?? false, upstreamsText)
            for key in ["id", "name", "state", "age", "commands_served", "leased_to"] { XCTAssertNotNil(upstreams?.first?[key], key) }
            XCTAssertEqual(try get(port, "/nothing").0, 404)

            // /clients is streamed 200 clients per loop iteration: 1,201 clients make seven parts, over HTTP/1.0
            // (parts, then close) and HTTP/1.1 (chunked).
            raiseFileLimit()
            var more: [TestClient] = []
            for _ in 0..<1200 { more.append(try respool.client()) }
            for c in more { try c.sendCommand(["PING"]) }
            for c in more { assertReply(try c.readValue(), Reply.pong) }
            for http11 in [false, true] {
                let text = http11 ? try getChunked(port, "/clients") : try get(port, "/clients").1
                let many = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: Any]]
                let ids = (many ?? []).compactMap { ($0["id"] as? NSNumber)?.intValue }
                XCTAssertEqual(ids.count, 1201, "HTTP/1.\(http11 ? 1 : 0)")
                XCTAssertEqual(Set(ids).count, 1201, "every client once")
                XCTAssertEqual(ids, ids.sorted(), "in id order")
            }
            for c in more { c.close() }
        }
    }

    /// A /healthz probe waiting for its PING when SIGTERM arrives is answered at once (503, shutting down) and that
    /// answer is written before respool exits: the server is stopped (SIGSTOP) with a command in flight, and the
    /// shutdown timeout (1 s) ends the loop. SIGTERM is sent as soon as the probe's PING is seen in flight, well
    /// within the probe's own 2 s PING timeout.
    func testPendingHealthProbeIsAnsweredAtExit() throws {
        try requireRealRespool()
        // No advisor INFO: the only requests upstream are the test's and the probe's.
        try withRedisAndRespool(env: ["RESPOOL_SHUTDOWN_TIMEOUT": "1", "RESPOOL_ADVISOR_INTERVAL": "0"]) { redis, respool in
            guard let port = statsPort(respool) else { return XCTFail("no stats port") }
            var status = 0
            XCTAssertTrue(try waitUntil { status = try get(port, "/healthz").0; return status == 200 }, "healthz after start-up: \(status)")
            let c = try respool.client()
            assertReply(try c.command("PING"), Reply.pong)
            redis.pause()
            defer { redis.resume() }
            try c.sendCommand(["GET", "held"])
            XCTAssertTrue(try waitUntil { try respool.upstreamPending() == 1 }, "the GET is in flight")
            let probe = try TestClient(.loopback(port), timeout: 10)
            try probe.send("GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            // The probe is pending: its PING is in flight behind the GET.
            XCTAssertTrue(try waitUntil { try respool.upstreamPending() == 3 }, "the probe's PING and AUTH are in flight")
            respool.signal(SIGTERM)
            let text = String(decoding: probe.readToEnd(), as: UTF8.self)
            XCTAssertTrue(text.contains(" 503 "), text)
            XCTAssertTrue(text.hasSuffix("unhealthy: shutting down\n"), text)
            XCTAssertNotNil(respool.waitForExit(timeout: 10), "respool still running after SIGTERM")
        }
    }

    /// GET over HTTP/1.1 with a chunked answer, decoded.
    private func getChunked(_ port: Int, _ path: String) throws -> String {
        let c = try TestClient(.loopback(port), timeout: 5)
        try c.send("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        let raw = c.readToEnd()
        guard let headerEnd = raw.firstRange(of: Array("\r\n\r\n".utf8)) else { return "" }
        let headers = String(decoding: raw[..<headerEnd.lowerBound], as: UTF8.self).lowercased()
        XCTAssertTrue(headers.contains("transfer-encoding: chunked"), headers)
        var body: [UInt8] = []
        var i = headerEnd.upperBound
        while i < raw.count, let lineEnd = raw[i...].firstRange(of: Array("\r\n".utf8)) {
            guard let size = Int(String(decoding: raw[i..<lineEnd.lowerBound], as: UTF8.self), radix: 16), size > 0 else { break }
            body += raw[lineEnd.upperBound..<(lineEnd.upperBound + size)]
            i = lineEnd.upperBound + size + 2
        }
        return String(decoding: body, as: UTF8.self)
    }

    func testHealthzFollowsTheUpstream() throws {
        try requireRealRespool()
        try withRedisAndRespool { redis, respool in
            guard let port = statsPort(respool) else { return XCTFail("no stats port") }
            var status = 0, body = ""
            // The first upstream connection may still be connecting right after start-up.
            try waitUntil { (status, body) = try get(port, "/healthz"); return status == 200 }
            XCTAssertEqual(status, 200, "healthz after start-up: \(body)")
            // A hung server keeps its connections open: only the PING tells.
            redis.pause()
            // A probe that hangs up before its answer: respool answers into the void later, and lives on.
            let abandoned = try TestClient(.loopback(port), timeout: 5)
            try abandoned.send("GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            abandoned.close()
            (status, body) = try get(port, "/healthz")
            redis.resume()
            XCTAssertEqual(status, 503, body)
            XCTAssertTrue(body.contains("did not answer PING within 2"), body)
            (status, body) = try get(port, "/healthz")
            XCTAssertEqual(status, 200, "healthz after the server resumed: \(body)")
            redis.stop()
            try waitUntil { (status, body) = try get(port, "/healthz"); return status == 503 }
            XCTAssertEqual(status, 503, "healthz with the upstream stopped: \(body)")
            XCTAssertTrue(body.contains("no ready upstream connection"), body)
            try redis.restart()
            // Generous: the backoff between connect attempts grows to 5 s while the server is away.
            try waitUntil(timeout: 20, interval: 0.05) { (status, body) = try get(port, "/healthz"); return status == 200 }
            XCTAssertEqual(status, 200, "healthz after the upstream came back: \(body)")
        }
    }

    /// The advisor on a server with maxmemory 1mb and noeviction, filled until writes fail: a warning line for
    /// noeviction near maxmemory and for OOM errors, the figures as metrics (policy as a label), the advice in /stats.
    func testAdvisorWarnsOnNoevictionNearMaxmemory() throws {
        try requireRealRespool()
        try withRedisAndRespool(redisArgs: ["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"],
                                env: ["RESPOOL_ADVISOR_INTERVAL": "0.5"]) { _, respool in
            guard let port = statsPort(respool) else { return XCTFail("no stats port") }
            let c = try respool.client()
            let value = String(repeating: "x", count: 20_000)
            var oom = 0
            for i in 0..<2000 where oom < 3 {
                let r = try c.command("SET", "fill:\(i)", value)
                if r.isError(prefix: "OOM") { oom += 1 } else if r != Reply.ok { return XCTFail("SET: \(show(r))") }
            }
            XCTAssertGreaterThan(oom, 0, "the server never refused a write")
            var out = ""
            waitUntil(interval: 0.05) {
                out = respool.stdoutText
                return out.contains("advice=noeviction_near_maxmemory") && out.contains("advice=oom_errors")
            }
            XCTAssertTrue(out.contains("advice=noeviction_near_maxmemory"), out)
            XCTAssertTrue(out.contains("advice=oom_errors"), out)
            let samples = try parsePrometheus(try get(port, "/metrics").1)
            XCTAssertEqual(samples["respool_upstream_maxmemory_bytes{policy=noeviction}"], Double(2 << 20), "\(samples.keys.sorted())")
            XCTAssertGreaterThanOrEqual(samples["respool_oom_errors_total{}"] ?? 0, Double(oom))
            XCTAssertNotNil(samples["respool_upstream_used_memory_bytes{}"])
            let stats = try JSONSerialization.jsonObject(with: Data(try get(port, "/stats").1.utf8)) as? [String: Any]
            let codes = (stats?["advice"] as? [[String: Any]])?.compactMap { $0["code"] as? String } ?? []
            XCTAssertTrue(codes.contains("noeviction_near_maxmemory"), "\(codes)")
        }
    }
}
