// redis-cli and redis-benchmark, unmodified, through respool.
import Foundation
import RESP
import XCTest

final class RedisToolsTests: IntegrationTestCase {
    /// Runs a tool to completion (bounded) and returns its exit status and stdout.
    private func run(_ tool: String, _ args: [String], stdin: String? = nil, timeout: Double = 60) throws -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/\(tool)")
        p.arguments = args
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        let input = Pipe()
        p.standardInput = input
        try p.run()
        if let stdin { input.fileHandleForWriting.write(Data(stdin.utf8)) }
        try input.fileHandleForWriting.close()
        let deadline = Date().addingTimeInterval(timeout)
        let data = Locked(Data())
        let handle = out.fileHandleForReading
        let reader = Thread { data.withLock { $0 = handle.readDataToEndOfFile() } }
        reader.start()
        while p.isRunning && Date() < deadline { usleep(20_000) }
        if p.isRunning {
            p.terminate()
            XCTFail("\(tool) \(args) did not finish in \(timeout)s")
        }
        p.waitUntilExit()
        while reader.isExecuting { usleep(5_000) }
        return (p.terminationStatus, String(decoding: data.current, as: UTF8.self))
    }

    func testRedisCliThroughRespool() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "3"]) { _, respool in
            guard case .tcp(_, let port) = respool.endpoint else { return XCTFail("no TCP endpoint") }
            let p = keyPrefix()
            let script = "SET \(p)k hello\nGET \(p)k\nINCR \(p)n\nINCR \(p)n\nMULTI\nINCR \(p)n\nEXEC\nRPUSH \(p)l a b c\nLRANGE \(p)l 0 -1\nHELLO 3\nHGETALL \(p)nohash\n"
            let (status, output) = try run("redis-cli", ["-p", String(port), "--no-raw"], stdin: script)
            XCTAssertEqual(status, 0, output)
            let expected = ["OK", "\"hello\"", "(integer) 1", "(integer) 2", "OK", "QUEUED", "1) (integer) 3", "(integer) 3",
                            "1) \"a\"", "2) \"b\"", "3) \"c\""]
            var rest = Substring(output)
            for e in expected {
                guard let r = rest.range(of: e) else { return XCTFail("redis-cli output lacks \(e) in order:\n\(output)") }
                rest = rest[r.upperBound...]
            }
            XCTAssertTrue(output.contains("(empty hash)") || output.contains("(empty array)"), output)
        }
    }

    func testRedisBenchmarkThroughRespool() throws {
        try requireRealRespool()
        try withRedisAndRespool(env: ["RESPOOL_MAX_SERVER_CONNECTIONS": "4"]) { redis, respool in
            guard case .tcp(_, let port) = respool.endpoint else { return XCTFail("no TCP endpoint") }
            let (status, output) = try run("redis-benchmark", ["-p", String(port), "-t", "set,get,incr,lpush,rpop,hset,mset",
                                                               "-n", "5000", "-c", "50", "-P", "4", "-q", "--csv"])
            XCTAssertEqual(status, 0, output)
            for test in ["SET", "GET", "INCR", "LPUSH", "RPOP", "HSET", "MSET"] {
                XCTAssertTrue(output.contains("\"\(test)"), "no result for \(test):\n\(output)")
            }
            XCTAssertFalse(output.lowercased().contains("error"), output)
            // The benchmark's own check: INCR on one counter by 50 clients, 5,000 times.
            assertReply(try redis.client().command("GET", "counter:__rand_int__"), Reply.bulk("5000"), "redis-benchmark's INCR count")
        }
    }
}
