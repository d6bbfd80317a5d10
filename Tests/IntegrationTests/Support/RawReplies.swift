// Byte-for-byte comparisons with redis-server: a reference scanner that finds where one RESP2/RESP3 reply ends
// (written independently of respool's framer, with no depth limit), and helpers that send the same commands to
// redis-server directly and through respool and compare what comes back.
import Foundation
import RESP
import XCTest

enum RawReplyScanner {
    /// The index just past the reply that starts at `from`, nil while it is incomplete. Counts the values still
    /// expected: aggregates add their element count (maps and attributes twice), every value header takes one
    /// (an attribute annotates the next value and takes none).
    static func end(of b: [UInt8], from: Int) -> Int? {
        var i = from
        var expected = 1
        while expected > 0 {
            guard i < b.count else { return nil }
            let type = b[i]
            guard let lf = lineEnd(b, from: i + 1) else { return nil }
            let line = String(decoding: b[(i + 1)..<(lf - 1)], as: UTF8.self)
            i = lf + 1
            if type != UInt8(ascii: "|") { expected -= 1 }
            switch type {
            case UInt8(ascii: "$"), UInt8(ascii: "!"), UInt8(ascii: "="):
                guard let n = Int(line) else { return nil }
                if n >= 0 {
                    i += n + 2
                    if i > b.count { return nil }
                }
            case UInt8(ascii: "*"), UInt8(ascii: "~"), UInt8(ascii: ">"):
                expected += max(0, Int(line) ?? 0)
            case UInt8(ascii: "%"), UInt8(ascii: "|"):
                expected += 2 * max(0, Int(line) ?? 0)
            default:
                break   // + - : _ # , ( : a single line
            }
        }
        return i
    }

    /// Index of the '\n' of the "\r\n" ending the line that starts at `from`.
    private static func lineEnd(_ b: [UInt8], from: Int) -> Int? {
        var j = from
        while j + 1 < b.count {
            if b[j] == 13 && b[j + 1] == 10 { return j + 1 }
            j += 1
        }
        return nil
    }
}

/// Readable bytes for failure messages (CR and LF shown as \\r \\n).
func showBytes(_ b: [UInt8], limit: Int = 300) -> String {
    var s = ""
    for byte in b.prefix(limit) {
        switch byte {
        case 13: s += "\\r"
        case 10: s += "\\n"
        case 32..<127: s.append(Character(UnicodeScalar(byte)))
        default: s += String(format: "\\x%02x", byte)
        }
    }
    return b.count > limit ? s + "...(\(b.count) bytes)" : s
}

extension IntegrationTestCase {
    /// Sends `commands` pipelined (one write) to each client and asserts that respool's replies are byte for byte
    /// the replies redis-server gave the direct client. With `keys`, "{p}" in an argument is the first prefix for the
    /// direct client and the second for respool's (commands that write must not see each other's keys).
    func assertSameReplies(direct: TestClient, proxied: TestClient, _ commands: [[String]], _ context: String = "",
                           keys: (String, String)? = nil, file: StaticString = #filePath, line: UInt = #line) throws {
        func payload(_ prefix: String?) -> [UInt8] {
            var out: [UInt8] = []
            for c in commands { out += RESPWriter.command(prefix.map { p in c.map { $0.replacingOccurrences(of: "{p}", with: p) } } ?? c) }
            return out
        }
        try direct.send(payload(keys?.0))
        let expected = try direct.readRawReplies(commands.count)
        try proxied.send(payload(keys?.1))
        let got = try proxied.readRawReplies(commands.count)
        for (k, command) in commands.enumerated() where got[k] != expected[k] {
            XCTFail("\(context) \(command.map { showBytes(Array($0.utf8), limit: 40) }.joined(separator: " ")): redis-server "
                    + "answered \(showBytes(expected[k])), respool \(showBytes(got[k]))", file: file, line: line)
        }
    }
}
