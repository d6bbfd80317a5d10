// Configuration: invalid values, passwords kept out of the output, flags, the unix socket listener.
import Foundation
import RESP
import TestKit
import XCTest

final class ConfigurationTests: IntegrationTestCase {
    /// An invalid value: exit code 2 and exactly one line on stderr, naming the variable.
    func testInvalidConfigurationExitsWithCode2AndOneLineNamingTheVariable() throws {
        try requireRealRespool()
        let base = ["RESPOOL_URL": "redis://127.0.0.1:\(try freeLoopbackPort())", "RESPOOL_PORT": "0"]
        let cases: [(variable: String, value: String)] = [
            ("RESPOOL_PORT", "abc"),
            ("RESPOOL_MAX_SERVER_CONNECTIONS", "0"),
            ("RESPOOL_URL", "http://nope"),
            ("RESPOOL_PORT", "70000"),
            ("RESPOOL_MAX_SERVER_CONNECTIONS", "-3"),
            ("RESPOOL_MAX_CLIENTS", "lots"),
            ("RESPOOL_SHUTDOWN_TIMEOUT", "soon"),
        ]
        for (variable, value) in cases {
            var env = base
            env[variable] = value
            let run = try Respool.runToExit(env: env, timeout: 10)
            let what = "\(variable)=\(value)"
            XCTAssertEqual(run.status, .exited(2), "\(what): exit status (nil = kept running, killed); stdout:\n\(run.stdout)\nstderr:\n\(run.stderr)")
            let lines = run.stderr.split(separator: "\n", omittingEmptySubsequences: true)
            XCTAssertEqual(lines.count, 1, "\(what): stderr should be exactly one line, was:\n\(run.stderr)")
            XCTAssertTrue(lines.first?.contains(variable) ?? false, "\(what): stderr does not name \(variable):\n\(run.stderr)")
            XCTAssertFalse(run.stdout.contains("respool started"), "\(what): it started anyway:\n\(run.stdout)")
        }
    }

    /// A password in the URL authenticates upstream and appears nowhere in stdout/stderr (debug logging, shutdown).
    func testPasswordInURLWorksAndNeverAppearsInOutput() throws {
        try requireRealRespool()
        var rng = SeededRandom(seed: UInt64(getpid()))
        let password = "pw-" + rng.letters(20)
        try withRedis(password: password) { redis in
            let urls = [redis.url, "redis://default:\(password)@127.0.0.1:\(redis.port)"]
            for url in urls {
                try withRespool(upstreamURL: url, env: ["RESPOOL_LOG_LEVEL": "debug"]) { respool in
                    let masked = url.replacingOccurrences(of: password, with: "***")
                    let p = keyPrefix()
                    let conn = try respool.client()
                    assertReply(try conn.command("SET", "\(p)k", "v"), Reply.ok, "SET through \(masked)")
                    assertReply(try conn.command("GET", "\(p)k"), Reply.bulk("v"), "GET through \(masked)")
                    let status = respool.terminate()
                    XCTAssertEqual(status, .exited(0), "exit after SIGTERM")
                    XCTAssertTrue(respool.stdoutText.contains("respool started"), "no started line:\n\(respool.output)")
                    XCTAssertFalse(respool.stdoutText.contains(password), "password in stdout (\(masked)):\n\(respool.stdoutText)")
                    XCTAssertFalse(respool.stderrText.contains(password), "password in stderr (\(masked)):\n\(respool.stderrText)")
                }
            }
            // Wrong password: upstream refuses the handshake; commands fail, the password is still not printed.
            let wrong = "wrong-" + rng.letters(16)
            try withRespool(upstreamURL: "redis://:\(wrong)@127.0.0.1:\(redis.port)", env: ["RESPOOL_LOG_LEVEL": "debug"]) { respool in
                let conn = try respool.client()
                XCTAssertNotNil(try conn.command("GET", "k").errorText, "GET with a wrong upstream password must fail")
                XCTAssertEqual(respool.terminate(), .exited(0), "exit after SIGTERM")
                XCTAssertFalse(respool.output.contains(wrong), "wrong password in the output:\n\(respool.output)")
            }
            // A rejected URL that carries a password: the error line does not repeat it.
            for bad in ["redis://:\(password)@127.0.0.1:notaport", "redis://user:\(password)@127.0.0.1:6379/notadb",
                        "http://:\(password)@127.0.0.1:6379"] {
                let run = try Respool.runToExit(env: ["RESPOOL_URL": bad, "RESPOOL_PORT": "0"])
                XCTAssertEqual(run.status, .exited(2), "\(bad.replacingOccurrences(of: password, with: "***")): exit status")
                XCTAssertFalse(run.stdout.contains(password) || run.stderr.contains(password),
                               "password printed for a rejected URL:\n\(run.stdout)\(run.stderr)")
            }
        }
    }

    /// Every stdout line is logfmt (key=value pairs, values bare or double-quoted) with ts, level and msg — through
    /// start, client traffic, an upstream failure and shutdown.
    func testStdoutIsLogfmt() throws {
        try requireRealRespool()
        try withRedis { redis in
            try withRespool(upstream: redis, env: ["RESPOOL_LOG_LEVEL": "debug"]) { respool in
                let c = try respool.client()
                assertReply(try c.command("SET", keyPrefix() + "k", "v"), Reply.ok, "SET")
                try c.send("*1\r\n$abc\r\n")          // a protocol error gets logged somewhere
                _ = c.waitForClose()
                redis.kill()
                let d = try respool.client(timeout: 5)
                XCTAssertNotNil(try d.command("GET", "k").errorText, "GET with redis down")
                try redis.restart()
                XCTAssertEqual(respool.terminate(), .exited(0), "exit after SIGTERM")
                let lines = respool.stdoutText.split(separator: "\n", omittingEmptySubsequences: false).dropLast()
                XCTAssertGreaterThan(lines.count, 1, "stdout:\n\(respool.stdoutText)")
                for line in lines {
                    guard let pairs = parseLogfmt(String(line)) else {
                        XCTFail("not logfmt: \(line)")
                        continue
                    }
                    let keys = Set(pairs.map(\.key))
                    for key in ["ts", "level", "msg"] where !keys.contains(key) {
                        XCTFail("no \(key)= in: \(line)")
                    }
                }
            }
        }
    }

