// `respool exec -- COMMAND`: the app runs beside respool with its REDIS_URL pointing at respool; the dyno's SIGTERM
// reaches both at once and the app still finishes its last commands through respool; the app's exit code is
// respool's; nothing is left running.
import Foundation
import RESP
import XCTest
#if canImport(Glibc)
import Glibc
#endif

final class ExecTests: IntegrationTestCase {
    let redisCLI = findExecutable("redis-cli", fallback: "/usr/bin/redis-cli")

    /// Whether `pid` is gone (or a zombie nobody reaped yet: it runs nothing any more).
    func isGone(_ pid: Int32) -> Bool {
        guard kill(pid, 0) == 0 else { return true }
        let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
        return stat.split(separator: ")").last?.split(separator: " ").first == "Z"
    }

    /// The app's pid, from its line `app: pid=N`.
    func appPID(_ respool: Respool) throws -> Int32 {
        let line = try XCTUnwrap(respool.stdout?.waitForLine(timeout: 20, stop: { !respool.isRunning }) { $0.hasPrefix("app: pid=") },
                                 "the app started\n\(respool.output)")
        return try XCTUnwrap(Int32(line.dropFirst("app: pid=".count).prefix { $0.isNumber }))
    }

    /// The platform's shutdown: SIGTERM to respool and to the app at once. The app (a shell script with redis-cli, as
    /// an app with a Redis client) traps it, then runs its last commands through respool, then exits 7. respool keeps
    /// serving until then and exits 7 too; the commands reached the upstream; the app saw only respool's local URL
    /// (neither the upstream's address nor its password); nothing is left running.
    func testSigtermToBothLetsTheAppFinishThroughRespool() throws {
        try requireRealRespool()
        try withRedis(password: "upstream-secret") { redis in
            let k = keyPrefix()
            let script = """
                trap 'stopping=1' TERM
                echo "app: pid=$$ url=$REDIS_URL respool_url=${RESPOOL_URL-unset}"
                \(redisCLI) -u "$REDIS_URL" SET '\(k)first' 1 >/dev/null
                echo "app: ready"
                while [ -z "$stopping" ]; do sleep 0.02; done
                \(redisCLI) -u "$REDIS_URL" INCR '\(k)after-sigterm' >/dev/null
                \(redisCLI) -u "$REDIS_URL" SET '\(k)last' done >/dev/null
                echo "app: done"
                exit 7
                """
            let respool = try Respool.launch(env: respoolEnv(upstreamURL: "redis://:upstream-secret@127.0.0.1:\(redis.port)"),
                                             arguments: ["exec", "--", "/bin/sh", "-c", script])
            defer { respool.kill() }
            let pid = try appPID(respool)
            XCTAssertNotNil(respool.stdout?.waitForLine(timeout: 20) { $0 == "app: ready" }, respool.output)
            let admin = try redis.client()
            assertReply(try admin.command("GET", "\(k)first"), Reply.bulk("1"), "the app's command reached the upstream")
            let appLine = respool.stdoutText.split(separator: "\n").first { $0.hasPrefix("app: pid=") } ?? ""
            XCTAssertTrue(appLine.contains("url=redis://127.0.0.1:\(respool.port) "), String(appLine))
            XCTAssertTrue(appLine.hasSuffix("respool_url=unset"), String(appLine))
            XCTAssertFalse(appLine.contains("upstream-secret") || appLine.contains(":\(redis.port)"), String(appLine))

            respool.signal(SIGTERM)
            kill(pid, SIGTERM)
            XCTAssertEqual(respool.waitForExit(timeout: 20), .exited(7), respool.output)
            assertReply(try admin.command("GET", "\(k)after-sigterm"), Reply.bulk("1"), "commands after SIGTERM got through")
            assertReply(try admin.command("GET", "\(k)last"), Reply.bulk("done"))
            XCTAssertTrue(respool.stdoutText.contains("app: done"))
            XCTAssertTrue(respool.stdoutText.contains("msg=\"signal passed to the app\" pid=\(pid) signal=SIGTERM")
                          || respool.stdoutText.contains("msg=\"signal passed to the app\""), respool.output)
            XCTAssertTrue(respool.stdoutText.contains("msg=\"app exited\" exit_code=7"), respool.output)
            XCTAssertTrue(isGone(pid), "the app is not left running")
            XCTAssertFalse(respool.output.contains("upstream-secret"), "no password in the output")
        }
    }

