import TestKit
import XCTest
@testable import RESP

final class RequestFramerTests: XCTestCase {
    /// One complete request each, with the head the framer must report.
    static let corpus: [(bytes: [UInt8], head: CommandHead)] = {
        var c: [([UInt8], CommandHead)] = [
            (multibulk("PING"), head(1, "ping")),
            (multibulk("SET", "key", "value"), head(3, "set", "key")),
            (multibulk("GeT", "MiXeD"), head(2, "get", "mixed")),
            (multibulk("CLIENT", "SETNAME", "app-1"), head(3, "client", "setname")),
            (bytes("*2\r\n$3\r\nGET\r\n$8\r\na\r\nb\r\n\r\n\r\n"), head(2, "get", "a\r\nb\r\n\r\n")),
            (bytes("*2\r\n$4\r\nECHO\r\n$0\r\n\r\n"), head(2, "echo", "")),
            (bytes("*1\r\n$0\r\n\r\n"), head(1, "")),
            (multibulk([[0, 13, 10, 255], [0x41, 0x5A, 0x61, 0x7A, 0x40, 0x5B]]), CommandHead(argc: 2, name: SmallBytes(lowercasing: [0, 13, 10, 255]), arg1: SmallBytes(lowercasing: [0x61, 0x7A, 0x61, 0x7A, 0x40, 0x5B]))),
            (multibulk(String(repeating: "N", count: 40), String(repeating: "A", count: 33), "x"),
             head(3, String(repeating: "n", count: 40), String(repeating: "a", count: 33))),
            (multibulk(String(repeating: "N", count: 32), String(repeating: "A", count: 32)),
             head(2, String(repeating: "n", count: 32), String(repeating: "a", count: 32))),
            (bytes("*0\r\n"), head(0)),
            (bytes("*-1\r\n"), head(0)),
            (bytes("*-5\r\n"), head(0)),
            (bytes("*-9223372036854775808\r\n"), head(0)),
            (bytes("PING\r\n"), head(1, inline: true)),
            (bytes("set a 'b c'\n"), head(1, inline: true)),
            (bytes("  x\r\n"), head(1, inline: true)),
            (bytes("\r\n"), head(0, inline: true)),
            (bytes("\n"), head(0, inline: true)),
            (bytes(" \t\u{0B}\u{0C}\r\r\n"), head(0, inline: true)),
            (bytes("a\rb\n"), head(1, inline: true)),
            (bytes("\"unbalanced\n"), head(1, inline: true)),      // the framer does not split: quotes are checked later
            (bytes("$3\r\n"), head(1, inline: true)),              // anything not starting with '*' is inline
        ]
        // Large counts: many elements, and a large payload.
        var many: [[UInt8]] = [bytes("MSET")]
        for k in 0..<300 { many.append(bytes(String(k % 10))) }
        c.append((multibulk(many), head(301, "mset", "0")))
        var big = [UInt8](repeating: 0x78, count: 100_000)
        big[50_000] = 13
        big[50_001] = 10
        c.append((multibulk([bytes("SET"), bytes("k"), big]), head(3, "set", "k")))
        c.append((bytes("*2\r\n$2\r\nID\r\n$20\r\n\(String(repeating: "9", count: 20))\r\n"), head(2, "id", String(repeating: "9", count: 20))))
        return c
    }()

    func testCorpusWholeSplitAndBytewise() {
        for (frame, expected) in Self.corpus {
            let whole = runWhole(RequestFramer(), frame)
            XCTAssertNil(whole.error, debugText(frame))
            XCTAssertEqual(whole.frames, [frame.count], debugText(frame))
            XCTAssertEqual(whole.infos, [expected], debugText(frame))
            XCTAssertFalse(whole.pending)
            assertSplitInvariant(RequestFramer(), frame)
        }
    }

