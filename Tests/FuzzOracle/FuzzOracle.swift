// What the libFuzzer targets (Fuzz/, scripts/fuzz) check for each input, and what RESPTests' corpus replay checks
// for every recorded and regression input: more than "no crash".
//
// - Each framer's frames, heads and final error agree with a reference decoder written here from the protocol's
//   rules (redis-server's networking.c for requests, the RESP2/RESP3 specification for replies): plain recursive
//   code over a complete buffer, no shared state machine, no fast paths, error messages spelled out.
// - Feeding the same input split at other points (random cuts derived from the input, and byte by byte) gives the
//   same transcript as feeding it whole.
// - The decoder frames where the reply framer frames, re-encodes what it decoded to exactly the bytes it read, and
//   fails only where the framer fails or on contents the framer does not judge (integers, booleans, depth...).
//
// Every check returns nil or a description of the disagreement (with the input), so the fuzz target can trap and the
// replay test can report. Uses only RESP's public API (the fuzz build compiles RESP and this file as one module).

#if !RESP_FUZZ_SINGLE_MODULE
import RESP
#endif

public enum FuzzOracle {
    /// The limits every input is checked under: redis-server's defaults, and small ones that reach every bound.
    public static let limitSets: [RESPLimits] = [
        RESPLimits(),
        RESPLimits(maxBulkLength: 16, maxMultibulkLength: 8, maxInlineLength: 24, maxReplyLineLength: 24, maxDepth: 3),
    ]

    /// Request framer against the reference, whole and re-split.
    public static func checkRequests(_ input: [UInt8]) -> String? {
        for limits in limitSets {
            let reference = ReferenceRequests(bytes: input, limits: limits).transcript()
            var splits = SplitPoints(input)
            for cuts in splits.cutSets() {
                let got = frame(input, cuts: cuts) { RequestFramerAdapter(RequestFramer(limits: limits)) }
                if got != reference {
                    return disagreement("RequestFramer", input, limits, cuts, got: got, reference: reference)
                }
            }
            if let failure = checkArguments(input, reference: reference) { return failure }
        }
        return nil
    }

    /// Reply framer against the reference, whole and re-split.
    public static func checkReplies(_ input: [UInt8]) -> String? {
        for limits in limitSets {
            let reference = ReferenceReplies(bytes: input, limits: limits).transcript()
            var splits = SplitPoints(input)
            for cuts in splits.cutSets() {
                let got = frame(input, cuts: cuts) { ReplyFramerAdapter(ReplyFramer(limits: limits)) }
                if got != reference {
                    return disagreement("ReplyFramer", input, limits, cuts, got: got, reference: reference)
                }
            }
        }
        return nil
    }

    /// The decoder on the input's first value, against the reference reply decoder.
    public static func checkDecoder(_ input: [UInt8]) -> String? {
        for limits in limitSets {
            let reference = ReferenceReplies(bytes: input, limits: limits).first()
            let outcome: Result<(value: RESPValue, consumed: Int)?, RESPProtocolError> = Result {
                () throws(RESPProtocolError) in try RESPDecoder.decode(input, limits: limits)
            }
            func fail(_ what: String) -> String {
                "RESPDecoder: \(what) (reference: \(reference)) for \(show(input)) with \(show(limits))"
            }
            switch (outcome, reference) {
            case (.success(let decoded?), .frame(let end, _)):
                guard decoded.consumed == end else { return fail("consumed \(decoded.consumed)") }
                var writer = RESPWriter(proto: 3)
                writer.value(decoded.value)
                guard writer.bytes[...] == input[..<end] else {
                    return fail("re-encoded as \(show(writer.bytes))")
                }
            case (.success(nil), .incomplete):
                break
            case (.failure(let e), .error(let message)):
                // The same error, or a content error the decoder found in a value read before the framing error.
                if e.message != message && framingMessages.contains(where: { e.message.hasPrefix($0) }) {
                    return fail("error \"\(e.message)\"")
                }
            case (.failure(let e), _):
                // Where the framer accepts the frame (or waits for more), only contents and depth can be wrong.
                if framingMessages.contains(where: { e.message.hasPrefix($0) }) {
                    return fail("error \"\(e.message)\"")
                }
            case (.success(let decoded?), _):
                return fail("decoded \(decoded.consumed) bytes")
            case (.success(nil), _):
                return fail("incomplete")
            }
        }
        return nil
    }

