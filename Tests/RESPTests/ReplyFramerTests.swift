import TestKit
import XCTest
@testable import RESP

final class ReplyFramerTests: XCTestCase {
    /// One complete reply each, with the kind the framer must report.
    static let corpus: [(bytes: [UInt8], kind: Character)] = {
        var c: [(String, Character)] = [
            ("+OK\r\n", "+"),
            ("+\r\n", "+"),
            ("-ERR unknown command 'x'\r\n", "-"),
            (":0\r\n", ":"),
            (":-9223372036854775808\r\n", ":"),
            ("$5\r\nhello\r\n", "$"),
            ("$0\r\n\r\n", "$"),
            ("$-1\r\n", "$"),
            ("$8\r\na\r\nb\r\n\r\n\r\n", "$"),
            ("*0\r\n", "*"),
            ("*-1\r\n", "*"),
            ("*3\r\n:1\r\n$-1\r\n+two\r\n", "*"),
            ("*2\r\n*2\r\n:1\r\n:2\r\n*0\r\n", "*"),
            ("*1\r\n*1\r\n*1\r\n*1\r\n*0\r\n", "*"),
            ("_\r\n", "_"),
            ("#t\r\n", "#"),
            (",3.14\r\n", ","),
            (",-inf\r\n", ","),
            ("(3492890328409238509324850943850943825024385\r\n", "("),
            ("!21\r\nSYNTAX invalid syntax\r\n", "!"),
            ("=15\r\ntxt:Some string\r\n", "="),
            ("%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n", "%"),
            ("%0\r\n", "%"),
            ("~3\r\n+a\r\n+b\r\n+c\r\n", "~"),
            (">3\r\n+message\r\n+chan\r\n$5\r\nhello\r\n", ">"),
            ("|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.1923\r\n$1\r\nb\r\n,0.0012\r\n*2\r\n:2039123\r\n:9543892\r\n", "*"),
            ("|0\r\n+OK\r\n", "+"),
            ("|1\r\n+a\r\n+b\r\n|1\r\n+c\r\n+d\r\n:5\r\n", ":"),
            ("*2\r\n|1\r\n+ttl\r\n:3600\r\n$1\r\nv\r\n:2\r\n", "*"),
            ("*1\r\n|1\r\n*1\r\n+k\r\n*1\r\n+v\r\n*0\r\n", "*"),
            ("%1\r\n~2\r\n>1\r\n_\r\n#f\r\n%1\r\n=5\r\nmkd:x\r\n!1\r\ne\r\n", "%"),
            ("|1\r\n*0\r\n*0\r\n-ERR after attr\r\n", "-"),
            ("+line with a lone \r inside\r\n", "+"),
            ("-\r\r\n", "-"),
        ]
        var big = "*300\r\n"
        for k in 0..<300 { big += k % 3 == 0 ? ":\(k)\r\n" : k % 3 == 1 ? "$1\r\n\(k % 10)\r\n" : "*1\r\n+\(k)\r\n" }
        c.append((big, "*"))
        var out = c.map { (bytes($0.0), $0.1) }
        var payload = [UInt8](repeating: 0x61, count: 100_000)
        payload[99_998] = 13
        payload[99_999] = 10
        out.append((bytes("$100000\r\n") + payload + bytes("\r\n"), "$"))
        out.append((bytes("+") + [UInt8](repeating: 0x62, count: 20_000) + bytes("\r\n"), "+"))
        return out
    }()

    func testCorpusWholeSplitAndBytewise() {
        for (frame, kind) in Self.corpus {
            let whole = runWhole(ReplyFramer(), frame)
            XCTAssertNil(whole.error, debugText(frame))
            XCTAssertEqual(whole.frames, [frame.count], debugText(frame))
            XCTAssertEqual(whole.infos, [kind.asciiValue!], debugText(frame))
            assertSplitInvariant(ReplyFramer(), frame)
            // The decoder agrees on the length and re-encodes it byte for byte.
            do {
                let decoded = try RESPDecoder.decode(frame)
                XCTAssertEqual(decoded?.consumed, frame.count, debugText(frame))
                if let v = decoded?.value { XCTAssertEqual(encode(v), frame, debugText(frame)) }
            } catch {
                XCTFail("\(error) for \(debugText(frame))")
            }
        }
    }

    func testCorpusConcatenatedWithRandomSplits() {
        var stream: [UInt8] = []
        var ends: [Int] = []
        var kinds: [UInt8] = []
        for _ in 0..<3 {
            for (frame, kind) in Self.corpus {
                stream += frame
                ends.append(stream.count)
                kinds.append(kind.asciiValue!)
            }
        }
        var rng = SeededGenerator(seed: 11)
        for round in 0..<20 {
            let t = feed(ReplyFramer(), stream, cuts: randomCuts(stream.count, maxChunk: max(1, round * 50), &rng))
            XCTAssertNil(t.error)
            XCTAssertEqual(t.frames, ends)
            XCTAssertEqual(t.infos, kinds)
        }
    }

