// The claims of docs/SECURITY.md that no other test class checks: secrets in every output at debug level, the
// request limits set from the environment, what passes through by default, and what `respool exec` hands the app.
import Foundation
import RESP
import XCTest

final class SecurityTests: IntegrationTestCase {
    /// The upstream's password, respool's client password and what clients send with AUTH (right or wrong) appear
    /// nowhere: not in the logs at debug level, /stats, /metrics, /clients, /upstreams, /healthz, CLIENT LIST or
    /// CLIENT INFO through respool, nor in `respool --help` run with them set.
    func testPasswordsAndAuthArgumentsAppearInNoOutput() throws {
        try requireRealRespool()
        let upstream = "up-secret-\(getpid())", client = "cl-secret-\(getpid())", guess = "guess-secret-\(getpid())"
        let secrets = [upstream, client, guess]
        try withRedisAndRespool(password: upstream, env: ["RESPOOL_CLIENT_PASSWORD": client, "RESPOOL_LOG_LEVEL": "debug"]) { _, respool in
            let c = try respool.client()
            XCTAssertTrue(try c.command("AUTH", guess).isError(prefix: "WRONGPASS"))
            XCTAssertTrue(try c.command("AUTH", "default", guess).isError(prefix: "WRONGPASS"))
            XCTAssertTrue(try c.command("HELLO", "3", "AUTH", "default", guess).isError(prefix: "WRONGPASS"))
            assertReply(try c.command("AUTH", client), Reply.ok)
            let hello = try c.command("HELLO", "2", "AUTH", "default", client, "SETNAME", "app")
            XCTAssertNil(hello.errorText, show(hello))
            let list = try c.command("CLIENT", "LIST").string ?? ""
            let info = try c.command("CLIENT", "INFO").string ?? ""
            XCTAssertTrue(list.contains("cmd=hello") || list.contains("cmd=client|list"), list)
            let port = try XCTUnwrap(respool.statsPort)
            var documents = [list, info]
            for path in ["/stats", "/metrics", "/clients", "/upstreams", "/healthz"] {
                documents.append(try httpGet(port, path).1)
            }
            // The AUTH and HELLO above are logged at debug level (if at all) without their arguments.
            documents.append(respool.output)
            for (text, secret) in documents.flatMap({ d in secrets.map { (d, $0) } }) {
                XCTAssertFalse(text.contains(secret), "\(secret) in:\n\(text.prefix(3000))")
            }
        }
        let help = try runTool(Respool.binary, ["--help"], environment: [
            "RESPOOL_CLIENT_PASSWORD": client, "RESPOOL_URL": "redis://:\(upstream)@127.0.0.1:1",
        ])
        XCTAssertEqual(help.status, .exited(0))
        XCTAssertTrue(help.stdout.contains("RESPOOL_CLIENT_PASSWORD"), help.stdout)
        for secret in secrets { XCTAssertFalse((help.stdout + help.stderr).contains(secret)) }
    }

