// RESPOOL_URLS: one process, several upstreams, each with its own listener, pool, cap and stats label.
import Foundation
import RESP
import XCTest
#if canImport(Glibc)
import Glibc
#endif

final class SeveralUpstreamsTests: IntegrationTestCase {
    /// The "respool started" lines, one per upstream: its variable → (port, the whole line).
    func startedLines(_ respool: Respool, count: Int) throws -> [String: (port: Int, line: String)] {
        var out: [String: (Int, String)] = [:]
        XCTAssertTrue(waitUntil {
            let lines = respool.stdoutText.split(separator: "\n").map(String.init).filter { $0.contains("msg=\"respool started\"") }
            for l in lines {
                guard let from = logfmtValue(l, key: "upstream_from"), let listen = logfmtValue(l, key: "listen"),
                      let port = Int(listen.split(separator: ":").last ?? "") else { continue }
                out[from] = (port, l)
            }
            return out.count == count
        }, respool.output)
        return out
    }

    /// Two redis-servers behind one respool: each listener reaches its own server (a key set through one is on that
    /// server only), caps are separate (20 clients with a blocking command each on both: each server sees at most its
    /// own cap of respool's connections, and the waits time out with the cap in the error), every metric is labelled
    /// by upstream, /clients and /upstreams say which upstream, /healthz covers both; `respool exec` gives the app both
    /// variables, each pointing at its own listener.
    func testTwoUpstreamsWithSeparateCaps() throws {
        try requireRealRespool()
        try withRedis { main in
            try withRedis { cache in
                var env = respoolEnv(upstreamURL: "")
                env.removeValue(forKey: "RESPOOL_URL")
                env["RESPOOL_URLS"] = "REDIS_URL REDIS_CACHE_URL"
                env["REDIS_URL"] = main.url
                env["REDIS_CACHE_URL"] = cache.url
                env["RESPOOL_MAX_SERVER_CONNECTIONS"] = "4"
                env["RESPOOL_MAX_SERVER_CONNECTIONS_REDIS_CACHE_URL"] = "3"
                env["RESPOOL_WAIT_TIMEOUT"] = "1"
                env["RESPOOL_NAME"] = "multi"
                let k = keyPrefix()
                let script = """
                    echo "app: main=$REDIS_URL cache=$REDIS_CACHE_URL"
                    redis-cli -u "$REDIS_URL" SET '\(k)where' main >/dev/null
                    redis-cli -u "$REDIS_CACHE_URL" SET '\(k)where' cache >/dev/null
                    exec sleep 600
                    """
                let respool = try Respool.launch(env: env, arguments: ["exec", "--", "/bin/sh", "-c", script])
                defer { respool.kill() }
                let started = try startedLines(respool, count: 2)
                guard let mainPort = started["REDIS_URL"]?.port, let cachePort = started["REDIS_CACHE_URL"]?.port else { return }
                XCTAssertNotEqual(mainPort, cachePort)
                XCTAssertEqual(logfmtValue(started["REDIS_CACHE_URL"]!.line, key: "max_server_connections"), "3")
                XCTAssertEqual(logfmtValue(started["REDIS_URL"]!.line, key: "local_url"), "redis://127.0.0.1:\(mainPort)")
                XCTAssertTrue(started["REDIS_CACHE_URL"]!.line.contains(" pool=REDIS_CACHE_URL"), started["REDIS_CACHE_URL"]!.line)
                let app = try XCTUnwrap(respool.stdout?.waitForLine(timeout: 20) { $0.hasPrefix("app: ") })
                XCTAssertEqual(app, "app: main=redis://127.0.0.1:\(mainPort) cache=redis://127.0.0.1:\(cachePort)")
                XCTAssertTrue(waitUntil { (try? cache.client().command("GET", "\(k)where")) == Reply.bulk("cache") })
                assertReply(try main.client().command("GET", "\(k)where"), Reply.bulk("main"), "each variable reached its own server")

                // Separate caps: 20 blocked clients on each; leases at most cap - 2 each, the rest wait and time out.
                for (port, server, cap) in [(mainPort, main, 4), (cachePort, cache, 3)] {
                    let clients = try (0..<20).map { _ in try TestClient(.loopback(port), timeout: 20) }
                    for (i, c) in clients.enumerated() { try c.sendCommand(["BLPOP", "\(k)never\(i)", "2"]) }
                    var refused = 0
                    for c in clients {
                        let r = try c.readValue(timeout: 20)
                        if let e = r.errorText {
                            XCTAssertTrue(e.contains("(cap \(cap) reached)"), e)
                            refused += 1
                        } else {
                            XCTAssertEqual(r, RESPValue.array(nil))
                        }
                    }
                    XCTAssertEqual(refused, 20 - (cap - 2), "leases on this upstream: cap - 2")
                    let ours = (try server.client().command("CLIENT", "LIST").string ?? "").split(separator: "\n").filter { $0.contains("name=multi:") }
                    XCTAssertLessThanOrEqual(ours.count, cap, "\(ours)")
                }

                let stats = try XCTUnwrap(respool.statsPort)
                let (status, metrics) = try httpGet(stats, "/metrics")
                XCTAssertEqual(status, 200)
                XCTAssertTrue(metrics.contains("respool_upstream_connections_max{upstream=\"REDIS_URL\"} 4\n"), metrics)
                XCTAssertTrue(metrics.contains("respool_upstream_connections_max{upstream=\"REDIS_CACHE_URL\"} 3\n"), metrics)
                XCTAssertTrue(metrics.contains("respool_wait_timeouts_total{upstream=\"REDIS_CACHE_URL\"} 19\n"), metrics)
                XCTAssertEqual(metrics.components(separatedBy: "# TYPE respool_clients gauge").count, 2, "each family once")
                let held = try TestClient(.loopback(cachePort), timeout: 10)
                assertReply(try held.command("PING"), Reply.pong)
                let (_, clients) = try httpGet(stats, "/clients")
                XCTAssertTrue(clients.contains("{\"upstream\":\"REDIS_CACHE_URL\",\"id\":"), clients)
                let (_, upstreams) = try httpGet(stats, "/upstreams")
                XCTAssertTrue(upstreams.contains("\"upstream\":\"REDIS_URL\"") && upstreams.contains("\"upstream\":\"REDIS_CACHE_URL\""), upstreams)
                let (_, statsDoc) = try httpGet(stats, "/stats")
                XCTAssertTrue(statsDoc.contains("\"upstreams\":{\"REDIS_URL\":{"), String(statsDoc.prefix(300)))
                XCTAssertEqual(try httpGet(stats, "/healthz").0, 200)
                cache.pause()
                defer { cache.resume() }
                let (down, why) = try httpGet(stats, "/healthz")
                XCTAssertEqual(down, 503)
                XCTAssertTrue(why.contains("REDIS_CACHE_URL: ") && !why.contains("REDIS_URL: "), why)
            }
        }
    }

