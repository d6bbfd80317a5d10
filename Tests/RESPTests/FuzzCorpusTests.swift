import Foundation
import XCTest
@testable import FuzzOracle
import RESP

/// Replays the fuzz seed corpus (Tests/Fuzz/corpus, recorded from redis-cli and redis-benchmark by `scripts/fuzz
/// record`) and every input the fuzzers found (Tests/Fuzz/regressions/<target>) through the same checks the
/// libFuzzer targets run (Tests/FuzzOracle), so a found input stays a test.
final class FuzzCorpusTests: XCTestCase {
    static let fuzzDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fuzz")

    func inputs(_ folders: [String], minimum: Int, file: StaticString = #filePath, line: UInt = #line) throws -> [(String, [UInt8])] {
        var found: [(String, [UInt8])] = []
        for folder in folders {
            let dir = Self.fuzzDirectory.appendingPathComponent(folder)
            // A target with no regression yet has no folder in git (an empty one is not kept).
            guard FileManager.default.fileExists(atPath: dir.path) else { continue }
            for name in try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted() where !name.hasPrefix(".") {
                found.append(("\(folder)/\(name)", Array(try Data(contentsOf: dir.appendingPathComponent(name)))))
            }
        }
        XCTAssertGreaterThanOrEqual(found.count, minimum, "inputs in \(folders)", file: file, line: line)
        return found
    }

    func testRequestCorpusAndRegressions() throws {
        for (name, input) in try inputs(["corpus/requests", "regressions/requests"], minimum: 25) {
            XCTAssertNil(FuzzOracle.checkRequests(input), name)
        }
    }

    func testReplyCorpusAndRegressions() throws {
        for (name, input) in try inputs(["corpus/replies", "regressions/replies"], minimum: 25) {
            XCTAssertNil(FuzzOracle.checkReplies(input), name)
        }
    }

    func testDecoderCorpusAndRegressions() throws {
        for (name, input) in try inputs(["corpus/replies", "regressions/decoder"], minimum: 25) {
            XCTAssertNil(FuzzOracle.checkDecoder(input), name)
        }
    }

    /// The recorded corpus is real traffic: the reference frames all of it without an error (only the 4 KiB cut
    /// leaves a partial frame at the end; redis-cli's first reply, COMMAND DOCS, is longer than that alone), so
    /// the seeds start the fuzzers deep inside valid streams.
    func testTheRecordedCorpusIsValidTraffic() throws {
        for (name, input) in try inputs(["corpus/requests"], minimum: 25) {
            let t = ReferenceRequests(bytes: input, limits: RESPLimits()).transcript()
            XCTAssertNil(t.error, name)
            XCTAssertFalse(t.ends.isEmpty, name)
        }
        for (name, input) in try inputs(["corpus/replies"], minimum: 25) {
            let t = ReferenceReplies(bytes: input, limits: RESPLimits()).transcript()
            XCTAssertNil(t.error, name)
            XCTAssertTrue(!t.ends.isEmpty || (t.pending && input.count == 4096), name)
        }
    }

    /// The reference decoders themselves, on inputs whose answers are known from redis-server.
    func testReferenceDecoders() {
        func requests(_ s: String, _ limits: RESPLimits = RESPLimits()) -> String {
            ReferenceRequests(bytes: Array(s.utf8), limits: limits).transcript().description
        }
        func replies(_ s: String, _ limits: RESPLimits = RESPLimits()) -> String {
            ReferenceReplies(bytes: Array(s.utf8), limits: limits).transcript().description
        }
        XCTAssertEqual(requests("*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n*0\r\n"), #"[20:2/"get"/"k" 26:1i/""/"" 30:0/""/""]"#)
        XCTAssertEqual(requests("*1\r\n$3\r\nGET\r"), "[] pending")
        XCTAssertEqual(requests("*1\r\n:3\r\n"), "[] error \"Protocol error: expected '$', got ':'\"")
        XCTAssertEqual(requests("*1\r\n$3\r\nGETxx"), "[] error \"Protocol error: expected CRLF after bulk string\"")
        XCTAssertEqual(requests("*01\r\n"), "[] error \"Protocol error: invalid multibulk length\"")
        XCTAssertEqual(requests("*1\0" + String(repeating: "x", count: 100)), "[] pending")   // NUL hides the '\r'
        let small = FuzzOracle.limitSets[1]
        XCTAssertEqual(requests(String(repeating: "a", count: 25), small), "[] error \"Protocol error: too big inline request\"")
        XCTAssertEqual(requests("*9\r\n", small), "[] error \"Protocol error: invalid multibulk length\"")
        XCTAssertEqual(replies("+OK\r\n$-1\r\n*2\r\n:1\r\n%1\r\n+a\r\n+b\r\n|1\r\n+k\r\n+v\r\n#t\r\n"),
                       ##"[5:"+" 10:"$" 30:"*" 46:"#"]"##)
        XCTAssertEqual(replies("+a\rb\r\n"), #"[6:"+"]"#)                        // a lone '\r' is content
        XCTAssertEqual(replies("$-9999999499994999499"), "[] error \"Protocol error: invalid bulk length\"")
        XCTAssertEqual(replies("*-"), "[] pending")
        XCTAssertEqual(replies("?"), "[] error \"Protocol error: unexpected reply type '?'\"")
        XCTAssertEqual(replies("+" + String(repeating: "x", count: 25), small), "[] error \"Protocol error: reply line too long\"")
    }
}