    /// The app exits on its own: respool drains and exits with its code (0 and 3); an app that cannot be run is
    /// respool's exit 127 with the reason logged; RESPOOL_CLIENT_PASSWORD goes into the app's URL.
    func testExitCodesAndTheLocalURL() throws {
        try requireRealRespool()
        try withRedis { redis in
            for code in [0, 3] {
                let r = try Respool.runToExit(env: respoolEnv(upstreamURL: redis.url),
                                              arguments: ["exec", "--", "/bin/sh", "-c", "exit \(code)"], timeout: 20)
                XCTAssertEqual(r.status, .exited(Int32(code)), r.stdout + r.stderr)
            }
            let missing = try Respool.runToExit(env: respoolEnv(upstreamURL: redis.url),
                                                arguments: ["exec", "--", "/nonexistent/app", "x"], timeout: 20)
            XCTAssertEqual(missing.status, .exited(127), missing.stdout + missing.stderr)
            XCTAssertTrue(missing.stdout.contains("msg=\"cannot run the app\"") && missing.stdout.contains("/nonexistent/app"), missing.stdout)

            var env = respoolEnv(upstreamURL: redis.url)
            env["RESPOOL_CLIENT_PASSWORD"] = "s3cret-pw"   // (percent-encoding: ConfigTests; redis-cli 7.0 does not decode it)
            let script = "\(redisCLI) -u \"$REDIS_URL\" --no-auth-warning PING; echo \"app: url=$REDIS_URL\""
            let withPassword = try Respool.runToExit(env: env, arguments: ["exec", "--", "/bin/sh", "-c", script], timeout: 20)
            XCTAssertEqual(withPassword.status, .exited(0), withPassword.stdout + withPassword.stderr)
            XCTAssertTrue(withPassword.stdout.contains("\nPONG\n"), "the app authenticated with the URL's password: \(withPassword.stdout)")
            XCTAssertTrue(withPassword.stdout.contains("app: url=redis://default:s3cret-pw@127.0.0.1:"), withPassword.stdout)
            XCTAssertTrue(withPassword.stdout.contains("app_url=redis://default:<password>@127.0.0.1:")
                          && !withPassword.stdout.split(separator: "\n").contains { $0.contains("msg=") && $0.contains("s3cret") },
                          "respool's log masks it: \(withPassword.stdout)")

            let dir = try makeTempDir("exec-socket")
            defer { removeTree(dir) }
            var socketEnv = respoolEnv(upstreamURL: redis.url)
            socketEnv["RESPOOL_SOCKET"] = "\(dir)/respool.sock"
            let socket = try Respool.runToExit(env: socketEnv, arguments: ["exec", "--", "/bin/sh", "-c",
                                                                          "\(redisCLI) -s \"${REDIS_URL#unix://}\" PING; echo \"app: url=$REDIS_URL\""], timeout: 20)
            XCTAssertEqual(socket.status, .exited(0), socket.stdout + socket.stderr)
            XCTAssertTrue(socket.stdout.contains("\nPONG\napp: url=unix://\(dir)/respool.sock\n"), "the app reached respool on its socket: \(socket.stdout)")

            let usage = try Respool.runToExit(env: respoolEnv(upstreamURL: redis.url), arguments: ["exec", "/bin/true"])
            XCTAssertEqual(usage.status, .exited(2))
            XCTAssertEqual(usage.stderr, "respool: usage: respool exec [--flag value ...] -- COMMAND [ARGS...]\n")
        }
    }

    /// An app that ignores SIGTERM gets RESPOOL_SHUTDOWN_TIMEOUT, then SIGKILL: respool exits 137 (128 + 9), as a
    /// shell reports it. A respool killed outright takes its app with it (SIGTERM through the parent-death signal).
    func testTheAppIsStoppedWhenItOverstaysOrRespoolDies() throws {
        try requireRealRespool()
        try withRedis { redis in
            var env = respoolEnv(upstreamURL: redis.url)
            env["RESPOOL_SHUTDOWN_TIMEOUT"] = "1"
            let stubborn = try Respool.launch(env: env, arguments: ["exec", "--", "/bin/sh", "-c",
                                                                     "trap '' TERM; echo \"app: pid=$$\"; while :; do sleep 0.05; done"])
            defer { stubborn.kill() }
            let pid = try appPID(stubborn)
            stubborn.signal(SIGTERM)
            XCTAssertEqual(stubborn.waitForExit(timeout: 20), .exited(137), stubborn.output)
            XCTAssertTrue(stubborn.stdoutText.contains("app still running after the shutdown timeout"), stubborn.output)
            XCTAssertTrue(isGone(pid))

            let orphan = try Respool.launch(env: respoolEnv(upstreamURL: redis.url), arguments: ["exec", "--", "/bin/sh", "-c",
                                                                                               "echo \"app: pid=$$\"; while :; do sleep 0.05; done"])
            defer { orphan.kill() }
            let orphanPID = try appPID(orphan)
            orphan.kill()
            XCTAssertTrue(waitUntil { self.isGone(orphanPID) }, "the app ends when respool is killed")
        }
    }
}
