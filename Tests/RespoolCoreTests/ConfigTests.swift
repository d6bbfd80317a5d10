import Foundation
import RESP
import RespoolCore
import XCTest

final class ConfigTests: XCTestCase {
    func testDefaults() throws {
        let c = try Config(environment: [:], hostName: "box")
        XCTAssertEqual(c.upstream, RedisURL(host: "127.0.0.1", port: 6379))
        XCTAssertEqual(c.upstreamSource, "default")
        XCTAssertEqual(c.bind, "127.0.0.1")
        XCTAssertEqual(c.statsBind, "127.0.0.1")
        XCTAssertTrue(c.deny.isEmpty)
        XCTAssertTrue(c.maskSecrets)
        XCTAssertEqual(c.port, 6380)
        XCTAssertNil(c.socketPath)
        XCTAssertEqual(c.maxServerConnections, 10)
        XCTAssertEqual(c.maxClients, 10_000)
        XCTAssertEqual(c.namePrefix, "box")
        XCTAssertEqual(c.logLevel, .info)
        XCTAssertEqual(c.connectTimeout, 5)
        XCTAssertEqual(c.shutdownTimeout, 25)
        XCTAssertEqual(c.maxBulkLength, 512 << 20)
    }

    func testCapDerivedFromThePlan() throws {
        let c = try Config(environment: ["RESPOOL_PLAN_MAX_CONNECTIONS": "40", "RESPOOL_INSTANCES": "3"])
        XCTAssertEqual(c.maxServerConnections, 12)   // floor((40 - 2) / 3)
        XCTAssertTrue(c.capSource.contains("plan 40"), c.capSource)
        XCTAssertEqual(try Config(environment: ["RESPOOL_PLAN_MAX_CONNECTIONS": "20", "RESPOOL_RESERVE_CONNECTIONS": "0"]).maxServerConnections, 20)
        XCTAssertEqual(try Config(environment: ["RESPOOL_PLAN_MAX_CONNECTIONS": "3", "RESPOOL_INSTANCES": "10"]).maxServerConnections, 1)
        let explicit = try Config(environment: ["RESPOOL_PLAN_MAX_CONNECTIONS": "40", "RESPOOL_MAX_SERVER_CONNECTIONS": "7"])
        XCTAssertEqual(explicit.maxServerConnections, 7)
        XCTAssertEqual(explicit.capSource, "RESPOOL_MAX_SERVER_CONNECTIONS")
        XCTAssertThrowsError(try Config(environment: ["RESPOOL_PLAN_MAX_CONNECTIONS": "40", "RESPOOL_INSTANCES": "0"])) { e in
            XCTAssertEqual((e as? ConfigError)?.variable, "RESPOOL_INSTANCES")
        }
    }

    func testURLPrecedence() throws {
        let both = try Config(environment: ["RESPOOL_URL": "redis://a:1", "REDIS_URL": "redis://b:2"])
        XCTAssertEqual(both.upstream.host, "a")
        XCTAssertEqual(both.upstreamSource, "RESPOOL_URL")
        let fallback = try Config(environment: ["REDIS_URL": "redis://b:2"])
        XCTAssertEqual(fallback.upstream.host, "b")
        XCTAssertEqual(fallback.upstream.port, 2)
        XCTAssertEqual(fallback.upstreamSource, "REDIS_URL")
    }

    func testNamePrefix() throws {
        XCTAssertEqual(try Config(environment: ["DYNO": "web.1"], hostName: "h").namePrefix, "web.1")
        XCTAssertEqual(try Config(environment: ["DYNO": "web.1", "RESPOOL_NAME": "api"], hostName: "h").namePrefix, "api")
        XCTAssertThrowsError(try Config(environment: ["RESPOOL_NAME": "has space"])) { e in
            XCTAssertEqual((e as? ConfigError)?.variable, "RESPOOL_NAME")
        }
    }