    /// Messages of the framing errors (a decoder error that is not one of these is about contents).
    static let framingMessages = [
        "Protocol error: invalid bulk length", "Protocol error: invalid multibulk length",
        "Protocol error: expected CRLF after bulk string", "Protocol error: unexpected reply type",
        "Protocol error: reply line too long",
    ]

    /// Multibulk requests: RESPDecoder.arguments and InlineCommand.split give the reference's arguments.
    static func checkArguments(_ input: [UInt8], reference: Transcript) -> String? {
        var start = 0
        for (end, args) in zip(reference.ends, reference.arguments) {
            let frame = Array(input[start..<end])
            if let args {
                let got = frame.withUnsafeBytes { RESPDecoder.arguments(ofRequest: $0) }
                if got != args { return "RESPDecoder.arguments: \(got.map(show)) for \(show(frame)), expected \(args.map(show))" }
            } else {
                _ = try? InlineCommand.split(frame)   // must not crash; its splitting has tests of its own
            }
            start = end
        }
        return nil
    }

    static func disagreement(_ name: String, _ input: [UInt8], _ limits: RESPLimits, _ cuts: [Int],
                             got: Transcript, reference: Transcript) -> String {
        let how = cuts.isEmpty ? "whole" : cuts.count == input.count ? "byte by byte" : "cut at \(cuts.prefix(16))"
        return "\(name) (\(how)) gave \(got), the reference \(reference), for \(show(input)) with \(show(limits))"
    }

    /// Feeds `input` to a fresh framer in chunks ending at `cuts`; each chunk is its own buffer.
    static func frame<F: FramerAdapter>(_ input: [UInt8], cuts: [Int], _ make: () -> F) -> Transcript {
        var framer = make()
        var t = Transcript()
        var stops = cuts.filter { $0 > 0 && $0 < input.count }
        stops.append(input.count)
        input.withUnsafeBytes { all in
            var start = 0
            for stop in stops where stop > start {
                let chunk = UnsafeRawBufferPointer(rebasing: all[start..<stop])
                var offset = 0
                while offset < chunk.count {
                    switch framer.next(chunk, from: offset) {
                    case .needMore:
                        offset = chunk.count
                    case .frame(let end):
                        if end <= offset || end > chunk.count {
                            t.error = "frame end \(end) outside \(offset)...\(chunk.count)"
                            return
                        }
                        t.ends.append(start + end)
                        t.heads.append(framer.head)
                        offset = end
                    case .error(let e):
                        t.error = e.message
                        if framer.next(chunk, from: offset) != .error(e) { t.error = "error not repeated: " + e.message }
                        return
                    }
                }
                start = stop
            }
        }
        t.pending = t.error == nil && (t.ends.last ?? 0) < input.count
        return t
    }
}

/// What a framer reported over a whole stream.
struct Transcript: Equatable, CustomStringConvertible {
    var ends: [Int] = []
    var heads: [String] = []
    var error: String?
    /// Bytes after the last frame were taken into a partial frame.
    var pending = false
    /// The reference's arguments of each multibulk request (nil for inline ones and replies); not compared.
    var arguments: [[[UInt8]]?] = []

    /// A reference decoder's transcript of `length` bytes: `next` frames from an offset, until the stream ends,
    /// stops in a partial frame or fails.
    static func stepping(_ length: Int, _ next: (Int) -> (ReferenceStep, [[UInt8]]?)) -> Transcript {
        var t = Transcript()
        var at = 0
        while at < length {
            let (step, args) = next(at)
            switch step {
            case .frame(let end, let head):
                t.ends.append(end)
                t.heads.append(head)
                t.arguments.append(args)
                at = end
            case .incomplete:
                t.pending = true
                return t
            case .error(let m):
                t.error = m
                return t
            }
        }
        return t
    }

    static func == (a: Transcript, b: Transcript) -> Bool {
        a.ends == b.ends && a.heads == b.heads && a.error == b.error && a.pending == b.pending
    }

    var description: String {
        let frames = zip(ends, heads).prefix(12).map { "\($0)\($1.isEmpty ? "" : ":" + $1)" }.joined(separator: " ")
        return "[\(frames)\(ends.count > 12 ? " ... (\(ends.count) frames)" : "")]"
            + (error.map { " error \"\($0)\"" } ?? "") + (pending ? " pending" : "")
    }
}

