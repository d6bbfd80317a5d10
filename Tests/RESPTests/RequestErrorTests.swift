import XCTest
@testable import RESP

final class RequestErrorTests: XCTestCase {
    let small = RESPLimits(maxInlineLength: 16)

    /// Input, limits, the message expected once all of it arrived, frames completed before the error.
    func check(_ input: [UInt8], _ message: String?, frames: Int = 0, limits: RESPLimits = RESPLimits(),
               file: StaticString = #filePath, line: UInt = #line) {
        let t = runWhole(RequestFramer(limits: limits), input)
        XCTAssertEqual(t.error?.message, message.map { "Protocol error: " + $0 }, debugText(input), file: file, line: line)
        XCTAssertEqual(t.frames.count, frames, debugText(input), file: file, line: line)
        if message == nil && frames == 0 { XCTAssertTrue(t.pending, debugText(input), file: file, line: line) }
        assertSplitInvariant(RequestFramer(limits: limits), input, file: file, line: line)
    }

    func check(_ input: String, _ message: String?, frames: Int = 0, limits: RESPLimits = RESPLimits(),
               file: StaticString = #filePath, line: UInt = #line) {
        check(bytes(input), message, frames: frames, limits: limits, file: file, line: line)
    }

    func testMultibulkCount() {
        for bad in ["*abc\r\n", "*+1\r\n", "* 1\r\n", "*1 \r\n", "*01\r\n", "*-0\r\n", "*\r\n", "*-\r\n", "*1a\r\n",
                    "*2147483648\r\n", "*99999999999999999999\r\n", "*-9223372036854775809\r\n",
                    "*000000000000000000001\r\n", "*1\rX", "*1\r\r", "*1\n\r\n", "*\u{1}\r\n"] {
            check(bad, "invalid multibulk length")
        }
        check("*1\r", nil)                                   // judged only when the byte after '\r' is here
        check("*abc", nil)                                    // ... and only once the line ended
        check("*" + String(repeating: "1", count: 15), nil, limits: small)
        check("*" + String(repeating: "1", count: 16), "too big mbulk count string", limits: small)
        check("*" + String(repeating: "1", count: 15) + "\r\n", "invalid multibulk length", limits: small)
        check(multibulk("PING") + bytes("*x\r\n"), "invalid multibulk length", frames: 1)
    }

    func testExpectedDollar() {
        check("*1\r\nX3\r\n", "expected '$', got 'X'")
        check("*1\r\n:3\r\nabc\r\n", "expected '$', got ':'")
        check("*1\r\n*1\r\n", "expected '$', got '*'")
        check("*1\r\n\r\n", "expected '$', got ' '")          // CR and LF are printed as spaces, as redis-server does
        check("*1\r\n\n\r\n", "expected '$', got ' '")
        check("*2\r\n$3\r\nGET\r\n+a\r\n", "expected '$', got '+'")
        check("*1\r\nX", nil)                                 // redis-server waits for the line's '\r' first
        check("*1\r\nX\r", nil)
        check("*1\r\nX" + String(repeating: "y", count: 15), nil, limits: small)
        check("*1\r\nX" + String(repeating: "y", count: 16), "too big bulk count string", limits: small)
        // The '$' check comes before the number check.
        check("*1\r\nXabc\r\n", "expected '$', got 'X'")
    }

    func testBulkLength() {
        for bad in ["*1\r\n$-1\r\n", "*1\r\n$abc\r\n", "*1\r\n$\r\n", "*1\r\n$+3\r\n", "*1\r\n$03\r\n",
                    "*1\r\n$3 \r\n", "*1\r\n$3\rX", "*1\r\n$536870913\r\n", "*1\r\n$18446744073709551616\r\n",
                    "*1\r\n$9223372036854775807\r\n", "*1\r\n$-0\r\n", "*1\r\n$?\r\n"] {
            check(bad, "invalid bulk length")
        }
        check("*1\r\n$" + String(repeating: "1", count: 15), nil, limits: small)
        check("*1\r\n$" + String(repeating: "1", count: 16), "too big bulk count string", limits: small)
        check("*2\r\n$3\r\nabc\r\n$" + String(repeating: "1", count: 16), "too big bulk count string", limits: small)
        check("*1\r\n$3\r\nabc\r\n$" + String(repeating: "1", count: 16), "too big inline request", frames: 1, limits: small)
        check("*1\r\n$9223372036854775807\r\n", "invalid bulk length",
              limits: RESPLimits(maxBulkLength: Int.max - 1))
        check("*1\r\n$536870912\r\n", nil)
    }

    func testCRLFAfterBulk() {
        check("*1\r\n$3\r\nabcXY", "expected CRLF after bulk string")
        check("*1\r\n$3\r\nabc\rX", "expected CRLF after bulk string")
        check("*1\r\n$3\r\nabc\n\r", "expected CRLF after bulk string")
        check("*1\r\n$0\r\n\n", "expected CRLF after bulk string")
        check("*2\r\n$3\r\nabcd\r\n", "expected CRLF after bulk string")
        check("*1\r\n$3\r\nabc\r", nil)
    }