    func testBadValuesNameTheVariable() {
        let cases: [(String, String)] = [
            ("RESPOOL_PORT", "abc"), ("RESPOOL_PORT", "70000"), ("RESPOOL_MAX_SERVER_CONNECTIONS", "0"),
            ("RESPOOL_MAX_CLIENTS", "-1"), ("RESPOOL_LOG_LEVEL", "loud"), ("RESPOOL_CONNECT_TIMEOUT", "0"),
            ("RESPOOL_SHUTDOWN_TIMEOUT", "soon"), ("RESPOOL_URL", "http://x"), ("REDIS_URL", "redis://h:0"),
            ("RESPOOL_MAX_BULK_LENGTH", "0"), ("RESPOOL_BIND", "a b"), ("RESPOOL_DENY_COMMANDS", "flush*"),
            ("RESPOOL_DENY_COMMANDS", "config|set|x"), ("RESPOOL_DENY_COMMANDS", "config|"), ("RESPOOL_DENY_COMMANDS", "+@all"),
        ]
        for (variable, value) in cases {
            XCTAssertThrowsError(try Config(environment: [variable: value]), "\(variable)=\(value)") { e in
                guard let ce = e as? ConfigError else { return XCTFail("not a ConfigError: \(e)") }
                XCTAssertEqual(ce.variable, variable)
                XCTAssertTrue("\(ce)".hasPrefix("\(variable): "), "\(ce)")
            }
        }
    }

    func testDenyList() throws {
        let d = try Config(environment: ["RESPOOL_DENY_COMMANDS": "FLUSHALL, flushall,Config|SET  debug"]).deny
        XCTAssertEqual(d.entries, ["flushall", "config|set", "debug"])
        XCTAssertEqual(d.denied(name: SmallBytes("flushall"), arg1: nil), "flushall")
        XCTAssertEqual(d.denied(name: SmallBytes("config"), arg1: SmallBytes("set")), "config|set")
        XCTAssertNil(d.denied(name: SmallBytes("config"), arg1: SmallBytes("get")))
        XCTAssertNil(d.denied(name: SmallBytes("config"), arg1: nil))
        XCTAssertNil(d.denied(name: SmallBytes("get"), arg1: nil))
        XCTAssertTrue(try Config(environment: [:]).deny.isEmpty)
        XCTAssertTrue(try Config(environment: ["RESPOOL_DENY_COMMANDS": " , "]).deny.isEmpty)
    }

    func testURLParsing() throws {
        let u = try RedisURL(parsing: "redis://user:p%40ss@cache.example.com:16379/3")
        XCTAssertEqual(u.host, "cache.example.com")
        XCTAssertEqual(u.port, 16379)
        XCTAssertEqual(u.username, "user")
        XCTAssertEqual(u.password, "p@ss")
        XCTAssertEqual(u.db, 3)
        let noUser = try RedisURL(parsing: "redis://:secret@10.0.0.1")
        XCTAssertNil(noUser.username)
        XCTAssertEqual(noUser.password, "secret")
        XCTAssertEqual(noUser.port, 6379)
        let v6 = try RedisURL(parsing: "redis://[::1]:7000/0?timeout=1")
        XCTAssertEqual(v6.host, "::1")
        XCTAssertEqual(v6.port, 7000)
        XCTAssertThrowsError(try RedisURL(parsing: "redis://h:1/x"))
        let secure = try RedisURL(parsing: "rediss://:pw@cache.example.com:6380/1?ssl_cert_reqs=none")
        XCTAssertTrue(secure.tls)
        XCTAssertEqual(secure.port, 6380)
        XCTAssertEqual(secure.description, "rediss://:***@cache.example.com:6380/1")
        XCTAssertThrowsError(try RedisURL(parsing: "redisss://h:1"))
        XCTAssertThrowsError(try RedisURL(parsing: "h:1"))
    }