    /// A variable RESPOOL_URLS names that is missing or malformed stops start-up with one line naming it, exit 2.
    func testMissingOrMalformedUpstreamVariable() throws {
        try requireRealRespool()
        var env = respoolEnv(upstreamURL: "")
        env.removeValue(forKey: "RESPOOL_URL")
        env["RESPOOL_URLS"] = "REDIS_URL REDIS_CACHE_URL"
        env["REDIS_URL"] = "redis://127.0.0.1:1"
        let missing = try Respool.runToExit(env: env, arguments: ["exec", "--", "/bin/true"])
        XCTAssertEqual(missing.status, .exited(2))
        XCTAssertEqual(missing.stderr, "respool: REDIS_CACHE_URL: is named by RESPOOL_URLS but not set\n")
        env["REDIS_CACHE_URL"] = "http://cache:1"
        let malformed = try Respool.runToExit(env: env)
        XCTAssertEqual(malformed.status, .exited(2))
        XCTAssertTrue(malformed.stderr.hasPrefix("respool: REDIS_CACHE_URL: scheme must be redis:// or rediss://"), malformed.stderr)
        env["REDIS_CACHE_URL"] = "redis://127.0.0.1:2"
        env["RESPOOL_MAX_SERVER_CONNECTIONS_REDIS_CACHE_URL"] = "none"
        let override = try Respool.runToExit(env: env)
        XCTAssertEqual(override.status, .exited(2))
        XCTAssertTrue(override.stderr.hasPrefix("respool: RESPOOL_MAX_SERVER_CONNECTIONS_REDIS_CACHE_URL: must be an integer"), override.stderr)
    }
}
