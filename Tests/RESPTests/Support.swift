import XCTest
@testable import RESP
import TestKit

/// Deterministic generator (SplitMix64, TestKit) so every random test is reproducible.
typealias SeededGenerator = SeededRandom

func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

/// Cut points splitting `n` bytes into chunks of 1 to `maxChunk` bytes (the last one ends at or past `n`).
func randomCuts(_ n: Int, maxChunk: Int, _ rng: inout SeededGenerator) -> [Int] {
    var cuts: [Int] = []
    var at = 0
    while at < n {
        at += maxChunk == 1 ? 1 : Int.random(in: 1...maxChunk, using: &rng)
        cuts.append(at)
    }
    return cuts
}

/// What a framer reported over a whole stream: frames as absolute stream offsets, plus how it ended.
struct Transcript<Info: Equatable>: Equatable {
    var frames: [Int] = []
    var infos: [Info] = []
    var error: RESPProtocolError?
    /// Bytes after the last frame that were consumed into a partial frame (no error).
    var pending = false
}

/// Anything with the framers' `next` shape.
protocol Framer {
    associatedtype Info: Equatable
    mutating func next(_ bytes: UnsafeRawBufferPointer, from offset: Int) -> FrameResult
    var info: Info { get }
}

extension RequestFramer: Framer {
    var info: CommandHead { head }
}

extension ReplyFramer: Framer {
    var info: UInt8 { kind }
}

/// Feeds `stream` to `framer` in chunks that end at `cuts` (sorted offsets inside the stream); each chunk is a
/// separate buffer view that starts at its first new byte, so the framer cannot see earlier bytes.
func feed<F: Framer>(_ framer: F, _ stream: [UInt8], cuts: [Int]) -> Transcript<F.Info> {
    var framer = framer
    var t = Transcript<F.Info>()
    var boundaries = cuts.filter { $0 > 0 && $0 < stream.count }
    boundaries.append(stream.count)
    stream.withUnsafeBytes { all in
        var start = 0
        for stop in boundaries where stop > start {
            let chunk = UnsafeRawBufferPointer(rebasing: all[start..<stop])
            var offset = 0
            loop: while true {
                let r = framer.next(chunk, from: offset)
                switch r {
                case .needMore:
                    t.pending = (t.frames.last ?? 0) < stop
                    break loop
                case .frame(let end):
                    precondition(end > offset && end <= chunk.count, "frame end \(end) outside \(offset)...\(chunk.count)")
                    t.frames.append(start + end)
                    t.infos.append(framer.info)
                    t.pending = false
                    offset = end
                    if offset == chunk.count { break loop }
                case .error(let e):
                    t.error = e
                    t.pending = false
                    // The framer keeps reporting the same error.
                    precondition(framer.next(chunk, from: offset) == .error(e))
                    return
                }
            }
            start = stop
        }
    }
    return t
}

func runWhole<F: Framer>(_ framer: F, _ stream: [UInt8]) -> Transcript<F.Info> {
    feed(framer, stream, cuts: [])
}

func runBytewise<F: Framer>(_ framer: F, _ stream: [UInt8]) -> Transcript<F.Info> {
    feed(framer, stream, cuts: Array(0..<stream.count))
}

/// Checks that every two-way split and the byte-at-a-time feed give exactly the whole-buffer transcript.
func assertSplitInvariant<F: Framer>(_ framer: F, _ stream: [UInt8], file: StaticString = #filePath, line: UInt = #line) {
    let whole = runWhole(framer, stream)
    for k in 1..<max(stream.count, 1) {
        let split = feed(framer, stream, cuts: [k])
        if split != whole {
            XCTFail("split at \(k) of \(stream.count) differs: \(split) vs \(whole) for \(debugText(stream))", file: file, line: line)
            return
        }
    }
    let bytewise = runBytewise(framer, stream)
    XCTAssertEqual(bytewise, whole, "bytewise differs for \(debugText(stream))", file: file, line: line)
}

func debugText(_ b: [UInt8]) -> String {
    let shown = b.prefix(80).map { c -> String in
        switch c {
        case 13: return "\\r"
        case 10: return "\\n"
        case 32...126: return String(UnicodeScalar(c))
        default: return "\\x" + String(c, radix: 16)
        }
    }.joined()
    return "\"" + shown + (b.count > 80 ? "...\" (\(b.count) bytes)" : "\"")
}

func head(_ argc: Int, _ name: String = "", _ arg1: String = "", inline: Bool = false) -> CommandHead {
    CommandHead(argc: argc, isInline: inline, name: SmallBytes(lowercasing: bytes(name)),
                arg1: SmallBytes(lowercasing: bytes(arg1)))
}

func multibulk(_ args: [[UInt8]]) -> [UInt8] { RESPWriter.command(args) }
func multibulk(_ args: String...) -> [UInt8] { RESPWriter.command(args) }

func encode(_ v: RESPValue) -> [UInt8] {
    var w = RESPWriter(proto: 3)
    w.value(v)
    return w.bytes
}