    /// RESPOOL_URLS: one configuration per variable, in order, each with consecutive ports (unless RESPOOL_PORT is 0
    /// or given for it), SETTING_<VARIABLE> overrides, a socket per upstream; errors name the variable as given.
    func testSeveralUpstreams() throws {
        let env = ["RESPOOL_URLS": "REDIS_URL, REDIS_CACHE_URL", "REDIS_URL": "redis://:pw@main.example:6379",
                   "REDIS_CACHE_URL": "rediss://cache.example:6380/2", "RESPOOL_MAX_SERVER_CONNECTIONS": "8",
                   "RESPOOL_MAX_SERVER_CONNECTIONS_REDIS_CACHE_URL": "3", "RESPOOL_SOCKET": "/tmp/r.sock",
                   "RESPOOL_URL": "redis://ignored:1"]
        let all = try Config.all(environment: env)
        XCTAssertEqual(all.map(\.upstreamLabel), ["REDIS_URL", "REDIS_CACHE_URL"])
        XCTAssertEqual(all.map(\.upstream.host), ["main.example", "cache.example"])
        XCTAssertEqual(all.map(\.upstreamSource), ["REDIS_URL", "REDIS_CACHE_URL"])
        XCTAssertEqual(all.map(\.port), [6380, 6381])
        XCTAssertEqual(all.map(\.maxServerConnections), [8, 3])
        XCTAssertEqual(all.map(\.socketPath), ["/tmp/r.sock", "/tmp/r.sock.REDIS_CACHE_URL"])
        XCTAssertEqual(try Config.all(environment: env.merging(["RESPOOL_PORT": "0"]) { $1 }).map(\.port), [0, 0])
        XCTAssertEqual(try Config.all(environment: env.merging(["RESPOOL_PORT_REDIS_CACHE_URL": "7000"]) { $1 }).map(\.port), [6380, 7000])
        XCTAssertNil(try Config.all(environment: ["REDIS_URL": "redis://h:1"]).first?.upstreamLabel, "one upstream: no label")
        func error(_ e: [String: String]) -> ConfigError? {
            do { _ = try Config.all(environment: e); return nil } catch { return error }
        }
        XCTAssertEqual(error(["RESPOOL_URLS": "REDIS_URL OTHER_URL", "REDIS_URL": "redis://h:1"]),
                       ConfigError(variable: "OTHER_URL", message: "is named by RESPOOL_URLS but not set"))
        XCTAssertEqual(error(["RESPOOL_URLS": "A A", "A": "redis://h:1"]), ConfigError(variable: "RESPOOL_URLS", message: "names A twice"))
        XCTAssertEqual(error(["RESPOOL_URLS": "redis://h:1"])?.variable, "RESPOOL_URLS")
        XCTAssertEqual(error(env.merging(["RESPOOL_MAX_SERVER_CONNECTIONS_REDIS_CACHE_URL": "zero"]) { $1 })?.variable,
                       "RESPOOL_MAX_SERVER_CONNECTIONS_REDIS_CACHE_URL", "a bad override is named as given")
        XCTAssertEqual(error(env.merging(["REDIS_CACHE_URL": "http://x"]) { $1 })?.variable, "REDIS_CACHE_URL")
    }

    /// What `respool exec` puts in the app's URL: a password percent-encoded so that parsing gives it back.
    func testPercentEncodingRoundTrips() throws {
        for pw in ["p@ss word", "a:b/c?d#e%f", "plain-._~", "ünï"] {
            let encoded = RedisURL.percentEncode(pw)
            XCTAssertFalse(encoded.contains { "@:/?# ".contains($0) }, encoded)
            XCTAssertEqual(try RedisURL(parsing: "redis://:\(encoded)@127.0.0.1:6380").password, pw)
        }
        XCTAssertEqual(RedisURL.percentEncode("p@ss word"), "p%40ss%20word")
    }