    func testCorpusConcatenatedWithRandomSplits() {
        var stream: [UInt8] = []
        var ends: [Int] = []
        var heads: [CommandHead] = []
        for _ in 0..<3 {
            for (frame, h) in Self.corpus {
                stream += frame
                ends.append(stream.count)
                heads.append(h)
            }
        }
        var rng = SeededGenerator(seed: 7)
        for round in 0..<20 {
            let t = feed(RequestFramer(), stream, cuts: randomCuts(stream.count, maxChunk: max(1, round * 50), &rng))
            XCTAssertNil(t.error)
            XCTAssertEqual(t.frames, ends)
            XCTAssertEqual(t.infos, heads)
        }
    }

    func testPipelineOfTenThousandCommands() {
        var rng = SeededGenerator(seed: 42)
        let names = ["GET", "SET", "incr", "Client", "MGET", "hset", "PING", "SUBSCRIBE"]
        var stream: [UInt8] = []
        var ends: [Int] = []
        var heads: [CommandHead] = []
        var argsList: [[[UInt8]]] = []
        for _ in 0..<10_000 {
            let name = names.randomElement(using: &rng)!
            var args = [bytes(name)]
            for _ in 0..<Int.random(in: 0...4, using: &rng) {
                let n = Int.random(in: 0...40, using: &rng)
                args.append((0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) })
            }
            stream += multibulk(args)
            ends.append(stream.count)
            argsList.append(args)
            heads.append(CommandHead(argc: args.count, name: SmallBytes(lowercasing: args[0]),
                                     arg1: args.count > 1 ? SmallBytes(lowercasing: args[1]) : SmallBytes()))
            if Int.random(in: 0..<50, using: &rng) == 0 {   // sprinkle empty requests
                stream += bytes(["*0\r\n", "*-1\r\n", "\r\n"].randomElement(using: &rng)!)
                ends.append(stream.count)
                heads.append(CommandHead(argc: 0, isInline: stream[ends[ends.count - 2]] != UInt8(ascii: "*")))
                argsList.append([])
            }
        }
        for round in 0..<3 {
            let t = feed(RequestFramer(), stream, cuts: randomCuts(stream.count, maxChunk: [7, 300, 9000][round], &rng))
            XCTAssertNil(t.error)
            XCTAssertEqual(t.frames, ends)
            XCTAssertEqual(t.infos, heads)
            XCTAssertFalse(t.pending)
        }
        // The decoder reads back exactly the arguments of each framed request.
        stream.withUnsafeBytes { raw in
            var start = 0
            for (k, end) in ends.enumerated() {
                XCTAssertEqual(RESPDecoder.arguments(ofRequest: UnsafeRawBufferPointer(rebasing: raw[start..<end])), argsList[k])
                start = end
            }
        }
    }

    func testEmptyRequestsHaveNoArguments() {
        for s in ["*0\r\n", "*-1\r\n", "*-100\r\n", "\r\n", "\n", "   \r\n", "\t\n"] {
            let t = runWhole(RequestFramer(), bytes(s))
            XCTAssertEqual(t.frames, [s.utf8.count], s)
            XCTAssertEqual(t.infos.first?.argc, 0, s)
        }
    }

    func testHeadIsResetBetweenRequests() {
        let stream = multibulk("CLIENT", "SETNAME", "x") + bytes("*0\r\n") + multibulk("PING") + bytes("GET a\r\n")
        let t = runWhole(RequestFramer(), stream)
        XCTAssertEqual(t.infos, [head(3, "client", "setname"), head(0), head(1, "ping"), head(1, inline: true)])
    }

    func testFrameBoundaryFlag() {
        var f = RequestFramer()
        XCTAssertTrue(f.isAtFrameBoundary)
        let b = bytes("*1\r\n$4\r\nPI")
        b.withUnsafeBytes { XCTAssertEqual(f.next($0, from: 0), .needMore) }
        XCTAssertFalse(f.isAtFrameBoundary)
        bytes("NG\r\n").withUnsafeBytes { XCTAssertEqual(f.next($0, from: 0), .frame(end: 4)) }
        XCTAssertTrue(f.isAtFrameBoundary)
        XCTAssertEqual(f.head, head(1, "ping"))
    }

    func testOffsetAtEndAndEmptyBuffer() {
        var f = RequestFramer()
        bytes("*1\r\n").withUnsafeBytes { XCTAssertEqual(f.next($0, from: 4), .needMore) }
        [UInt8]().withUnsafeBytes { XCTAssertEqual(f.next($0, from: 0), .needMore) }
        XCTAssertTrue(f.isAtFrameBoundary)
    }

    func testLimitsAtTheirExactEdges() {
        // Count lines may be maxInlineLength bytes long ('*' or '$' included) before their '\r'.
        let small = RESPLimits(maxBulkLength: 10, maxMultibulkLength: 3, maxInlineLength: 8)
        XCTAssertNil(runWhole(RequestFramer(limits: small), bytes("*0000000")).error)         // 8 bytes, no '\r' yet
        XCTAssertEqual(runWhole(RequestFramer(limits: small), bytes("*00000000")).error?.message,
                       "Protocol error: too big mbulk count string")
        XCTAssertEqual(runWhole(RequestFramer(limits: small), bytes("*3\r\n")).pending, true)
        XCTAssertEqual(runWhole(RequestFramer(limits: small), bytes("*4\r\n")).error?.message,
                       "Protocol error: invalid multibulk length")
        XCTAssertEqual(runWhole(RequestFramer(limits: small), bytes("*1\r\n$10\r\n0123456789\r\n")).frames, [21])
        XCTAssertEqual(runWhole(RequestFramer(limits: small), bytes("*1\r\n$11\r\n")).error?.message,
                       "Protocol error: invalid bulk length")
        XCTAssertEqual(runWhole(RequestFramer(limits: small), bytes("12345678\n")).frames, [9])
        XCTAssertEqual(runWhole(RequestFramer(limits: small), bytes("123456789")).error?.message,
                       "Protocol error: too big inline request")
        // Defaults: Int32.max elements and 512 MiB bulks are accepted, one more is not.
        XCTAssertTrue(runWhole(RequestFramer(), bytes("*2147483647\r\n$536870912\r\n")).pending)
        XCTAssertEqual(runWhole(RequestFramer(), bytes("*2147483648\r\n")).error?.message, "Protocol error: invalid multibulk length")
        XCTAssertEqual(runWhole(RequestFramer(), bytes("*1\r\n$536870913\r\n")).error?.message, "Protocol error: invalid bulk length")
    }

    func testDefaultInlineLimitMatchesRedis() {
        // Mirrors redis-server: 65536 bytes without a terminator wait, one more is an error.
        for (prefix, message) in [("*", "too big mbulk count string"), ("*1\r\n$", "too big bulk count string")] {
            let large = bytes(prefix) + [UInt8](repeating: UInt8(ascii: "0"), count: 65536 - 1)
            XCTAssertTrue(runWhole(RequestFramer(), large).pending)
            XCTAssertEqual(runWhole(RequestFramer(), large + [48]).error?.message, "Protocol error: " + message)
            XCTAssertEqual(runBytewise(RequestFramer(), large + [48]).error?.message, "Protocol error: " + message)
            XCTAssertTrue(runWhole(RequestFramer(), large + [13]).pending)
            XCTAssertEqual(runWhole(RequestFramer(), large + [13, 10]).error?.message,
                           prefix == "*" ? "Protocol error: invalid multibulk length" : "Protocol error: invalid bulk length")
        }
        XCTAssertTrue(runWhole(RequestFramer(), [UInt8](repeating: 0x78, count: 65536)).pending)
        XCTAssertEqual(runWhole(RequestFramer(), [UInt8](repeating: 0x78, count: 65536) + [10]).frames, [65537])
        XCTAssertEqual(runWhole(RequestFramer(), [UInt8](repeating: 0x78, count: 65537)).error?.message,
                       "Protocol error: too big inline request")
    }
}
