import XCTest
@testable import RESP

final class DecoderWriterTests: XCTestCase {
    func decode(_ s: String) throws -> RESPValue? {
        try RESPDecoder.decode(bytes(s))?.value
    }

    func testDecodeEveryType() throws {
        XCTAssertEqual(try decode("+OK\r\n"), .simpleString(bytes("OK")))
        XCTAssertEqual(try decode("-ERR x\r\n"), .error(bytes("ERR x")))
        XCTAssertEqual(try decode(":-42\r\n"), .integer(-42))
        XCTAssertEqual(try decode("$3\r\nabc\r\n"), .bulkString(bytes("abc")))
        XCTAssertEqual(try decode("$0\r\n\r\n"), .bulkString([]))
        XCTAssertEqual(try decode("$-1\r\n"), .bulkString(nil))
        XCTAssertEqual(try decode("*-1\r\n"), .array(nil))
        XCTAssertEqual(try decode("*2\r\n:1\r\n*0\r\n"), .array([.integer(1), .array([])]))
        XCTAssertEqual(try decode("_\r\n"), .null)
        XCTAssertEqual(try decode("#t\r\n"), .boolean(true))
        XCTAssertEqual(try decode("#f\r\n"), .boolean(false))
        XCTAssertEqual(try decode(",1.5e3\r\n"), .double(bytes("1.5e3")))
        XCTAssertEqual(try decode("(-123\r\n"), .bigNumber(bytes("-123")))
        XCTAssertEqual(try decode("!3\r\nERR\r\n"), .bulkError(bytes("ERR")))
        XCTAssertEqual(try decode("=7\r\ntxt:abc\r\n"), .verbatim(format: bytes("txt"), text: bytes("abc")))
        XCTAssertEqual(try decode("%1\r\n+k\r\n:1\r\n"), .map([.simpleString(bytes("k")), .integer(1)]))
        XCTAssertEqual(try decode("~1\r\n_\r\n"), .set([.null]))
        XCTAssertEqual(try decode(">1\r\n+m\r\n"), .push([.simpleString(bytes("m"))]))
        XCTAssertEqual(try decode("|1\r\n+a\r\n+b\r\n:1\r\n"),
                       .attribute([.simpleString(bytes("a")), .simpleString(bytes("b"))], .integer(1)))
        XCTAssertEqual(try RESPDecoder.decode(bytes("+OK\r\n:1\r\n"))?.consumed, 5)
    }

    func testDecodeContentErrors() {
        for bad in [":abc\r\n", ":\r\n", "#x\r\n", "#tt\r\n", "_x\r\n", "(1.5\r\n", "(\r\n", "=3\r\ntxt\r\n", "=4\r\ntxt-\r\n"] {
            XCTAssertThrowsError(try decode(bad), bad)
        }
    }

    func testIncompletePrefixesAreNil() throws {
        for (frame, _) in ReplyFramerTests.corpus where frame.count < 5000 {
            for k in 0..<frame.count {
                XCTAssertNil(try RESPDecoder.decode(Array(frame[..<k])), "prefix \(k) of \(debugText(frame))")
            }
        }
    }

    func testStringAccessor() {
        XCTAssertEqual(RESPValue.simpleString(bytes("a")).string, "a")
        XCTAssertEqual(RESPValue.error(bytes("ERR")).string, "ERR")
        XCTAssertEqual(RESPValue.bulkString(bytes("b")).string, "b")
        XCTAssertEqual(RESPValue.verbatim(format: bytes("txt"), text: bytes("c")).string, "c")
        XCTAssertNil(RESPValue.bulkString(nil).string)
        XCTAssertNil(RESPValue.integer(1).string)
        XCTAssertNil(RESPValue.null.string)
    }

    func testWriterRESP2() {
        var w = RESPWriter()
        XCTAssertEqual(w.proto, 2)
        w.simpleString("OK")
        w.error("ERR bad\r\nthing")
        w.integer(-7)
        w.bulk(bytes("ab"))
        w.bulk("é")
        w.null()
        w.nullArray()
        w.arrayHeader(2)
        w.mapHeader(2)
        w.setHeader(3)
        w.pushHeader(3)
        w.boolean(true)
        w.boolean(false)
        XCTAssertEqual(String(decoding: w.bytes, as: UTF8.self),
                       "+OK\r\n-ERR bad  thing\r\n:-7\r\n$2\r\nab\r\n$2\r\né\r\n$-1\r\n*-1\r\n*2\r\n*4\r\n*3\r\n*3\r\n:1\r\n:0\r\n")
    }