    func testTLSSettings() throws {
        let plain = try Config(environment: ["RESPOOL_URL": "rediss://h:6380"])
        XCTAssertTrue(plain.upstream.tls)
        XCTAssertEqual(plain.tls, TLSSettings(), "verify by default, the system's CAs, no client certificate")
        let full = try Config(environment: ["RESPOOL_URL": "rediss://h:6380", "RESPOOL_TLS_VERIFY": "NONE", "RESPOOL_TLS_CA_FILE": "/ca.pem",
                                            "RESPOOL_TLS_CERT_FILE": "/c.pem", "RESPOOL_TLS_KEY_FILE": "/k.pem", "RESPOOL_TLS_SERVER_NAME": "cache.internal"])
        XCTAssertFalse(full.tls.verify)
        XCTAssertEqual(full.tls.caFile, "/ca.pem")
        XCTAssertEqual(full.tls.certFile, "/c.pem")
        XCTAssertEqual(full.tls.keyFile, "/k.pem")
        XCTAssertEqual(full.tls.serverName, "cache.internal")
        let bad: [([String: String], String)] = [
            (["RESPOOL_URL": "rediss://h", "RESPOOL_TLS_VERIFY": "maybe"], "RESPOOL_TLS_VERIFY"),
            (["RESPOOL_URL": "rediss://h", "RESPOOL_TLS_CERT_FILE": "/c.pem"], "RESPOOL_TLS_KEY_FILE"),
            (["RESPOOL_URL": "rediss://h", "RESPOOL_TLS_KEY_FILE": "/k.pem"], "RESPOOL_TLS_CERT_FILE"),
            (["RESPOOL_URL": "rediss://h", "RESPOOL_TLS_SERVER_NAME": "a b"], "RESPOOL_TLS_SERVER_NAME"),
            // A TLS setting with a plain redis:// upstream is a mistake worth stopping for.
            (["RESPOOL_URL": "redis://h", "RESPOOL_TLS_CA_FILE": "/ca.pem"], "RESPOOL_TLS_CA_FILE"),
            (["REDIS_URL": "redis://h", "RESPOOL_TLS_VERIFY": "none"], "RESPOOL_TLS_VERIFY"),
        ]
        for (env, variable) in bad {
            XCTAssertThrowsError(try Config(environment: env), "\(env)") { e in
                XCTAssertEqual((e as? ConfigError)?.variable, variable, "\(e)")
            }
        }
    }

    func testPasswordNeverInDescriptionOrErrors() throws {
        let u = try RedisURL(parsing: "redis://admin:hunter2@h:1/2")
        XCTAssertEqual(u.description, "redis://admin:***@h:1/2")
        XCTAssertFalse(u.description.contains("hunter2"))
        for bad in ["redis://admin:hunter2@h:99999", "redis://admin:hunter2@h:1/zz", "http://admin:hunter2@h"] {
            XCTAssertThrowsError(try Config(environment: ["RESPOOL_URL": bad])) { e in
                XCTAssertFalse("\(e)".contains("hunter2"), "\(e)")
            }
        }
    }

    func testEveryOptionIsDocumentedOnce() {
        let names = Config.options.map(\.variable)
        XCTAssertEqual(Set(names).count, names.count)
        XCTAssertTrue(names.allSatisfy { $0.hasPrefix("RESPOOL_") })
    }
}

