import TestKit
import XCTest
@testable import RESP

/// The normal test run uses fixed seeds and round counts. scripts/fuzz runs these tests for longer: RESP_FUZZ_SCALE
/// multiplies the rounds, RESP_FUZZ_SEED is added to every seed (a failure message names the input; keep it as a
/// regression case in the ordinary tests).
private let fuzzScale = max(1, Int(ProcessInfo.processInfo.environment["RESP_FUZZ_SCALE"] ?? "") ?? 1)
private let fuzzSeed = UInt64(ProcessInfo.processInfo.environment["RESP_FUZZ_SEED"] ?? "") ?? 0

final class FuzzTests: XCTestCase {
    /// Random bytes, biased towards protocol characters so the framers get deep into their states.
    func garbage(_ n: Int, _ rng: inout SeededGenerator) -> [UInt8] {
        let alphabet = bytes("*$+-:_#,(!=%~>|;?\r\n\r\n0123456789-0123 abcXYZ") + [0, 255]
        var out: [UInt8] = []
        out.reserveCapacity(n)
        while out.count < n {
            switch Int.random(in: 0..<10, using: &rng) {
            case 0: out.append(UInt8.random(in: 0...255, using: &rng))
            case 1: out += multibulk("SET", "k\r\n", "v")
            case 2: out += bytes(["*1\r\n", "$3\r\n", "*2\r\n", "%1\r\n", "|1\r\n", ":1\r\n", "$-1\r\n", "+OK\r\n"].randomElement(using: &rng)!)
            default: out.append(alphabet.randomElement(using: &rng)!)
            }
        }
        return out
    }

    func testRandomGarbageNeverCrashesAndDoesNotDependOnSplits() {
        var rng = SeededGenerator(seed: 2024 &+ fuzzSeed)
        let limits = RESPLimits(maxBulkLength: 64, maxMultibulkLength: 64, maxInlineLength: 64, maxReplyLineLength: 64, maxDepth: 4)
        for _ in 0..<1500 * fuzzScale {
            let input = garbage(Int.random(in: 1...200, using: &rng), &rng)
            for lim in [limits, RESPLimits()] {
                let whole = runWhole(RequestFramer(limits: lim), input)
                XCTAssertEqual(feed(RequestFramer(limits: lim), input, cuts: randomCuts(input.count, maxChunk: 16, &rng)), whole, debugText(input))
                XCTAssertEqual(runBytewise(RequestFramer(limits: lim), input), whole, debugText(input))
                XCTAssertTrue(whole.error == nil || whole.error!.message.hasPrefix("Protocol error: "))

                let reply = runWhole(ReplyFramer(limits: lim), input)
                XCTAssertEqual(feed(ReplyFramer(limits: lim), input, cuts: randomCuts(input.count, maxChunk: 16, &rng)), reply, debugText(input))
                XCTAssertEqual(runBytewise(ReplyFramer(limits: lim), input), reply, debugText(input))
                // Where the framer found a complete first reply, the decoder either agrees on its length or rejects
                // its contents (the framer does not validate integers, booleans...); it never says "incomplete".
                if let first = reply.frames.first {
                    do {
                        let d = try RESPDecoder.decode(input, limits: lim)
                        XCTAssertEqual(d?.consumed, first, debugText(input))
                    } catch {}
                } else if let e = reply.error {
                    XCTAssertThrowsError(try RESPDecoder.decode(input, limits: lim), debugText(input)) { de in
                        let m = (de as? RESPProtocolError)?.message ?? ""
                        // Same error, or a content error (or a depth the decoder does not build values for, while
                        // the framer follows any depth) that the decoder found first.
                        if m != e.message { XCTAssertFalse(m.contains("length") || m.contains("type"), "\(m) vs \(e.message)") }
                    }
                } else {
                    XCTAssertNil(try? RESPDecoder.decode(input, limits: lim), debugText(input))
                }
            }
            _ = try? InlineCommand.split(input)
            input.withUnsafeBytes { _ = RESPDecoder.arguments(ofRequest: $0) }
        }
    }

    // MARK: - Random valid values

    func randomText(_ rng: inout SeededGenerator, binary: Bool) -> [UInt8] {
        let n = Int.random(in: 0...12, using: &rng)
        return (0..<n).map { _ in
            binary ? UInt8.random(in: 0...255, using: &rng) : bytes("abc xyz-:*$\t").randomElement(using: &rng)!
        }
    }