    func testPipelineOfTenThousandReplies() {
        var rng = SeededGenerator(seed: 99)
        var stream: [UInt8] = []
        var ends: [Int] = []
        let shapes = ["+OK\r\n", ":12345\r\n", "$-1\r\n", "*-1\r\n", "$3\r\nbar\r\n", "*2\r\n$1\r\na\r\n$1\r\nb\r\n",
                      ">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n", "-ERR x\r\n"].map(bytes)
        for _ in 0..<10_000 {
            if Int.random(in: 0..<10, using: &rng) == 0 {
                let n = Int.random(in: 0...3000, using: &rng)
                stream += bytes("$\(n)\r\n") + [UInt8](repeating: 13, count: n) + bytes("\r\n")
            } else {
                stream += shapes.randomElement(using: &rng)!
            }
            ends.append(stream.count)
        }
        for maxChunk in [5, 200, 20_000] {
            let t = feed(ReplyFramer(), stream, cuts: randomCuts(stream.count, maxChunk: maxChunk, &rng))
            XCTAssertNil(t.error)
            XCTAssertEqual(t.frames, ends)
            XCTAssertFalse(t.pending)
        }
    }

    func testFrameBoundaryFlag() {
        var f = ReplyFramer()
        XCTAssertTrue(f.isAtFrameBoundary)
        bytes("*2\r\n:1\r\n").withUnsafeBytes { XCTAssertEqual(f.next($0, from: 0), .needMore) }
        XCTAssertFalse(f.isAtFrameBoundary)
        bytes(":2\r\n").withUnsafeBytes { XCTAssertEqual(f.next($0, from: 0), .frame(end: 4)) }
        XCTAssertTrue(f.isAtFrameBoundary)
        XCTAssertEqual(f.kind, UInt8(ascii: "*"))
        bytes("|1\r\n+a\r\n+b\r\n").withUnsafeBytes { XCTAssertEqual(f.next($0, from: 0), .needMore) }
        XCTAssertFalse(f.isAtFrameBoundary)                 // the attribute's value is still to come
        bytes("-ERR x\r\n").withUnsafeBytes { XCTAssertEqual(f.next($0, from: 0), .frame(end: 8)) }
        XCTAssertTrue(f.isAtFrameBoundary)
        XCTAssertEqual(f.kind, UInt8(ascii: "-"))
        bytes("x").withUnsafeBytes { _ = f.next($0, from: 0) }
        XCTAssertFalse(f.isAtFrameBoundary)
    }

    // MARK: - Errors

    func check(_ input: [UInt8], _ message: String?, frames: Int = 0, limits: RESPLimits = RESPLimits(),
               file: StaticString = #filePath, line: UInt = #line) {
        let t = runWhole(ReplyFramer(limits: limits), input)
        XCTAssertEqual(t.error?.message, message.map { "Protocol error: " + $0 }, debugText(input), file: file, line: line)
        XCTAssertEqual(t.frames.count, frames, debugText(input), file: file, line: line)
        assertSplitInvariant(ReplyFramer(limits: limits), input, file: file, line: line)
        // The decoder reports the same error for the first value (when the framer failed inside it).
        if frames == 0, let message {
            XCTAssertThrowsError(try RESPDecoder.decode(input, limits: limits), file: file, line: line) { e in
                XCTAssertEqual((e as? RESPProtocolError)?.message, "Protocol error: " + message, debugText(input), file: file, line: line)
            }
        }
    }

    func check(_ input: String, _ message: String?, frames: Int = 0, limits: RESPLimits = RESPLimits(),
               file: StaticString = #filePath, line: UInt = #line) {
        check(bytes(input), message, frames: frames, limits: limits, file: file, line: line)
    }

    func testUnexpectedType() {
        check("X\r\n", "unexpected reply type 'X'")
        check(";4\r\nHell\r\n", "unexpected reply type ';'")          // streamed string chunks are not supported
        check(".\r\n", "unexpected reply type '.'")
        check("\r\n", "unexpected reply type ' '")
        check("*2\r\n:1\r\n?\r\n", "unexpected reply type '?'")
        check("+OK\r\n+OK\r\nhello", "unexpected reply type 'h'", frames: 2)
        check("$3\r\nabc\r\n\n", "unexpected reply type ' '", frames: 1)
    }

