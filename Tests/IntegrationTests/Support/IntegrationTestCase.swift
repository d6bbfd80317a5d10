// Base class of the integration tests: scoped fixtures that always clean up, unique key prefixes, and the
// debug switch RESPOOL_IT_DIRECT_REDIS.
import Foundation
import RESP
import XCTest
#if canImport(Glibc)
import Glibc
#endif

class IntegrationTestCase: XCTestCase {
    /// DEBUG OPTION: RESPOOL_IT_DIRECT_REDIS=1 points every client at redis-server instead of respool (no binary is
    /// started). Used to validate the harness and the expected values; tests of respool-only behaviour skip.
    static let directRedisMode = ProcessInfo.processInfo.environment["RESPOOL_IT_DIRECT_REDIS"] == "1"

    private var prefixCounter = 0

    /// A key prefix unique to this test (and call).
    /// Raises this process's open-file limit (children such as respool inherit it) for tests with many clients.
    func raiseFileLimit(to wanted: rlim_t = 8192) {
        var rl = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &rl)
        if rl.rlim_cur < wanted {
            rl.rlim_cur = min(rl.rlim_max, wanted)
            setrlimit(Int32(RLIMIT_NOFILE.rawValue), &rl)
        }
    }

    func keyPrefix(_ tag: String = "") -> String {
        prefixCounter += 1
        let testName = name.filter { $0.isLetter || $0.isNumber }
        return "it:\(testName):\(getpid()):\(prefixCounter)\(tag.isEmpty ? "" : ":\(tag)"):"
    }

    /// Skips tests that check respool-only behaviour when running in the direct-redis debug mode.
    func requireRealRespool() throws {
        if Self.directRedisMode {
            throw XCTSkip("RESPOOL_IT_DIRECT_REDIS=1: this test checks respool-only behaviour")
        }
    }

    private var failureCount: Int { testRun.map { $0.failureCount + $0.unexpectedExceptionCount } ?? 0 }

    /// A redis-server for the duration of `body`.
    func withRedis<T>(password: String? = nil, extraArgs: [String] = [], _ body: (RedisServer) throws -> T) throws -> T {
        let redis = try RedisServer.start(password: password, extraArgs: extraArgs)
        let failuresBefore = failureCount
        var threw = false
        defer {
            if threw || failureCount > failuresBefore {
                print("[\(name)] redis-server log tail:\n\(String(redis.logText.suffix(3000)))")
            }
            redis.cleanup()
        }
        do {
            return try body(redis)
        } catch {
            threw = true
            throw error
        }
    }

    /// Default environment for a respool in front of `upstream`.
    func respoolEnv(upstreamURL: String) -> [String: String] {
        ["RESPOOL_URL": upstreamURL, "RESPOOL_BIND": "127.0.0.1", "RESPOOL_PORT": "0", "RESPOOL_SHUTDOWN_TIMEOUT": "5",
         "RESPOOL_STATS_PORT": "0"]
    }

    /// A respool in front of `upstream` (or of `upstreamURL`) with `env` on top of the defaults, for the duration of
    /// `body`. Afterwards: fails the test if respool died during `body`, stops it, and reports a crash at shutdown.
    /// When the test failed, prints respool's output.
    func withRespool<T>(upstream: RedisServer? = nil, upstreamURL: String? = nil, env: [String: String] = [:],
                        arguments: [String] = [], fileLimit: Int? = nil, _ body: (Respool) throws -> T) throws -> T {
        if Self.directRedisMode {
            guard let upstream else { throw XCTSkip("RESPOOL_IT_DIRECT_REDIS=1: no upstream redis to point at") }
            return try body(Respool.directRedis(port: upstream.port))
        }
        var fullEnv = respoolEnv(upstreamURL: upstreamURL ?? upstream?.url ?? "redis://127.0.0.1:1")
        for (k, v) in env { fullEnv[k] = v }
        let respool = try Respool.launch(env: fullEnv, arguments: arguments, fileLimit: fileLimit)
        let failuresBefore = failureCount
        var threw = false
        defer {
            if !respool.stoppedOnPurpose, let status = respool.exitStatus {
                XCTFail("respool exited during the test (\(status))\n\(String(respool.output.suffix(6000)))")
            } else if !respool.stoppedOnPurpose {
                switch respool.terminate(timeout: 10) {
                case .signaled(let sig)?:
                    XCTFail("respool crashed at shutdown (signal \(sig))\n\(String(respool.output.suffix(6000)))")
                case nil:
                    print("[\(name)] WARNING: respool did not exit within 10s of SIGTERM; killed")
                default:
                    break
                }
            } else {
                respool.kill()
            }
            if threw || failureCount > failuresBefore {
                print("[\(name)] respool output tail:\n\(String(respool.output.suffix(6000)))")
            }
        }
        do {
            return try body(respool)
        } catch {
            threw = true
            throw error
        }
    }

    /// Redis plus a respool in front of it.
    func withRedisAndRespool<T>(password: String? = nil, redisArgs: [String] = [], env: [String: String] = [:],
                                _ body: (RedisServer, Respool) throws -> T) throws -> T {
        try withRedis(password: password, extraArgs: redisArgs) { redis in
            try withRespool(upstream: redis, env: env) { respool in try body(redis, respool) }
        }
    }
}