    func randomValue(_ rng: inout SeededGenerator, depth: Int) -> RESPValue {
        let leaf = depth >= 5 || Int.random(in: 0..<3, using: &rng) > 0
        if leaf {
            switch Int.random(in: 0..<12, using: &rng) {
            case 0: return .simpleString(randomText(&rng, binary: false))
            case 1: return .error(bytes("ERR ") + randomText(&rng, binary: false))
            case 2: return .integer(Int64.random(in: Int64.min...Int64.max, using: &rng))
            case 3: return .bulkString(randomText(&rng, binary: true))
            case 4: return .bulkString(nil)
            case 5: return .array(nil)
            case 6: return .null
            case 7: return .boolean(Bool.random(using: &rng))
            case 8: return .double(bytes(["1.5", "-inf", "nan", "3e10"].randomElement(using: &rng)!))
            case 9: return .bigNumber(bytes(String(UInt64.random(in: 0...UInt64.max, using: &rng)) + "123456789"))
            case 10: return .bulkError(bytes("ERR ") + randomText(&rng, binary: true))
            default: return .verbatim(format: bytes("txt"), text: randomText(&rng, binary: true))
            }
        }
        let n = Int.random(in: 0...4, using: &rng)
        let children = (0..<n).map { _ in randomValue(&rng, depth: depth + 1) }
        let pairs = (0..<(2 * n)).map { _ in randomValue(&rng, depth: depth + 1) }
        switch Int.random(in: 0..<5, using: &rng) {
        case 0: return .array(children)
        case 1: return .map(pairs)
        case 2: return .set(children)
        case 3: return .push(children)
        default: return .attribute(pairs, randomValue(&rng, depth: depth + 1))
        }
    }

    func firstKind(_ v: RESPValue) -> UInt8 {
        if case .attribute(_, let annotated) = v { return firstKind(annotated) }
        return encode(v)[0]
    }

    func testFramerAgreesWithDecoderOnRandomValidValues() throws {
        var rng = SeededGenerator(seed: 77 &+ fuzzSeed)
        var stream: [UInt8] = []
        var ends: [Int] = []
        var kinds: [UInt8] = []
        var values: [RESPValue] = []
        for _ in 0..<2000 * fuzzScale {
            let v = randomValue(&rng, depth: 0)
            let e = encode(v)
            // Round trip through the decoder.
            let d = try RESPDecoder.decode(e)
            XCTAssertEqual(d?.value, v)
            XCTAssertEqual(d?.consumed, e.count)
            stream += e
            ends.append(stream.count)
            kinds.append(firstKind(v))
            values.append(v)
        }
        for maxChunk in [1, 7, 100, 5000] {
            let t = feed(ReplyFramer(), stream, cuts: randomCuts(stream.count, maxChunk: maxChunk, &rng))
            XCTAssertNil(t.error)
            XCTAssertEqual(t.frames, ends)
            XCTAssertEqual(t.infos, kinds)
        }
        // Decoding the concatenation value by value consumes exactly the framer's frame lengths.
        try stream.withUnsafeBytes { raw in
            var start = 0
            for (k, end) in ends.enumerated() {
                let d = try RESPDecoder.decode(UnsafeRawBufferPointer(rebasing: raw[start...]))
                XCTAssertEqual(d.map { start + $0.consumed }, end)
                XCTAssertEqual(d?.value, values[k])
                start = end
            }
        }
    }

    func testRandomRequestsRoundTrip() {
        var rng = SeededGenerator(seed: 5 &+ fuzzSeed)
        for _ in 0..<500 * fuzzScale {
            let args = (0..<Int.random(in: 1...6, using: &rng)).map { _ in randomText(&rng, binary: true) }
            let frame = multibulk(args)
            let t = feed(RequestFramer(), frame, cuts: randomCuts(frame.count, maxChunk: 16, &rng))
            XCTAssertEqual(t.frames, [frame.count])
            XCTAssertEqual(t.infos.first?.argc, args.count)
            XCTAssertEqual(t.infos.first?.name, SmallBytes(lowercasing: args[0]))
            frame.withUnsafeBytes { XCTAssertEqual(RESPDecoder.arguments(ofRequest: $0), args) }
        }
    }
}