    func testLengths() {
        for bad in ["$-2\r\n", "$?\r\n", "$abc\r\n", "$\r\n", "$01\r\n", "$+1\r\n", "$1 \r\n", "$1\rX", "!-1\r\n", "=-1\r\n",
                    "$536870913\r\n", "$99999999999999999999\r\n"] {
            check(bad, "invalid bulk length")
        }
        for bad in ["*-2\r\n", "*?\r\n", "%-1\r\n", "~-1\r\n", ">-1\r\n", "|-1\r\n", "*x\r\n", "*\r\n", "%?\r\n",
                    "*2147483648\r\n", "*1\r\r", "%4611686018427387904\r\n"] {
            check(bad, "invalid multibulk length")
        }
        check("%4611686018427387904\r\n", "invalid multibulk length", limits: RESPLimits(maxMultibulkLength: Int.max))
        check("$536870912\r\n", nil)
        check("*2147483647\r\n", nil)
        check("$3\r\nabcXY", "expected CRLF after bulk string")
        check("$3\r\nabc\n", "expected CRLF after bulk string")
        check("!0\r\nX", "expected CRLF after bulk string")
    }

    func testLineTooLong() {
        let limits = RESPLimits(maxReplyLineLength: 8)
        check("+12345678\r\n", nil, frames: 1, limits: limits)
        check("+123456789", "reply line too long", limits: limits)
        check("+1234567\r\r\n", nil, frames: 1, limits: limits)       // a lone '\r' is content
        check("+12345678\rX", "reply line too long", limits: limits)
        check("*1\r\n-123456789\r\n", "reply line too long", limits: limits)
        check("$123456789\r\n", "reply line too long", limits: RESPLimits(maxReplyLineLength: 3))
    }

    /// The framer needs no stack: any depth is framed (redis-server answers a self-referencing Lua table with 7,995
    /// nested arrays), with attributes anywhere and the top-level kind after a leading attribute.
    func testAnyDepthIsFramed() {
        check("*1\r\n*1\r\n*1\r\n*0\r\n", nil, frames: 1)
        check("*1\r\n*1\r\n*1\r\n*-1\r\n", nil, frames: 1)
        check("*1\r\n%1\r\n+k\r\n|1\r\n+a\r\n+b\r\n:1\r\n", nil, frames: 1)
        check("*2\r\n*1\r\n*1\r\n:1\r\n*1\r\n*1\r\n:1\r\n", nil, frames: 1)
        // At every split point (quadratic: a few hundred levels), then 100,000 levels whole and byte by byte.
        let nested = String(repeating: "*1\r\n", count: 300) + "-ERR reached lua stack limit\r\n"
        check(nested + nested + "+OK\r\n", nil, frames: 3)
        check(String(repeating: "*1\r\n", count: 70), nil, frames: 0)
        let deep = bytes(String(repeating: "*1\r\n", count: 100_000) + "-ERR reached lua stack limit\r\n")
        XCTAssertEqual(runWhole(ReplyFramer(), deep + deep).frames, [deep.count, 2 * deep.count])
        XCTAssertEqual(runBytewise(ReplyFramer(), deep).frames, [deep.count])
        var f = ReplyFramer()
        deep.withUnsafeBytes { raw in
            XCTAssertEqual(f.next(raw, from: 0), .frame(end: raw.count))
            XCTAssertEqual(f.kind, UInt8(ascii: "*"))
        }
        // The kind of a reply that starts with an attribute is the annotated value's, however deep the attribute.
        for (input, kind) in [("|1\r\n+k\r\n*1\r\n*1\r\n:1\r\n-ERR x\r\n", "-"), ("|1\r\n*2\r\n:1\r\n:2\r\n+v\r\n:5\r\n", ":"),
                              ("|2\r\n+a\r\n|1\r\n+x\r\n+y\r\n%1\r\n+b\r\n+c\r\n+d\r\n:1\r\n>2\r\n+m\r\n+n\r\n", ">")] {
            var g = ReplyFramer()
            bytes(input).withUnsafeBytes { raw in
                XCTAssertEqual(g.next(raw, from: 0), .frame(end: raw.count), input)
                XCTAssertEqual(g.kind, UInt8(ascii: Unicode.Scalar(kind)!), input)
            }
        }
    }

    func testErrorIsSticky() {
        var f = ReplyFramer()
        let e = RESPProtocolError("Protocol error: unexpected reply type 'x'")
        bytes("x").withUnsafeBytes { XCTAssertEqual(f.next($0, from: 0), .error(e)) }
        bytes("+OK\r\n").withUnsafeBytes { XCTAssertEqual(f.next($0, from: 0), .error(e)) }
    }
}
