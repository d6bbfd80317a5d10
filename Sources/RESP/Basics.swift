// Limits, errors and framing outcomes shared by the RESP framers, decoder and writer.

/// Protocol limits, named after the redis-server settings they mirror.
public struct RESPLimits: Sendable, Equatable {
    /// Largest bulk string accepted (Redis `proto-max-bulk-len`).
    public var maxBulkLength: Int
    /// Largest element count of one aggregate (Redis 7 accepts up to INT_MAX).
    public var maxMultibulkLength: Int
    /// Longest inline request line, and longest '*'/'$' count line of a request (Redis PROTO_INLINE_MAX_SIZE).
    public var maxInlineLength: Int
    /// Longest simple line inside a reply (+ - : _ # , ( and count lines).
    public var maxReplyLineLength: Int
    /// Deepest nesting of aggregates `RESPDecoder` builds values for (it recurses; at most
    /// `RESPDecoder.depthCapacity`). `ReplyFramer` follows any depth and ignores this.
    public var maxDepth: Int

    public init(maxBulkLength: Int = 512 << 20, maxMultibulkLength: Int = Int(Int32.max),
                maxInlineLength: Int = 64 << 10, maxReplyLineLength: Int = 1 << 20, maxDepth: Int = 64) {
        self.maxBulkLength = maxBulkLength
        self.maxMultibulkLength = maxMultibulkLength
        self.maxInlineLength = maxInlineLength
        self.maxReplyLineLength = maxReplyLineLength
        self.maxDepth = maxDepth
    }
}

/// A protocol violation; `message` is what goes after "-ERR " (e.g. "Protocol error: invalid bulk length").
public struct RESPProtocolError: Error, Equatable, Sendable, CustomStringConvertible {
    public let message: String

    public init(_ message: String) {
        self.message = message
    }

    /// "-ERR <message>\r\n", with any CR or LF inside the message turned into spaces (as redis-server does).
    public var replyBytes: [UInt8] {
        var out: [UInt8] = Array("-ERR ".utf8)
        out.reserveCapacity(message.utf8.count + 7)
        for b in message.utf8 {
            out.append(b == 13 || b == 10 ? 32 : b)
        }
        out.append(13)
        out.append(10)
        return out
    }

    public var description: String { message }
}

/// The outcome of feeding bytes to a framer.
public enum FrameResult: Equatable, Sendable {
    /// Every byte from `offset` on was consumed into the partial frame.
    case needMore
    /// The frame that was in progress ends at `end` (exclusive index into this buffer).
    case frame(end: Int)
    /// The stream is broken; the framer must not be used again (it keeps answering this error).
    case error(RESPProtocolError)
}

/// The errors the framers can report, kept as a byte in their state so the state stays plain integers;
/// the message is only built when the error is reported.
@usableFromInline
enum FramingError: UInt8, Sendable {
    case tooBigMultibulkCount
    case invalidMultibulkLength
    case expectedDollar
    case tooBigBulkCount
    case invalidBulkLength
    case expectedCRLF
    case tooBigInline
    case unexpectedReplyType
    case replyLineTooLong
    case nestingTooDeep

    /// The message for this error; `byte` is the offending byte for `expectedDollar` and `unexpectedReplyType`.
    @usableFromInline
    func protocolError(byte: UInt8) -> RESPProtocolError {
        switch self {
        case .tooBigMultibulkCount: return RESPProtocolError("Protocol error: too big mbulk count string")
        case .invalidMultibulkLength: return RESPProtocolError("Protocol error: invalid multibulk length")
        case .expectedDollar: return RESPProtocolError("Protocol error: expected '$', got '\(printable(byte))'")
        case .tooBigBulkCount: return RESPProtocolError("Protocol error: too big bulk count string")
        case .invalidBulkLength: return RESPProtocolError("Protocol error: invalid bulk length")
        case .expectedCRLF: return RESPProtocolError("Protocol error: expected CRLF after bulk string")
        case .tooBigInline: return RESPProtocolError("Protocol error: too big inline request")
        case .unexpectedReplyType: return RESPProtocolError("Protocol error: unexpected reply type '\(printable(byte))'")
        case .replyLineTooLong: return RESPProtocolError("Protocol error: reply line too long")
        case .nestingTooDeep: return RESPProtocolError("Protocol error: nesting too deep")
        }
    }
}

/// The byte as redis-server's "%c" prints it in an error reply: CR and LF become spaces (addReplyErrorFormat).
@usableFromInline
func printable(_ byte: UInt8) -> Character {
    byte == 13 || byte == 10 ? " " : Character(Unicode.Scalar(byte))
}