protocol FramerAdapter {
    mutating func next(_ bytes: UnsafeRawBufferPointer, from offset: Int) -> FrameResult
    var head: String { get }
}

struct RequestFramerAdapter: FramerAdapter {
    var framer: RequestFramer
    init(_ f: RequestFramer) { framer = f }
    mutating func next(_ bytes: UnsafeRawBufferPointer, from offset: Int) -> FrameResult { framer.next(bytes, from: offset) }
    var head: String { describe(framer.head) }
}

struct ReplyFramerAdapter: FramerAdapter {
    var framer: ReplyFramer
    init(_ f: ReplyFramer) { framer = f }
    mutating func next(_ bytes: UnsafeRawBufferPointer, from offset: Int) -> FrameResult { framer.next(bytes, from: offset) }
    var head: String { show([framer.kind]) }
}

func describe(_ h: CommandHead) -> String {
    "\(h.argc)\(h.isInline ? "i" : "")/\(show(h.name.bytes))\(h.name.truncated ? "+" : "")/\(show(h.arg1.bytes))\(h.arg1.truncated ? "+" : "")"
}

/// Cut sets for one input: whole, byte by byte, and four random ones seeded by the input (so a run is repeatable).
struct SplitPoints {
    let count: Int
    var state: UInt64

    init(_ input: [UInt8]) {
        count = input.count
        var h: UInt64 = 0xcbf2_9ce4_8422_2325   // FNV-1a
        for b in input { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        state = h
    }

    mutating func random(_ n: Int) -> Int {
        state &+= 0x9E37_79B9_7F4A_7C15   // SplitMix64
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return Int((z ^ (z >> 31)) % UInt64(n))
    }

    mutating func cutSets() -> [[Int]] {
        var sets: [[Int]] = [[], Array(0..<count)]
        guard count > 1 else { return sets }
        for maxChunk in [2, 7, 64, count] {
            var cuts: [Int] = []
            var at = 0
            while at < count {
                at += 1 + random(maxChunk)
                cuts.append(at)
            }
            sets.append(cuts)
        }
        return sets
    }
}

// MARK: - Reference decoders

/// One frame, as the reference sees it.
enum ReferenceStep: CustomStringConvertible {
    case frame(end: Int, head: String)
    case incomplete
    case error(String)

    var description: String {
        switch self {
        case .frame(let end, let head): return "frame \(end) \(head)"
        case .incomplete: return "incomplete"
        case .error(let m): return "error \"\(m)\""
        }
    }
}

/// redis-server's string2ll: optional '-', "0" or a non-zero digit then digits, at most 20 characters, in range.
func referenceInteger(_ s: ArraySlice<UInt8>) -> Int64? {
    guard !s.isEmpty, s.count <= 20 else { return nil }
    let text = String(decoding: s, as: UTF8.self)
    let digits = text.hasPrefix("-") ? String(text.dropFirst()) : text
    guard let first = digits.first, first.isASCII, first.isNumber, digits.allSatisfy({ $0.isASCII && $0.isNumber }) else {
        return nil
    }
    if first == "0" && (digits.count > 1 || text.hasPrefix("-")) { return nil }   // no leading zero, no "-0"
    return Int64(text)
}

/// A prefix of a count line that can still become a valid integer (only "-" is such a prefix without being one).
func referenceIntegerPrefix(_ s: ArraySlice<UInt8>) -> Bool {
    s.isEmpty || Array(s) == [UInt8(ascii: "-")] || referenceInteger(s) != nil
}

/// Requests as redis-server reads them: a '*' starts a multibulk request, anything else an inline line.
struct ReferenceRequests {
    let bytes: [UInt8]
    let limits: RESPLimits

    func transcript() -> Transcript { Transcript.stepping(bytes.count) { request(at: $0) } }

    func request(at p: Int) -> (ReferenceStep, [[UInt8]]?) {
        bytes[p] == UInt8(ascii: "*") ? multibulk(at: p) : (inline(at: p), nil)
    }

    enum Line {
        case complete(type: UInt8, number: Int64?, next: Int)   // number nil: not an integer, or no '\n' after '\r'
        case incomplete
        case tooBig
    }