final class MetricsTests: XCTestCase {
    func testPrometheusAndJSONComeFromTheSameDefinitions() {
        let values = [MetricValues(Metrics.clients, 3), MetricValues(Metrics.commands, [("forwarded", 10), ("local", 2)])]
        let text = Metrics.prometheus(values)
        XCTAssertEqual(text, """
            # HELP respool_clients Client connections open now.
            # TYPE respool_clients gauge
            respool_clients 3
            # HELP respool_commands_total Commands, by how respool handled them.
            # TYPE respool_commands_total counter
            respool_commands_total{outcome="forwarded"} 10
            respool_commands_total{outcome="local"} 2

            """)
        XCTAssertEqual(Metrics.json(values), #"{"respool_clients":3,"respool_commands_total":{"forwarded":10,"local":2}}"#)
    }

    func testEveryMetricIsNamedOnceWithTheConventions() {
        let names = Metrics.all.map(\.name)
        XCTAssertEqual(Set(names).count, names.count)
        for d in Metrics.all {
            XCTAssertTrue(d.name.hasPrefix("respool_"), d.name)
            XCTAssertEqual(d.kind == .counter, d.name.hasSuffix("_total"), d.name)
            XCTAssertFalse(d.help.isEmpty)
        }
        XCTAssertEqual(Metrics.jsonString("a\"b\\c\n\u{1}"), #""a\"b\\c\n\u0001""#)
    }

    /// The latency histogram: cumulative Prometheus buckets, sum and count, quantiles within HdrHistogram's 0.1%.
    func testLatencyHistogramBucketsAndQuantiles() {
        var h = LatencyHistogram()
        XCTAssertNil(h.quantile(0.5))
        for s in [0.00005, 0.0001, 0.0003, 0.002, 0.03, 0.3, 20, 0, -1] { h.record(s) }
        XCTAssertEqual(h.count, 9)
        XCTAssertEqual(h.sum, 0.00005 + 0.0001 + 0.0003 + 0.002 + 0.03 + 0.3 + 20 - 1, accuracy: 1e-9)
        // bounds: 0.0001 0.00025 0.0005 0.001 0.0025 0.005 0.01 0.025 0.05 0.1 0.25 0.5 1 2.5 5 10
        XCTAssertEqual(h.cumulativeCounts(), [4, 4, 5, 5, 6, 6, 6, 6, 7, 7, 7, 8, 8, 8, 8, 8], "20 s is above every bound (+Inf only)")
        let median = h.quantile(0.5)!
        XCTAssertEqual(median, 0.0003, accuracy: 0.0003 * 0.001, "5th of 9 observations")
        XCTAssertEqual(h.quantile(1)!, 20, accuracy: 20 * 0.001)
        let text = Metrics.prometheus([MetricValues(Metrics.waitDuration, histogram: h)])
        XCTAssertTrue(text.contains("respool_wait_duration_seconds_bucket{le=\"0.0001\"} 4\n"), text)
        XCTAssertTrue(text.contains("respool_wait_duration_seconds_bucket{le=\"10.0\"} 8\n"), text)
        XCTAssertTrue(text.contains("respool_wait_duration_seconds_bucket{le=\"+Inf\"} 9\n"), text)
        XCTAssertTrue(text.contains("respool_wait_duration_seconds_count 9\n"), text)
        XCTAssertTrue(Metrics.json([MetricValues(Metrics.waitDuration, histogram: h)]).contains(#""count":9"#))
        XCTAssertEqual([0.000059, 0.0003, 1.5, 12, 0, -2, 0.0000004].map(Metrics.logSeconds),
                       ["0.000059s", "0.0003s", "1.5s", "12s", "0s", "0s", "0s"])
    }
}

final class AdvisorTests: XCTestCase {
    func testFiguresAndAdvice() {
        let info = "# Clients\r\nconnected_clients:85\r\nmaxclients:100\r\n# Memory\r\nused_memory:950000\r\nmaxmemory:1000000\r\nmaxmemory_policy:noeviction\r\n# Stats\r\nevicted_keys:0\r\nrejected_connections:2\r\n"
        let f = ServerFigures(info: info)
        XCTAssertEqual(f.connectedClients, 85)
        XCTAssertEqual(f.maxClients, 100)
        XCTAssertEqual(f.usedMemory, 950_000)
        XCTAssertEqual(f.maxMemory, 1_000_000)
        XCTAssertEqual(f.maxMemoryPolicy, "noeviction")
        XCTAssertEqual(f.rejectedConnections, 2)
        XCTAssertEqual(Advisor.advise(f, oomErrorsSinceLastPoll: 1, keysSinceLastPoll: 0), [.noevictionNearFull, .clientsNearMax, .oomErrors])
        var healthy = f
        healthy.maxMemoryPolicy = "allkeys-lru"
        healthy.connectedClients = 10
        XCTAssertEqual(Advisor.advise(healthy, oomErrorsSinceLastPoll: 0, keysSinceLastPoll: 3), [.keysUsed])
    }
}

/// README's configuration table lists every setting of `Config.options` with its flag and default.
final class ReadmeTableTests: XCTestCase {
    func testEverySettingIsInTheReadme() throws {
        var root = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { root.deleteLastPathComponent() }
        let readme = try String(contentsOf: root.appendingPathComponent("README.md"), encoding: .utf8)
        for o in Config.options {
            XCTAssertTrue(readme.contains("| `\(o.variable)` | `--\(o.flag)` | \(o.defaultText) |"), "README lacks the row of \(o.variable)")
        }
    }
}