    func testInlineTooBig() {
        check(String(repeating: "x", count: 16), nil, limits: small)
        check(String(repeating: "x", count: 17), "too big inline request", limits: small)
        check(String(repeating: "x", count: 15) + "\r\n", nil, frames: 1, limits: small)
        check(String(repeating: "x", count: 16) + "\r\n", "too big inline request", limits: small)  // '\r' counts
        check("PING\r\n" + String(repeating: "x", count: 17), "too big inline request", frames: 1, limits: small)
    }

    func testNulStopsTheLineAsInRedis() {
        // redis-server finds line ends with strchr(): after a NUL the line never ends; only the limit ends it.
        check(bytes("PING") + [0] + bytes("\n"), nil)
        check(bytes("PING") + [0] + bytes("\nPING\r\nxx"), nil, limits: small)
        check(bytes("PING") + [0] + bytes("\nPING\r\nxxxxx"), "too big inline request", limits: small)
        check([0, 10], nil)
        check(bytes("*1") + [0] + bytes("\r\n$4\r\nPING\r\nxx"), nil, limits: RESPLimits(maxInlineLength: 17))
        check(bytes("*1") + [0] + bytes("\r\n$4\r\nPING\r\nxx"), "too big mbulk count string", limits: small)
        check(bytes("*1\r\n$1") + [0] + bytes("\r\na\r\n"), nil)
        check(bytes("*1\r\n") + [0] + bytes("\r\n"), nil)
        check(bytes("*1\r\n") + [0] + [UInt8](repeating: 13, count: 16), "too big bulk count string", limits: small)
        // NUL inside a payload is just data.
        check(bytes("*1\r\n$1\r\n") + [0] + bytes("\r\n*1\r"), nil, frames: 1)
    }

    /// Errors that only show once a later read arrives: every earlier read answers `.needMore`.
    func testErrorsFoundInALaterRead() {
        func feedReads(_ reads: [String], limits: RESPLimits = RESPLimits()) -> [FrameResult] {
            var f = RequestFramer(limits: limits)
            return reads.map { r in bytes(r).withUnsafeBytes { f.next($0, from: 0) } }
        }
        func err(_ m: String) -> FrameResult { .error(RESPProtocolError("Protocol error: " + m)) }
        XCTAssertEqual(feedReads(["*1\r\n$3\r\nabc\r", "X"]), [.needMore, err("expected CRLF after bulk string")])
        XCTAssertEqual(feedReads(["*1\r\n$3\r\nab", "c", "\n"]), [.needMore, .needMore, err("expected CRLF after bulk string")])
        XCTAssertEqual(feedReads(["*1\r\nX", "YZ\r", "\n"]), [.needMore, .needMore, err("expected '$', got 'X'")])
        XCTAssertEqual(feedReads(["*1", "2a", "\r", "\n"]), [.needMore, .needMore, .needMore, err("invalid multibulk length")])
        XCTAssertEqual(feedReads(["*1\r", "\r"]), [.needMore, err("invalid multibulk length")])
        XCTAssertEqual(feedReads(["*1\r\n$5", "\r", "x"]), [.needMore, .needMore, err("invalid bulk length")])
        XCTAssertEqual(feedReads(["*123456", "7890123", "456"], limits: small), [.needMore, .needMore, err("too big mbulk count string")])
        XCTAssertEqual(feedReads(["*1\r\n$1234", "5678901234", "56"], limits: small), [.needMore, .needMore, err("too big bulk count string")])
        XCTAssertEqual(feedReads(["GET aaaaa", "aaaaaaa", "aaa"], limits: small), [.needMore, .needMore, err("too big inline request")])
        XCTAssertEqual(feedReads(["GET\u{0}", "\n", "\r\nPING\r\n", "xxxx"], limits: small),
                       [.needMore, .needMore, .needMore, err("too big inline request")])
    }

    func testErrorIsSticky() {
        var f = RequestFramer()
        let e = RESPProtocolError("Protocol error: invalid multibulk length")
        bytes("*x\r\n").withUnsafeBytes { XCTAssertEqual(f.next($0, from: 0), .error(e)) }
        multibulk("PING").withUnsafeBytes { XCTAssertEqual(f.next($0, from: 0), .error(e)) }
        [UInt8]().withUnsafeBytes { XCTAssertEqual(f.next($0, from: 0), .error(e)) }
    }

    func testReplyBytes() {
        XCTAssertEqual(RESPProtocolError("Protocol error: invalid bulk length").replyBytes,
                       bytes("-ERR Protocol error: invalid bulk length\r\n"))
        XCTAssertEqual(RESPProtocolError("a\r\nb").replyBytes, bytes("-ERR a  b\r\n"))
        XCTAssertEqual(RESPProtocolError("x").description, "x")
    }
}