    /// A "*<n>" or "$<n>" line at p. redis-server looks for its '\r' with strchr, so a NUL before it hides the line's
    /// end (only the length limit ends the wait); it judges the line once one byte after the '\r' is there.
    func countLine(at p: Int) -> Line {
        var i = p
        while i < bytes.count && bytes[i] != 13 && bytes[i] != 0 { i += 1 }
        guard i < bytes.count, bytes[i] == 13 else {
            return bytes.count - p > limits.maxInlineLength ? .tooBig : .incomplete
        }
        if i - p > limits.maxInlineLength { return .tooBig }
        guard i + 1 < bytes.count else { return .incomplete }
        let type = i == p ? 13 : bytes[p]
        let number = bytes[i + 1] == 10 && i > p ? referenceInteger(bytes[(p + 1)..<i]) : nil
        return .complete(type: type, number: number, next: i + 2)
    }

    func multibulk(at p: Int) -> (ReferenceStep, [[UInt8]]?) {
        let n: Int64
        var i: Int
        switch countLine(at: p) {
        case .incomplete: return (.incomplete, nil)
        case .tooBig: return (.error("Protocol error: too big mbulk count string"), nil)
        case .complete(_, let number, let next):
            guard let number, number <= Int64(limits.maxMultibulkLength) else {
                return (.error("Protocol error: invalid multibulk length"), nil)
            }
            if number <= 0 { return (.frame(end: next, head: describe(CommandHead())), []) }
            n = number
            i = next
        }
        var args: [[UInt8]] = []
        for _ in 0..<n {
            switch countLine(at: i) {
            case .incomplete: return (.incomplete, nil)
            case .tooBig: return (.error("Protocol error: too big bulk count string"), nil)
            case .complete(let type, let number, let next):
                guard type == UInt8(ascii: "$") else {
                    let shown = type == 13 || type == 10 ? " " : Character(Unicode.Scalar(type))
                    return (.error("Protocol error: expected '$', got '\(shown)'"), nil)
                }
                guard let number, number >= 0, number <= Int64(limits.maxBulkLength) else {
                    return (.error("Protocol error: invalid bulk length"), nil)
                }
                let end = next + Int(number)
                if end >= bytes.count { return (.incomplete, nil) }
                if bytes[end] != 13 { return (.error("Protocol error: expected CRLF after bulk string"), nil) }
                if end + 1 >= bytes.count { return (.incomplete, nil) }
                if bytes[end + 1] != 10 { return (.error("Protocol error: expected CRLF after bulk string"), nil) }
                args.append(Array(bytes[next..<end]))
                i = end + 2
            }
        }
        let head = CommandHead(argc: Int(n), isInline: false, name: SmallBytes(lowercasing: args[0]),
                               arg1: args.count > 1 ? SmallBytes(lowercasing: args[1]) : SmallBytes())
        return (.frame(end: i, head: describe(head)), args)
    }

    /// An inline line up to '\n' (strchr: a NUL hides it); blank (C isspace only) is an empty request.
    func inline(at p: Int) -> ReferenceStep {
        var i = p
        while i < bytes.count && bytes[i] != 10 && bytes[i] != 0 { i += 1 }
        guard i < bytes.count, bytes[i] == 10 else {
            return bytes.count - p > limits.maxInlineLength ? .error("Protocol error: too big inline request") : .incomplete
        }
        if i - p > limits.maxInlineLength { return .error("Protocol error: too big inline request") }
        let blank = bytes[p..<i].allSatisfy { [9, 10, 11, 12, 13, 32].contains($0) }
        return .frame(end: i + 1, head: describe(CommandHead(argc: blank ? 0 : 1, isInline: true)))
    }
}

/// Replies by the RESP2/RESP3 grammar, recursively. Simple lines end at the first "\r\n" (a lone '\r' is content);
/// count lines are judged byte by byte (a byte that cannot continue an integer is an error at once).
struct ReferenceReplies {
    let bytes: [UInt8]
    let limits: RESPLimits

    enum Value {
        case done(end: Int, kind: UInt8)
        case incomplete
        case error(String)
    }

    func transcript() -> Transcript { Transcript.stepping(bytes.count) { (step(at: $0), nil) } }

    func first() -> ReferenceStep { bytes.isEmpty ? .incomplete : step(at: 0) }