    func testWriterRESP3() {
        var w = RESPWriter(proto: 3)
        w.null()
        w.nullArray()
        w.mapHeader(2)
        w.setHeader(3)
        w.pushHeader(3)
        w.boolean(true)
        w.boolean(false)
        w.integer(Int.min)
        XCTAssertEqual(String(decoding: w.bytes, as: UTF8.self),
                       "_\r\n_\r\n%2\r\n~3\r\n>3\r\n#t\r\n#f\r\n:-9223372036854775808\r\n")
    }

    func testCommand() {
        XCTAssertEqual(RESPWriter.command(["SET", "k", ""]), bytes("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n"))
        XCTAssertEqual(RESPWriter.command([[0, 13]]), bytes("*1\r\n$2\r\n") + [0, 13] + bytes("\r\n"))
        XCTAssertEqual(RESPWriter.command([String]()), bytes("*0\r\n"))
        let args = [bytes("HELLO"), bytes("3"), [UInt8](repeating: 0xFF, count: 1000)]
        RESPWriter.command(args).withUnsafeBytes { XCTAssertEqual(RESPDecoder.arguments(ofRequest: $0), args) }
        bytes("*0\r\n").withUnsafeBytes { XCTAssertEqual(RESPDecoder.arguments(ofRequest: $0), []) }
        bytes("set a 'b c'\r\n").withUnsafeBytes { XCTAssertEqual(RESPDecoder.arguments(ofRequest: $0), [bytes("set"), bytes("a"), bytes("b c")]) }
        bytes("*3\r\n$1\r\na").withUnsafeBytes { XCTAssertEqual(RESPDecoder.arguments(ofRequest: $0), []) }  // truncated: no crash
    }

    func testSmallBytes() {
        let get = SmallBytes("GET")
        XCTAssertEqual(get, SmallBytes("get"))
        XCTAssertEqual(get, SmallBytes(lowercasing: bytes("gEt")))
        XCTAssertEqual(get.count, 3)
        XCTAssertEqual(get.bytes, bytes("get"))
        XCTAssertEqual(get.description, "get")
        XCTAssertFalse(get.truncated)
        XCTAssertTrue(get.equals(bytes("get")))
        XCTAssertFalse(get.equals(bytes("GET")))
        XCTAssertNotEqual(get, SmallBytes("gets"))
        XCTAssertEqual(SmallBytes().count, 0)
        XCTAssertEqual(SmallBytes(lowercasing: [UInt8]()), SmallBytes())
        let long = SmallBytes(lowercasing: [UInt8](repeating: 0x41, count: 40))
        XCTAssertEqual(long.count, 32)
        XCTAssertTrue(long.truncated)
        XCTAssertEqual(long.bytes, [UInt8](repeating: 0x61, count: 32))
        XCTAssertNotEqual(long, SmallBytes(lowercasing: [UInt8](repeating: 0x61, count: 32)))
        XCTAssertFalse(SmallBytes(lowercasing: [UInt8](repeating: 0x61, count: 32)).truncated)
        XCTAssertTrue(SmallBytes("0123456789012345678901234567890123").truncated)
        // Only ASCII A-Z are lowercased.
        XCTAssertEqual(SmallBytes(lowercasing: [0x40, 0x5B, 0xC0, 0x41, 0x5A]).bytes, [0x40, 0x5B, 0xC0, 0x61, 0x7A])
        let table: [SmallBytes: Int] = [SmallBytes("get"): 1, SmallBytes("set"): 2, long: 3]
        XCTAssertEqual(table[SmallBytes(lowercasing: bytes("SET"))], 2)
        XCTAssertEqual(table[SmallBytes(lowercasing: [UInt8](repeating: 0x61, count: 33))], 3)
        XCTAssertEqual(MemoryLayout<SmallBytes>.size, 34)
    }

    func testIntegerScannerMatchesString2ll() {
        func parse(_ s: String) -> Int64? {
            var sc = IntegerScanner()
            for c in s.utf8 { sc.feed(c) }
            return sc.value
        }
        XCTAssertEqual(parse("0"), 0)
        XCTAssertEqual(parse("-1"), -1)
        XCTAssertEqual(parse("9223372036854775807"), Int64.max)
        XCTAssertEqual(parse("-9223372036854775808"), Int64.min)
        for bad in ["", "-", "-0", "00", "01", "+1", " 1", "1 ", "9223372036854775808", "-9223372036854775809",
                    "18446744073709551616", "1a", "0x1", "000000000000000000000"] {
            XCTAssertNil(parse(bad), bad)
        }
    }
}
