// TLS upstreams (rediss://): a real redis-server with a TLS port and certificates made for the test by the openssl
// command. The server also keeps a plain port, for the fixture's readiness check and for looking at CLIENT LIST.
import Foundation
import RESP
import XCTest

/// A throw-away CA, a server certificate for localhost and 127.0.0.1, and a client certificate, in a temp dir.
final class TestCertificates {
    let dir: String
    var caFile: String { dir + "/ca.crt" }
    var serverCert: String { dir + "/server.crt" }
    var serverKey: String { dir + "/server.key" }
    var clientCert: String { dir + "/client.crt" }
    var clientKey: String { dir + "/client.key" }

    init() throws {
        dir = try makeTempDir("tls")
        let ext = dir + "/server.ext"
        try "subjectAltName=DNS:localhost,IP:127.0.0.1\n".write(toFile: ext, atomically: true, encoding: .utf8)
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        try Self.openssl(["req", "-x509"] + ec + ["-keyout", dir + "/ca.key", "-out", caFile, "-days", "2", "-subj", "/CN=respool test CA"])
        for (name, extra) in [("server", ["-extfile", ext]), ("client", [])] {
            try Self.openssl(["req"] + ec + ["-keyout", dir + "/\(name).key", "-out", dir + "/\(name).csr", "-subj", "/CN=\(name)"])
            try Self.openssl(["x509", "-req", "-in", dir + "/\(name).csr", "-CA", caFile, "-CAkey", dir + "/ca.key",
                              "-CAcreateserial", "-out", dir + "/\(name).crt", "-days", "2"] + extra)
        }
    }

    deinit { removeTree(dir) }

    private static func openssl(_ args: [String]) throws {
        let path = findExecutable("openssl", fallback: "/usr/bin/openssl")
        let p = try ChildProcess.spawn(path: path, arguments: args, environment: ["PATH": "/usr/bin:/bin"], stdoutFD: nil, stderrFD: nil)
        guard let status = p.wait(timeout: 30), status == .exited(0) else {
            throw SpawnError(description: "openssl \(args.prefix(2).joined(separator: " ")) failed (run scripts/setup)")
        }
    }

    /// redis-server arguments for a TLS port beside the plain one.
    func redisArgs(tlsPort: Int, requireClientCertificates: Bool = false) -> [String] {
        ["--tls-port", String(tlsPort), "--tls-cert-file", serverCert, "--tls-key-file", serverKey, "--tls-ca-cert-file", caFile,
         "--tls-auth-clients", requireClientCertificates ? "yes" : "no"]
    }
}

final class TLSTests: IntegrationTestCase {
    /// 20 clients pipelining through two TLS connections, each reply checked against its request; a 4 MiB value
    /// (many TLS records each way); the password from the URL authenticates and is printed nowhere.
    func testTrafficOverTLSWithVerifiedCertificate() throws {
        try requireRealRespool()
        let certs = try TestCertificates()
        let tlsPort = try freeLoopbackPort()
        let password = "tls-secret-\(getpid())"
        let name = "ittls\(getpid())"
        try withRedis(password: password, extraArgs: certs.redisArgs(tlsPort: tlsPort)) { redis in
            let url = "rediss://:\(password)@127.0.0.1:\(tlsPort)"
            try withRespool(upstreamURL: url, env: ["RESPOOL_TLS_CA_FILE": certs.caFile, "RESPOOL_MAX_SERVER_CONNECTIONS": "2",
                                                    "RESPOOL_NAME": name, "RESPOOL_LOG_LEVEL": "debug"]) { respool in
                let endpoint = respool.endpoint
                let failures = FailureLog()
                let prefix = keyPrefix()
                runThreads(20, timeout: 60, failures: failures) { t in
                    let c = try TestClient(endpoint, timeout: 10)
                    for i in 0..<100 {
                        let v = "\(t)-\(i)-" + String(repeating: "x", count: (t * 37 + i * 11) % 900)
                        let r = try c.pipeline([["SET", "\(prefix)\(t)", v], ["GET", "\(prefix)\(t)"], ["INCR", "\(prefix)n\(t)"]])
                        if r != [Reply.ok, Reply.bulk(v), Reply.int(i + 1)] {
                            failures.record("\(t) #\(i): \(r.map { show($0).prefix(60) })")
                            return
                        }
                    }
                }
                XCTAssertEqual(failures.count, 0, failures.summary)
                let c = try respool.client(timeout: 20)
                var big = [UInt8](repeating: 0, count: 4 << 20)
                for i in big.indices { big[i] = UInt8(truncatingIfNeeded: i &* 2654435761 >> 7) }
                assertReply(try c.command(bytes: ["SET", "\(prefix)big"].map { Array($0.utf8) } + [big]), Reply.ok)
                assertReply(try c.command("GET", "\(prefix)big"), Reply.bulk(big), "4 MiB value back through TLS")
                let lines = try redis.poolConnections(name)
                XCTAssertFalse(lines.isEmpty, "respool's connections are on the server")
                XCTAssertLessThanOrEqual(lines.count, 2, "the cap holds over TLS")
                let started = respool.stdoutText.split(separator: "\n").first { $0.contains("respool started") } ?? ""
                XCTAssertEqual(logfmtValue(String(started), key: "tls_verify"), "full", String(started))
                XCTAssertTrue(respool.waitForLog("upstream TLS established"), "debug line naming the TLS version")
                if let port = respool.statsPort {
                    let (status, body) = try httpGet(port, "/upstreams")
                    XCTAssertEqual(status, 200)
                    XCTAssertTrue(body.contains("\"tls\":\"TLSv1."), "/upstreams names the TLS version: \(body)")
                    XCTAssertFalse(body.contains(password))
                } else {
                    XCTFail("no stats= in the start-up line")
                }
                XCTAssertFalse(respool.output.contains(password), "the password was printed:\n\(respool.output)")
            }
        }
    }