/// Incremental version of redis-server's `string2ll` (util.c): an optional '-', then "0" alone or a digit 1-9
/// followed by digits; no '+', no spaces, at most 20 characters, within Int64. Fed one byte at a time so a number
/// can be split across reads.
@usableFromInline
struct IntegerScanner: Sendable {
    @usableFromInline var length: Int = 0          // characters fed
    @usableFromInline var magnitude: UInt64 = 0
    @usableFromInline var negative = false
    @usableFromInline var leadingZero = false     // the first digit was '0' (valid only as "0" alone)
    @usableFromInline var invalid = false

    @inlinable
    init() {}

    @inlinable
    mutating func feed(_ c: UInt8) {
        length &+= 1
        if invalid { return }
        let digit = c &- 48
        if length >= 21 {                            // LONG_STR_SIZE: "excessive length is not a valid number"
            invalid = true
        } else if length == 1 {
            if c == 45 { negative = true } else if digit == 0 { leadingZero = true } else if digit <= 9 {
                magnitude = UInt64(digit)
            } else { invalid = true }
        } else if leadingZero || digit > 9 || (negative && length == 2 && digit == 0) {
            invalid = true
        } else {
            let (m, o1) = magnitude.multipliedReportingOverflow(by: 10)
            let (a, o2) = m.addingReportingOverflow(UInt64(digit))
            // Out of Int64's range: no further byte can make it valid, so say so now (a reply's count line is
            // judged byte by byte).
            if o1 || o2 || a > UInt64(Int64.max) &+ (negative ? 1 : 0) { invalid = true } else { magnitude = a }
        }
    }

    /// The number, or nil when what was fed is not a valid integer.
    @inlinable
    var value: Int64? {
        if invalid || length == 0 || (negative && length == 1) { return nil }
        if negative {
            if magnitude > UInt64(Int64.max) + 1 { return nil }
            return magnitude == UInt64(Int64.max) + 1 ? Int64.min : -Int64(magnitude)
        }
        return magnitude > UInt64(Int64.max) ? nil : Int64(magnitude)
    }
}

/// isspace() in the C locale: space, \t, \n, \v, \f, \r.
@inlinable
func isCSpace(_ c: UInt8) -> Bool {
    c == 32 || (c >= 9 && c <= 13)
}

@inlinable
func asciiLower(_ c: UInt8) -> UInt8 {
    c &- 65 < 26 ? c | 0x20 : c
}

/// Index of the first `target` byte in base[from..<end], or nil. Eight bytes at a time (SWAR), then bytewise.
@inlinable
func firstIndex(of target: UInt8, in base: UnsafeRawPointer, from: Int, to end: Int) -> Int? {
    var i = from
    let pattern = UInt64(target) &* 0x0101_0101_0101_0101
    while end &- i >= 8 {
        let x = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: i, as: UInt64.self)) ^ pattern
        let hit = (x &- 0x0101_0101_0101_0101) & ~x & 0x8080_8080_8080_8080
        if hit != 0 {
            // The lowest flagged byte is always a true match (false positives only sit above a real zero byte).
            return i &+ (hit.trailingZeroBitCount >> 3)
        }
        i &+= 8
    }
    while i < end {
        if base.load(fromByteOffset: i, as: UInt8.self) == target { return i }
        i &+= 1
    }
    return nil
}

/// Fast path for a count line that is complete in the buffer: the type byte at `i`, then a plain non-negative
/// decimal ("0" or no leading zero, at most 18 digits), then "\r\n". Returns the number and the index after the
/// "\r\n", or nil to let the byte-by-byte scanner handle (and judge) the line.
@inlinable
func quickCount(_ base: UnsafeRawPointer, at i: Int, end: Int) -> (value: Int, next: Int)? {
    var j = i &+ 1
    let last = min(end, j &+ 18)
    guard j < last else { return nil }
    let first = base.load(fromByteOffset: j, as: UInt8.self) &- 48
    guard first < 10 else { return nil }
    var value = Int(first)
    j &+= 1
    while j < last {
        let d = base.load(fromByteOffset: j, as: UInt8.self) &- 48
        if d >= 10 { break }
        if value == 0 { return nil }           // leading zero: invalid, reported by the slow path
        value = value &* 10 &+ Int(d)
        j &+= 1
    }
    guard end &- j >= 2, base.load(fromByteOffset: j, as: UInt8.self) == 13,
          base.load(fromByteOffset: j &+ 1, as: UInt8.self) == 10 else { return nil }
    return (value, j &+ 2)
}
