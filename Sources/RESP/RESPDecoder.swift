// Full decoding of one RESP value (rare paths and tests). Frames exactly where ReplyFramer does for valid input,
// with the same limits and error messages, and additionally checks the contents of lines (integers, booleans...).

public enum RESPDecoder {
    /// The deepest nesting decoded (the reader recurses once per level); `RESPLimits.maxDepth` above this acts as it.
    /// Respool decodes only its own internal replies (handshake, SCAN, INFO, COMMAND, pub/sub frames); client replies
    /// are framed, never decoded, at any depth.
    public static let depthCapacity = 128

    /// Decode one complete value from the start of `bytes`; nil when incomplete; throws RESPProtocolError when malformed.
    public static func decode(_ bytes: UnsafeRawBufferPointer, limits: RESPLimits = RESPLimits()) throws(RESPProtocolError) -> (value: RESPValue, consumed: Int)? {
        var reader = Reader(bytes: bytes, limits: limits)
        do throws(DecodeFailure) {
            let value = try reader.value(depth: 0)
            return (value, reader.position)
        } catch {
            switch error {
            case .incomplete: return nil
            case .malformed(let e): throw e
            }
        }
    }

    public static func decode(_ bytes: [UInt8], limits: RESPLimits = RESPLimits()) throws(RESPProtocolError) -> (value: RESPValue, consumed: Int)? {
        let result = bytes.withUnsafeBytes { raw in
            Result { () throws(RESPProtocolError) in try decode(raw, limits: limits) }
        }
        return try result.get()
    }

    /// The arguments of one complete multibulk request (as framed by RequestFramer). An inline request is split with
    /// `InlineCommand.split`. Malformed input yields the arguments read before the problem.
    public static func arguments(ofRequest bytes: UnsafeRawBufferPointer) -> [[UInt8]] {
        guard let first = bytes.first else { return [] }
        if first != UInt8(ascii: "*") {
            return (try? InlineCommand.split(bytes)) ?? []
        }
        var args: [[UInt8]] = []
        var i = 1
        func readCount() -> Int? {
            var scanner = IntegerScanner()
            while i < bytes.count, bytes[i] != 13 {
                scanner.feed(bytes[i])
                i += 1
            }
            i += 2
            guard let v = scanner.value, i <= bytes.count else { return nil }
            return Int(v)
        }
        guard let n = readCount(), n > 0 else { return [] }
        args.reserveCapacity(min(n, 1024))
        for _ in 0..<n {
            guard i < bytes.count, bytes[i] == UInt8(ascii: "$") else { break }
            i += 1
            guard let len = readCount(), len >= 0, len <= bytes.count - i - 2 else { break }
            args.append(Array(bytes[i..<(i + len)]))
            i += len + 2
        }
        return args
    }
}

enum DecodeFailure: Error {
    case incomplete
    case malformed(RESPProtocolError)
}

/// Recursive-descent reader over one buffer.
struct Reader {
    let bytes: UnsafeRawBufferPointer
    let limits: RESPLimits
    let maxDepth: Int
    var position = 0

    init(bytes: UnsafeRawBufferPointer, limits: RESPLimits) {
        self.bytes = bytes
        self.limits = limits
        self.maxDepth = min(limits.maxDepth, RESPDecoder.depthCapacity)
    }

    static func bad(_ message: String) -> DecodeFailure {
        .malformed(RESPProtocolError("Protocol error: " + message))
    }

    static func bad(_ e: FramingError, byte: UInt8 = 0) -> DecodeFailure {
        .malformed(e.protocolError(byte: byte))
    }