    /// RESPOOL_MAX_BULK_LENGTH and RESPOOL_MAX_MULTIBULK_LENGTH bound what a client may send: the request at the
    /// limit is served; past it the client gets redis's protocol error and is closed (after the replies of what it
    /// sent before), and nothing of it reaches the server; a count line or an inline request past 64 KiB likewise.
    /// Another client in the middle of a pipeline is not affected.
    func testRequestLimitsFromTheEnvironment() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_MAX_BULK_LENGTH": "1024", "RESPOOL_MAX_MULTIBULK_LENGTH": "16"]) { redis, respool in
            let p = keyPrefix()
            let bystander = try respool.client()
            try bystander.send(RESPWriter.command(["SET", "\(p)b", "1"]) + RESPWriter.command(["INCR", "\(p)b"]))
            let atLimit = try respool.client()
            assertReply(try atLimit.command(bytes: [Array("SET".utf8), Array("\(p)k".utf8), [UInt8](repeating: 120, count: 1024)]), Reply.ok)
            assertReply(try atLimit.command(["MSET"] + (0..<7).flatMap { ["\(p)m\($0)", "v"] } + ["\(p)m7"]),
                        Reply.error("ERR wrong number of arguments for 'mset' command"), "16 arguments reach the server")
            let cases: [(String, [UInt8])] = [
                ("Protocol error: invalid bulk length",
                 Array("*3\r\n$3\r\nSET\r\n$\(p.utf8.count + 4)\r\n\(p)over\r\n$1025\r\n".utf8) + [UInt8](repeating: 120, count: 1027)),
                ("Protocol error: invalid multibulk length", Array("*17\r\n".utf8) + Array(repeating: Array("$1\r\nx\r\n".utf8), count: 17).flatMap { $0 }),
                ("Protocol error: too big mbulk count string", Array("*".utf8) + [UInt8](repeating: 49, count: 70_000)),
                ("Protocol error: too big inline request", [UInt8](repeating: 97, count: 70_000)),
            ]
            for (message, payload) in cases {
                let c = try respool.client()
                try c.send(RESPWriter.command(["PING"]) + payload)
                XCTAssertEqual(try c.readValue(timeout: 10), Reply.pong, message)
                XCTAssertEqual(try c.readValue(timeout: 10).errorText, "ERR " + message)
                let outcome = c.waitForClose(timeout: 10)
                XCTAssertTrue(outcome == .closed(reset: false) || outcome == .closed(reset: true), "\(message): \(outcome)")
            }
            XCTAssertEqual(try bystander.readValues(2, timeout: 10), [Reply.ok, Reply.int(2)])
            assertReply(try redis.client().command("EXISTS", "\(p)over"), Reply.int(0), "the oversized SET never ran")
            assertReply(try atLimit.command("STRLEN", "\(p)k"), Reply.int(1024))
        }
    }

    /// Without RESPOOL_DENY_COMMANDS, the commands an operator might fear pass through as they are: FLUSHALL,
    /// CONFIG SET, SCRIPT FLUSH, MODULE LIST and DEBUG answer exactly as a direct connection's (byte for byte).
    func testDangerousCommandsPassThroughByDefault() throws {
        try requireRealRespool()
        try withRedisAndRespool(redisArgs: ["--enable-debug-command", "local"]) { redis, respool in
            let p = keyPrefix()
            let c = try respool.client(), direct = try redis.client()
            for args in [["SET", "\(p)k", "v"], ["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"], ["CONFIG", "GET", "maxmemory-policy"],
                         ["SCRIPT", "FLUSH"], ["MODULE", "LIST"], ["DEBUG", "SLEEP", "0"], ["FLUSHALL"], ["DBSIZE"]] {
                try direct.sendCommand(args)
                let expected = try direct.readRawReply(timeout: 10)
                try c.sendCommand(args)
                XCTAssertEqual(String(decoding: try c.readRawReply(timeout: 10), as: UTF8.self),
                               String(decoding: expected, as: UTF8.self), args.joined(separator: " "))
            }
            assertReply(try direct.command("EXISTS", "\(p)k"), Reply.int(0), "FLUSHALL through respool flushed the server")
        }
    }

    /// The TCP ports `pid` listens on (its socket inodes matched against /proc/net/tcp's LISTEN entries).
    func listeningPorts(_ pid: pid_t) throws -> [Int] {
        let fdDir = "/proc/\(pid)/fd"
        let inodes = Set(try FileManager.default.contentsOfDirectory(atPath: fdDir).compactMap { fd -> String? in
            guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "\(fdDir)/\(fd)"),
                  target.hasPrefix("socket:[") else { return nil }
            return String(target.dropFirst(8).dropLast())
        })
        var ports: [Int] = []
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            for line in (try String(contentsOfFile: table, encoding: .utf8)).split(separator: "\n").dropFirst() {
                let f = line.split(separator: " ")
                guard f.count > 9, f[3] == "0A", inodes.contains(String(f[9])),
                      let port = Int(f[1].split(separator: ":").last ?? "", radix: 16) else { continue }
                ports.append(port)
            }
        }
        return ports.sorted()
    }

    /// RESPOOL_STATS_PORT=off: respool listens on its client port only; by default also on the stats port.
    func testStatsEndpointOffListensOnTheClientPortOnly() throws {
        try requireRealRespool()
        try withRedis { redis in
            try withRespool(upstream: redis, env: ["RESPOOL_STATS_PORT": "off"]) { respool in
                XCTAssertNil(respool.statsPort)
                XCTAssertEqual(try listeningPorts(try XCTUnwrap(respool.process?.pid)), [respool.port])
            }
            try withRespool(upstream: redis) { respool in
                XCTAssertEqual(try listeningPorts(try XCTUnwrap(respool.process?.pid)), [respool.port, try XCTUnwrap(respool.statsPort)].sorted())
            }
        }
    }

    /// `respool exec`: the app inherits no descriptor of respool's (only 0, 1, 2; `ls` adds the one it reads
    /// /proc/self/fd with), and nothing in its environment carries the upstream's password or address.
    func testExecHandsTheAppNoDescriptorAndNoUpstreamSecret() throws {
        try requireRealRespool()
        let secret = "exec-secret-\(getpid())"
        try withRedis(password: secret) { redis in
            let respool = try Respool.launch(env: respoolEnv(upstreamURL: "redis://:\(secret)@127.0.0.1:\(redis.port)"),
                                             arguments: ["exec", "--", "/bin/sh", "-c", "echo fds: $(exec ls /proc/self/fd); env; echo app: done"])
            defer { respool.kill() }
            XCTAssertEqual(respool.waitForExit(timeout: 30), .exited(0), respool.output)
            let lines = respool.stdoutText.split(separator: "\n").map(String.init)
            let fds = lines.first { $0.hasPrefix("fds: ") }.map { $0.dropFirst(5).split(separator: " ").compactMap { Int($0) } } ?? []
            XCTAssertEqual(fds.count, 4, "descriptors of the app's ls: \(fds)\n\(respool.output)")
            XCTAssertEqual(Array(fds.prefix(3)), [0, 1, 2])
            let environment = lines.filter { $0.contains("=") && !$0.hasPrefix("ts=") }   // respool's own log lines start with ts=
            XCTAssertTrue(environment.contains("REDIS_URL=redis://127.0.0.1:\(respool.port)"), environment.joined(separator: "\n"))
            for line in environment {
                XCTAssertFalse(line.contains(secret) || line.contains(":\(redis.port)"), line)
            }
        }
    }
}