    func step(at p: Int) -> ReferenceStep {
        switch value(at: p) {
        case .done(let end, let kind): return .frame(end: end, head: show([kind]))
        case .incomplete: return .incomplete
        case .error(let m): return .error(m)
        }
    }

    func value(at p: Int) -> Value {
        guard p < bytes.count else { return .incomplete }
        let type = bytes[p]
        switch type {
        case UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: ":"), UInt8(ascii: "_"), UInt8(ascii: "#"),
             UInt8(ascii: ","), UInt8(ascii: "("):
            var i = p + 1
            while true {
                // Content bytes so far; a '\r' counts only once the byte after it shows it is not the terminator.
                if i >= bytes.count || (bytes[i] == 13 && i + 1 >= bytes.count) {
                    return i - (p + 1) > limits.maxReplyLineLength ? .error("Protocol error: reply line too long") : .incomplete
                }
                if bytes[i] == 13 && bytes[i + 1] == 10 {
                    if i - (p + 1) > limits.maxReplyLineLength { return .error("Protocol error: reply line too long") }
                    return .done(end: i + 2, kind: type)
                }
                i += 1
            }
        case UInt8(ascii: "$"), UInt8(ascii: "!"), UInt8(ascii: "="), UInt8(ascii: "*"), UInt8(ascii: "%"),
             UInt8(ascii: "~"), UInt8(ascii: ">"), UInt8(ascii: "|"):
            let isBulk = type == UInt8(ascii: "$") || type == UInt8(ascii: "!") || type == UInt8(ascii: "=")
            let invalid = isBulk ? "Protocol error: invalid bulk length" : "Protocol error: invalid multibulk length"
            var i = p + 1
            while i < bytes.count && bytes[i] != 13 {
                if !referenceIntegerPrefix(bytes[(p + 1)...i]) { return .error(invalid) }
                if i - p > limits.maxReplyLineLength { return .error("Protocol error: reply line too long") }
                i += 1
            }
            guard i + 1 < bytes.count else { return .incomplete }
            guard bytes[i + 1] == 10, let n = referenceInteger(bytes[(p + 1)..<i]) else { return .error(invalid) }
            var at = i + 2
            if n == -1 && (type == UInt8(ascii: "$") || type == UInt8(ascii: "*")) { return .done(end: at, kind: type) }
            if isBulk {
                guard n >= 0, n <= Int64(limits.maxBulkLength) else { return .error(invalid) }
                let end = at + Int(n)
                if end >= bytes.count { return .incomplete }
                if bytes[end] != 13 { return .error("Protocol error: expected CRLF after bulk string") }
                if end + 1 >= bytes.count { return .incomplete }
                if bytes[end + 1] != 10 { return .error("Protocol error: expected CRLF after bulk string") }
                return .done(end: end + 2, kind: type)
            }
            guard n >= 0, n <= Int64(limits.maxMultibulkLength) else { return .error(invalid) }
            let elements = type == UInt8(ascii: "%") || type == UInt8(ascii: "|") ? 2 * n : n
            for _ in 0..<elements {
                switch value(at: at) {
                case .done(let end, _): at = end
                case let other: return other
                }
            }
            // An attribute annotates the value after it: the reply is that value, and so is its kind.
            return type == UInt8(ascii: "|") ? value(at: at) : .done(end: at, kind: type)
        default:
            let shown = type == 13 || type == 10 ? " " : Character(Unicode.Scalar(type))
            return .error("Protocol error: unexpected reply type '\(shown)'")
        }
    }
}

// MARK: - Showing inputs

func show(_ b: [UInt8]) -> String {
    let text = b.prefix(160).map { c -> String in
        switch c {
        case 13: return "\\r"
        case 10: return "\\n"
        case UInt8(ascii: "\""), UInt8(ascii: "\\"): return "\\" + String(UnicodeScalar(c))
        case 32...126: return String(UnicodeScalar(c))
        default: return "\\x" + String(c >> 4, radix: 16) + String(c & 15, radix: 16)
        }
    }.joined()
    return "\"" + text + (b.count > 160 ? "\"... (\(b.count) bytes)" : "\"")
}

func show(_ l: RESPLimits) -> String {
    l == RESPLimits() ? "the default limits" : "limits bulk \(l.maxBulkLength) multibulk \(l.maxMultibulkLength) "
        + "inline \(l.maxInlineLength) reply line \(l.maxReplyLineLength) depth \(l.maxDepth)"
}