    mutating func value(depth: Int) throws(DecodeFailure) -> RESPValue {
        guard position < bytes.count else { throw .incomplete }
        let type = bytes[position]
        position += 1
        switch type {
        case UInt8(ascii: "+"): return .simpleString(try line())
        case UInt8(ascii: "-"): return .error(try line())
        case UInt8(ascii: ":"): return .integer(try integer(line()))
        case UInt8(ascii: "_"):
            guard try line().isEmpty else { throw Self.bad("invalid null value") }
            return .null
        case UInt8(ascii: "#"):
            let l = try line()
            if l == [UInt8(ascii: "t")] { return .boolean(true) }
            if l == [UInt8(ascii: "f")] { return .boolean(false) }
            throw Self.bad("invalid boolean value")
        case UInt8(ascii: ","): return .double(try line())
        case UInt8(ascii: "("):
            let l = try line()
            var digits = l[...]
            if digits.first == UInt8(ascii: "-") || digits.first == UInt8(ascii: "+") { digits = digits.dropFirst() }
            guard !digits.isEmpty, digits.allSatisfy({ $0 &- 48 < 10 }) else { throw Self.bad("invalid big number") }
            return .bigNumber(l)
        case UInt8(ascii: "$"), UInt8(ascii: "!"), UInt8(ascii: "="):
            let n = try count(type)
            if n == -1 && type == UInt8(ascii: "$") { return .bulkString(nil) }
            guard n >= 0, n <= limits.maxBulkLength else { throw Self.bad(.invalidBulkLength) }
            guard bytes.count - position >= n + 2 else {
                // The payload is skipped unchecked; only a wrong CRLF already present is an error.
                if bytes.count - position == n + 1, bytes[position + n] != 13 { throw Self.bad(.expectedCRLF) }
                throw .incomplete
            }
            let payload = Array(bytes[position..<(position + n)])
            guard bytes[position + n] == 13, bytes[position + n + 1] == 10 else { throw Self.bad(.expectedCRLF) }
            position += n + 2
            switch type {
            case UInt8(ascii: "$"): return .bulkString(payload)
            case UInt8(ascii: "!"): return .bulkError(payload)
            default:
                guard payload.count >= 4, payload[3] == UInt8(ascii: ":") else { throw Self.bad("invalid verbatim string") }
                return .verbatim(format: Array(payload[0..<3]), text: Array(payload[4...]))
            }
        case UInt8(ascii: "*"), UInt8(ascii: "%"), UInt8(ascii: "~"), UInt8(ascii: ">"), UInt8(ascii: "|"):
            let n = try count(type)
            if n == -1 && type == UInt8(ascii: "*") { return .array(nil) }
            guard n >= 0, n <= limits.maxMultibulkLength else { throw Self.bad(.invalidMultibulkLength) }
            if depth >= maxDepth { throw Self.bad(.nestingTooDeep) }
            let paired = type == UInt8(ascii: "%") || type == UInt8(ascii: "|")
            let (total, overflow) = paired ? n.multipliedReportingOverflow(by: 2) : (n, false)
            if overflow { throw Self.bad(.invalidMultibulkLength) }
            var elements: [RESPValue] = []
            elements.reserveCapacity(min(total, bytes.count - position))
            for _ in 0..<total {
                elements.append(try value(depth: depth + 1))
            }
            switch type {
            case UInt8(ascii: "*"): return .array(elements)
            case UInt8(ascii: "%"): return .map(elements)
            case UInt8(ascii: "~"): return .set(elements)
            case UInt8(ascii: ">"): return .push(elements)
            default: return .attribute(elements, try value(depth: depth))
            }
        default:
            throw Self.bad(.unexpectedReplyType, byte: type)
        }
    }

    /// A simple line up to the first "\r\n" (a lone '\r' is content), without the terminator.
    mutating func line() throws(DecodeFailure) -> [UInt8] {
        let start = position
        var i = start
        while true {
            guard i < bytes.count else {
                if i - start > limits.maxReplyLineLength { throw Self.bad(.replyLineTooLong) }
                throw .incomplete
            }
            if bytes[i] == 13 {
                if i - start > limits.maxReplyLineLength { throw Self.bad(.replyLineTooLong) }
                guard i + 1 < bytes.count else { throw .incomplete }
                if bytes[i + 1] == 10 { break }
            }
            i += 1
        }
        if i - start > limits.maxReplyLineLength { throw Self.bad(.replyLineTooLong) }
        position = i + 2
        return Array(bytes[start..<i])
    }

    /// A count line of a value of type `type`, checked as ReplyFramer checks it.
    mutating func count(_ type: UInt8) throws(DecodeFailure) -> Int {
        let invalid: FramingError = type == UInt8(ascii: "$") || type == UInt8(ascii: "!") || type == UInt8(ascii: "=")
            ? .invalidBulkLength : .invalidMultibulkLength
        var scanner = IntegerScanner()
        while true {
            guard position < bytes.count else { throw .incomplete }
            let c = bytes[position]
            position += 1
            if c == 13 { break }
            scanner.feed(c)
            if scanner.invalid { throw Self.bad(invalid) }
            if scanner.length > limits.maxReplyLineLength { throw Self.bad(.replyLineTooLong) }
        }
        guard position < bytes.count else { throw .incomplete }
        let lf = bytes[position]
        position += 1
        guard lf == 10, let v = scanner.value else { throw Self.bad(invalid) }
        return Int(v)
    }

    func integer(_ l: [UInt8]) throws(DecodeFailure) -> Int64 {
        var scanner = IntegerScanner()
        for c in l { scanner.feed(c) }
        guard let v = scanner.value else { throw Self.bad("invalid integer value") }
        return v
    }
}