    /// Every setting also works as a flag.
    func testFlagsConfigureLikeEnvironment() throws {
        try requireRealRespool()
        let poolName = "itflags\(getpid())"
        try withRedis { redis in
            let respool = try Respool.launch(env: [:], arguments: [
                "--url", redis.url, "--bind", "127.0.0.1", "--port", "0", "--max-server-connections", "2",
                "--name", poolName, "--shutdown-timeout", "3", "--stats-port", "0",
            ])
            defer {
                if respool.isRunning { _ = respool.terminate() }
            }
            let p = keyPrefix()
            var clients: [TestClient] = []
            for i in 0..<6 {
                let c = try respool.client()
                assertReply(try c.command("SET", "\(p)\(i)", "v\(i)"), Reply.ok, "SET via client \(i)")
                clients.append(c)
            }
            for (i, c) in clients.enumerated() {
                assertReply(try c.command("GET", "\(p)\(i)"), Reply.bulk("v\(i)"), "GET via client \(i)")
            }
            let list = try redis.client().command("CLIENT", "LIST")
            let entries = parseClientList(list) ?? []
            let named = entries.filter { $0["name"] == "\(poolName):pool" }.count
            XCTAssertGreaterThanOrEqual(named, 1, "--name: no connection named \(poolName):pool\n\(list.string ?? "")")
            XCTAssertLessThanOrEqual(named, 2, "--max-server-connections 2 exceeded\n\(list.string ?? "")")
            clients.removeAll()
            XCTAssertEqual(respool.terminate(), .exited(0), "exit after SIGTERM\n\(respool.output)")
        }
    }

    /// The flags come from the one option table: --help lists every setting with its variable, both spellings work,
    /// and an unknown flag or a flag without its value is one line naming it, exit 2.
    func testFlagsComeFromTheOptionTable() throws {
        try requireRealRespool()
        let help = try Respool.runToExit(env: [:], arguments: ["--help"])
        XCTAssertEqual(help.status, .exited(0))
        let helpText = help.stdout.split(whereSeparator: { $0 == " " || $0 == "\n" }).joined(separator: " ")
        for variable in ["RESPOOL_URL", "RESPOOL_MAX_SERVER_CONNECTIONS", "RESPOOL_KEYS", "RESPOOL_TLS_SERVER_NAME", "RESPOOL_MAX_MULTIBULK_LENGTH"] {
            XCTAssertTrue(helpText.contains("[env: \(variable)]"), "--help lists \(variable):\n\(help.stdout)")
        }
        // Each flag is its variable's name: --max-server-connections is RESPOOL_MAX_SERVER_CONNECTIONS.
        let entries = help.stdout.components(separatedBy: "\n  --").dropFirst()
        XCTAssertGreaterThanOrEqual(entries.count, 40)
        for entry in entries {
            let flag = String(entry.prefix { $0 != " " })
            let variable = "RESPOOL_" + flag.uppercased().replacingOccurrences(of: "-", with: "_")
            let text = entry.split(whereSeparator: { $0 == " " || $0 == "\n" }).joined(separator: " ")
            XCTAssertTrue(text.contains("[env: \(variable)]"), "--\(flag): \(entry)")
        }
        for (args, message) in [(["--nope", "1"], "unknown option '--nope'"), (["--port"], "missing value for '--port'"),
                                (["--port=abc"], "RESPOOL_PORT: must be an integer"), (["stray"], "unexpected argument 'stray'")] {
            let run = try Respool.runToExit(env: [:], arguments: args)
            XCTAssertEqual(run.status, .exited(2), "\(args)")
            XCTAssertEqual(run.stderr.split(separator: "\n").count, 1, "one line: \(run.stderr)")
            XCTAssertTrue(run.stderr.contains(message), "\(args): \(run.stderr)")
        }
    }

    /// RESPOOL_SOCKET: a unix socket listener beside TCP.
    func testUnixSocketListener() throws {
        try requireRealRespool()
        let dir = try makeTempDir("sock")
        defer { removeTree(dir) }
        let path = "\(dir)/respool.sock"
        try withRedis { redis in
            try withRespool(upstream: redis, env: ["RESPOOL_SOCKET": path]) { respool in
                XCTAssertEqual(respool.socketPath, path, "socket= in the started line: \(respool.startedLine)")
                let p = keyPrefix()
                let unix = try TestClient(.unix(path: path))
                assertReply(try unix.command("SET", "\(p)k", "over unix"), Reply.ok, "SET over the unix socket")
                assertReply(try unix.command("GET", "\(p)k"), Reply.bulk("over unix"), "GET over the unix socket")
                let commands = (0..<100).map { ["ECHO", "u\($0)"] }
                let replies = try unix.pipeline(commands)
                XCTAssertEqual(replies, (0..<100).map { Reply.bulk("u\($0)") }, "100 pipelined ECHOs over the unix socket")
                let tcp = try respool.client()
                assertReply(try tcp.command("GET", "\(p)k"), Reply.bulk("over unix"), "GET over TCP beside the unix socket")
            }
        }
    }
}
