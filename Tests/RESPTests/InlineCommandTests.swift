import XCTest
@testable import RESP

/// Cases follow redis-server's sdssplitargs (sds.c) and tests/unit/protocol.tcl.
final class InlineCommandTests: XCTestCase {
    func split(_ s: String) throws -> [String] {
        try InlineCommand.split(bytes(s)).map { String(decoding: $0, as: UTF8.self) }
    }

    func splitBytes(_ s: String) throws -> [[UInt8]] {
        try InlineCommand.split(bytes(s))
    }

    func assertUnbalanced(_ s: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try split(s), s, file: file, line: line) { e in
            XCTAssertEqual(e as? RESPProtocolError, RESPProtocolError("Protocol error: unbalanced quotes in request"),
                           file: file, line: line)
        }
    }

    func testPlainWords() throws {
        XCTAssertEqual(try split("PING\r\n"), ["PING"])
        XCTAssertEqual(try split("PING\n"), ["PING"])
        XCTAssertEqual(try split("PING"), ["PING"])
        XCTAssertEqual(try split(" set  a\tb \r\n"), ["set", "a", "b"])
        XCTAssertEqual(try split(""), [])
        XCTAssertEqual(try split("\r\n"), [])
        XCTAssertEqual(try split("   \t \u{0B}\u{0C}\n"), [])
        XCTAssertEqual(try split("a\r\r\n"), ["a"])                  // only one '\r' is stripped; the other is a blank
        XCTAssertEqual(try split("a\rb\n"), ["a", "b"])
        XCTAssertEqual(try split("a\u{0B}b c\u{0C}d"), ["a\u{0B}b", "c\u{0C}d"])  // \v \f do not end an unquoted word
        XCTAssertEqual(try split("\u{0B}a"), ["a"])                   // ... but are skipped between words
    }

    func testDoubleQuotes() throws {
        XCTAssertEqual(try split("set \"foo bar\" 1"), ["set", "foo bar", "1"])
        XCTAssertEqual(try split("\"\""), [""])
        XCTAssertEqual(try split("a \"\" b"), ["a", "", "b"])
        XCTAssertEqual(try splitBytes("\"\\n\\r\\t\\b\\a\\\\\\\"\\z\""), [[10, 13, 9, 8, 7, 92, 34, 122]])
        XCTAssertEqual(try splitBytes("\"\\x41\\x62\\xff\\x00\\xAb\""), [[0x41, 0x62, 0xFF, 0x00, 0xAB]])
        XCTAssertEqual(try split("\"\\x4G\""), ["x4G"])               // not two hex digits: "\x" is just 'x'
        XCTAssertEqual(try split("\"\\x4\""), ["x4"])
        XCTAssertEqual(try split("foo\"bar baz\""), ["foobar baz"])   // a quote inside a word starts quoting
        XCTAssertEqual(try split("\"a\"\t\"b\""), ["a", "b"])
        XCTAssertEqual(try split("\"a\"\u{0B}b"), ["a", "b"])         // isspace() after the closing quote
        XCTAssertEqual(try split("\"a'b\""), ["a'b"])
        XCTAssertEqual(try split("\"a\r\nb\"\r\n"), ["a\r\nb"])      // the line's own CR LF are stripped first
    }

    func testSingleQuotes() throws {
        XCTAssertEqual(try split("'it\\'s' x"), ["it's", "x"])
        XCTAssertEqual(try split("'a\\nb'"), ["a\\nb"])               // no other escapes in single quotes
        XCTAssertEqual(try split("''"), [""])
        XCTAssertEqual(try split("'a\"b'"), ["a\"b"])
        XCTAssertEqual(try split("x'y z'"), ["xy z"])
    }

    func testUnbalanced() {
        assertUnbalanced("\"unterminated")
        assertUnbalanced("'unterminated")
        assertUnbalanced("set \"a\"b")
        assertUnbalanced("set 'a'b")
        assertUnbalanced("\"a\"\"b\"")
        assertUnbalanced("ECHO \"a\\\"\n")                           // the quote is escaped: still open
        assertUnbalanced("ECHO 'a\\'\n")
        assertUnbalanced("\"a\\")                                     // a backslash at the end
        assertUnbalanced("'")
        assertUnbalanced("\"")
    }

    func testNulEndsTheLine() throws {
        XCTAssertEqual(try InlineCommand.split([0x61, 0x20, 0x62, 0x00, 0x63, 0x0A]), [[0x61], [0x62]])
        XCTAssertEqual(try InlineCommand.split([0x00, 0x61]), [])
        XCTAssertThrowsError(try InlineCommand.split([0x22, 0x61, 0x00, 0x22]))
    }

    func testWorksOnAnyCollection() throws {
        let line = bytes("xxGET k\r\n")
        XCTAssertEqual(try InlineCommand.split(line[2...]), [bytes("GET"), bytes("k")])
        line.withUnsafeBytes { raw in
            XCTAssertEqual(RESPDecoder.arguments(ofRequest: UnsafeRawBufferPointer(rebasing: raw[2...])), [bytes("GET"), bytes("k")])
        }
    }
}