    /// A certificate nobody vouches for (no CA file: the system's store) or for another name: every command gets a
    /// clear error naming the cause, nothing is sent in the clear, and respool keeps serving; with verification off
    /// the same server works.
    func testUntrustedCertificateOrWrongNameFailsClearly() throws {
        try requireRealRespool()
        let certs = try TestCertificates()
        let tlsPort = try freeLoopbackPort()
        try withRedis(extraArgs: certs.redisArgs(tlsPort: tlsPort)) { _ in
            let url = "rediss://127.0.0.1:\(tlsPort)"
            let cases: [(env: [String: String], expect: String)] = [
                ([:], "certificate verify failed"),
                (["RESPOOL_TLS_CA_FILE": certs.caFile, "RESPOOL_TLS_SERVER_NAME": "cache.example.com"], "hostname mismatch"),
            ]
            for (env, expect) in cases {
                try withRespool(upstreamURL: url, env: env.merging(["RESPOOL_MIN_SERVER_CONNECTIONS": "0"]) { a, _ in a }) { respool in
                    let c = try respool.client()
                    let r = try c.command("PING")
                    guard case .error(let text) = r else { return XCTFail("\(env): expected an error, got \(show(r))") }
                    let message = String(decoding: text, as: UTF8.self)
                    XCTAssertTrue(message.hasPrefix("ERR upstream unavailable: TLS handshake failed: "), message)
                    XCTAssertTrue(message.contains(expect), "\(env): \(message)")
                    let again = try c.command("GET", "k")
                    XCTAssertTrue(again.string?.hasPrefix("ERR upstream unavailable: TLS handshake failed: ") ?? false,
                                  "the client keeps its connection and gets the same answer: \(show(again))")
                }
            }
            // The names respool checks: the certificate holds DNS:localhost and IP:127.0.0.1.
            try withRespool(upstreamURL: url, env: ["RESPOOL_TLS_CA_FILE": certs.caFile, "RESPOOL_TLS_SERVER_NAME": "localhost"]) { respool in
                assertReply(try respool.client().command("PING"), .simpleString(Array("PONG".utf8)))
            }
            try withRespool(upstreamURL: url, env: ["RESPOOL_TLS_VERIFY": "none"]) { respool in
                let c = try respool.client()
                assertReply(try c.command("SET", "k", "v"), Reply.ok)
                assertReply(try c.command("GET", "k"), Reply.bulk("v"))
                XCTAssertTrue(respool.waitForLog("level=warning msg=\"TLS certificate verification is off"),
                              "verify=none is said at start-up:\n\(respool.stdoutText)")
            }
        }
    }

    /// A server that requires client certificates (tls-auth-clients yes) refuses respool without one and serves it
    /// with RESPOOL_TLS_CERT_FILE/KEY_FILE; rediss:// to a plain port fails with an error, not a hang.
    func testClientCertificateAndPlainServer() throws {
        try requireRealRespool()
        let certs = try TestCertificates()
        let tlsPort = try freeLoopbackPort()
        try withRedis(extraArgs: certs.redisArgs(tlsPort: tlsPort, requireClientCertificates: true)) { redis in
            let url = "rediss://127.0.0.1:\(tlsPort)"
            try withRespool(upstreamURL: url, env: ["RESPOOL_TLS_CA_FILE": certs.caFile, "RESPOOL_MIN_SERVER_CONNECTIONS": "0"]) { respool in
                let r = try respool.client().command("PING")
                guard case .error(let text) = r else { return XCTFail("expected an error without a client certificate, got \(show(r))") }
                XCTAssertTrue(String(decoding: text, as: UTF8.self).hasPrefix("ERR upstream "), String(decoding: text, as: UTF8.self))
            }
            try withRespool(upstreamURL: url, env: ["RESPOOL_TLS_CA_FILE": certs.caFile, "RESPOOL_TLS_CERT_FILE": certs.clientCert,
                                                    "RESPOOL_TLS_KEY_FILE": certs.clientKey]) { respool in
                let c = try respool.client()
                assertReply(try c.command("SET", "mtls", "yes"), Reply.ok)
                assertReply(try c.command("GET", "mtls"), Reply.bulk("yes"))
            }
            try withRespool(upstreamURL: "rediss://127.0.0.1:\(redis.port)",
                            env: ["RESPOOL_TLS_CA_FILE": certs.caFile, "RESPOOL_MIN_SERVER_CONNECTIONS": "0", "RESPOOL_CONNECT_TIMEOUT": "2"]) { respool in
                let started = monotonicNow()
                let r = try respool.client().command("PING")
                guard case .error(let text) = r else { return XCTFail("expected an error from a plain server, got \(show(r))") }
                XCTAssertTrue(String(decoding: text, as: UTF8.self).hasPrefix("ERR upstream unavailable: "), String(decoding: text, as: UTF8.self))
                XCTAssertLessThan(monotonicNow() - started, 5, "answered within the connect timeout")
            }
        }
    }

    /// The TLS server restarts under load: commands in flight get errors or their replies (never another's), and the
    /// clients carry on over fresh TLS connections.
    func testServerRestartReconnectsOverTLS() throws {
        try requireRealRespool()
        let certs = try TestCertificates()
        let tlsPort = try freeLoopbackPort()
        try withRedis(extraArgs: certs.redisArgs(tlsPort: tlsPort)) { redis in
            try withRespool(upstreamURL: "rediss://127.0.0.1:\(tlsPort)", env: ["RESPOOL_TLS_CA_FILE": certs.caFile]) { respool in
                let c = try respool.client()
                assertReply(try c.command("SET", "before", "1"), Reply.ok)
                redis.kill()
                try redis.restart()
                // Generous: the backoff between connect attempts grows to 5 s while the server is away.
                var i = 0
                var last = Reply.nilBulk
                let ok = try waitUntil(timeout: 20, interval: 0.05) {
                    i += 1
                    last = try c.command("ECHO", "after-\(i)")
                    guard case .error(let text) = last, String(decoding: text, as: UTF8.self).hasPrefix("ERR upstream ") else { return true }
                    return false
                }
                XCTAssertTrue(ok, "commands go through again after the restart: \(show(last))")
                assertReply(last, Reply.bulk("after-\(i)"), "the first answer after the restart")
            }
        }
    }

    /// Files that do not load stop start-up with exit code 2 and one line naming the variable.
    func testUnloadableTLSFilesExitWithCode2() throws {
        try requireRealRespool()
        let certs = try TestCertificates()
        let url = "rediss://127.0.0.1:\(try freeLoopbackPort())"
        let cases: [(String, [String: String])] = [
            ("RESPOOL_TLS_CA_FILE", ["RESPOOL_TLS_CA_FILE": certs.dir + "/missing.crt"]),
            ("RESPOOL_TLS_CERT_FILE", ["RESPOOL_TLS_CERT_FILE": certs.serverKey, "RESPOOL_TLS_KEY_FILE": certs.clientKey]),
            ("RESPOOL_TLS_KEY_FILE", ["RESPOOL_TLS_CERT_FILE": certs.clientCert, "RESPOOL_TLS_KEY_FILE": certs.serverKey]),
        ]
        for (variable, env) in cases {
            let run = try Respool.runToExit(env: env.merging(["RESPOOL_URL": url, "RESPOOL_PORT": "0", "RESPOOL_STATS_PORT": "off"]) { a, _ in a })
            XCTAssertEqual(run.status, .exited(2), "\(variable): \(run.stdout)\(run.stderr)")
            let lines = run.stderr.split(separator: "\n", omittingEmptySubsequences: true)
            XCTAssertEqual(lines.count, 1, "one line:\n\(run.stderr)")
            XCTAssertTrue(lines.first?.contains(variable) ?? false, "names \(variable):\n\(run.stderr)")
        }
    }
}
