// Resumable framer for server replies (RESP2 and RESP3): finds where each top-level reply ends and its type byte.
//
// Counting instead of a stack: `remaining` is the number of values still expected, not yet started. It starts at 1;
// every value header subtracts 1; "*n", "~n", ">n" add n, "%n" adds 2n and an attribute "|n" adds 2n without
// subtracting (it annotates the value that follows and is not itself counted). The reply is complete when a value
// ends with `remaining == 0`. Nothing here depends on how deep aggregates nest, so any depth the server sends is
// followed (a Lua script can return thousands of nested arrays): the server is not the adversary, and a reply framed
// wrongly would cost every command in flight on its connection.
// The reply's kind is the type of its first header; after a leading attribute, of the first header read while
// `remaining` is 1 again: headers inside the attribute are read with at least 2 (the attribute's element and the
// value it annotates), so that is the annotated value.

/// Resumable framer for server replies: RESP2 and RESP3 (+ - : $ * _ # , ( ! = % ~ > |), no stack, no depth limit.
public struct ReplyFramer: Sendable {
    @usableFromInline
    enum Phase: UInt8, Sendable {
        case header       // the type byte of the next value
        case line         // a simple line (+ - : _ # , (), before its "\r\n"
        case lineCR       // a simple line whose last byte so far was '\r'
        case count        // a count line ($ ! = * % ~ > |), before its '\r'
        case countLF      // after the '\r' of a count line
        case payload      // `bulkLeft` payload bytes still to come
        case payloadCR
        case payloadLF
        case failed
    }

    @usableFromInline var phase: Phase = .header
    @usableFromInline var remaining = 1              // values still expected in this reply
    @usableFromInline var type: UInt8 = 0            // type byte of the value being read
    @usableFromInline var topKind: UInt8 = 0
    @usableFromInline var kindPending = false        // a leading attribute was read: the reply's kind is still to come
    @usableFromInline var inFrame = false            // a reply has started (even if only its attribute so far)
    @usableFromInline var lineLength = 0
    @usableFromInline var number = IntegerScanner()
    @usableFromInline var bulkLeft = 0
    @usableFromInline var error: FramingError = .unexpectedReplyType
    @usableFromInline var errorByte: UInt8 = 0
    @usableFromInline let maxBulkLength: Int
    @usableFromInline let maxMultibulkLength: Int
    @usableFromInline let maxLineLength: Int

    public init(limits: RESPLimits = RESPLimits()) {
        maxBulkLength = limits.maxBulkLength
        maxMultibulkLength = limits.maxMultibulkLength
        maxLineLength = limits.maxReplyLineLength
    }

    /// Valid after `.frame`: type byte of the top-level value that completed (attributes skipped, i.e. the byte of
    /// the value that followed a leading '|' attribute), e.g. UInt8(ascii: "-") for an error, ">" for a push.
    @inlinable
    public var kind: UInt8 { topKind }

    /// True when no partial reply is buffered (the last `next` ended exactly at a frame boundary).
    @inlinable
    public var isAtFrameBoundary: Bool { !inFrame && phase != .failed }

    public mutating func next(_ bytes: UnsafeRawBufferPointer, from offset: Int) -> FrameResult {
        if phase == .failed { return .error(error.protocolError(byte: errorByte)) }
        let end = bytes.count
        guard offset < end, let base = bytes.baseAddress else { return .needMore }
        var i = offset

        while i < end {
            switch phase {
            case .header:
                let c = base.load(fromByteOffset: i, as: UInt8.self)
                i &+= 1
                let isLine: Bool
                switch c {
                case UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: ":"), UInt8(ascii: "_"),
                     UInt8(ascii: "#"), UInt8(ascii: ","), UInt8(ascii: "("):
                    isLine = true
                case UInt8(ascii: "$"), UInt8(ascii: "!"), UInt8(ascii: "="),
                     UInt8(ascii: "*"), UInt8(ascii: "%"), UInt8(ascii: "~"), UInt8(ascii: ">"), UInt8(ascii: "|"):
                    isLine = false
                default:
                    return fail(.unexpectedReplyType, byte: c)
                }
                type = c
                if c != UInt8(ascii: "|") {              // an attribute is not counted and is not the reply's kind
                    if !inFrame {
                        topKind = c                      // the reply's first header: its kind (the usual case)
                    } else if kindPending && remaining == 1 {
                        topKind = c                      // the value a leading attribute annotates
                        kindPending = false
                    }
                    remaining &-= 1
                } else if !inFrame {
                    kindPending = true                   // a leading attribute: the kind comes after it
                }
                inFrame = true
                if isLine {
                    lineLength = 0
                    phase = .line
                } else if let (n, next) = quickCount(base, at: i &- 1, end: end), next &- 2 &- i <= maxLineLength {
                    i = next                              // fast path: the whole count line is here
                    if let done = countRead(n, at: i) { return done }
                } else {
                    lineLength = 0
                    number = IntegerScanner()
                    phase = .count
                }

            case .line:
                guard let cr = firstIndex(of: 13, in: base, from: i, to: end) else {
                    lineLength &+= end &- i
                    if lineLength > maxLineLength { return fail(.replyLineTooLong) }
                    i = end
                    break
                }
                lineLength &+= cr &- i
                if lineLength > maxLineLength { return fail(.replyLineTooLong) }
                i = cr &+ 1
                if i == end {
                    phase = .lineCR
                } else if base.load(fromByteOffset: i, as: UInt8.self) == 10 {
                    i &+= 1
                    if let done = valueCompleted(at: i) { return done }
                } else {
                    lineLength &+= 1                  // a lone '\r' is part of the line (as in hiredis)
                    if lineLength > maxLineLength { return fail(.replyLineTooLong) }
                }

            case .lineCR:
                if base.load(fromByteOffset: i, as: UInt8.self) == 10 {
                    i &+= 1
                    if let done = valueCompleted(at: i) { return done }
                } else {
                    lineLength &+= 1                  // the '\r' was content; rescan this byte as part of the line
                    if lineLength > maxLineLength { return fail(.replyLineTooLong) }
                    phase = .line
                }

            case .count:
                while i < end {
                    let c = base.load(fromByteOffset: i, as: UInt8.self)
                    i &+= 1
                    if c == 13 {
                        phase = .countLF
                        break
                    }
                    lineLength &+= 1
                    number.feed(c)
                    if number.invalid { return fail(invalidLengthError) }
                    if lineLength > maxLineLength { return fail(.replyLineTooLong) }
                }

            case .countLF:
                let c = base.load(fromByteOffset: i, as: UInt8.self)
                i &+= 1
                guard c == 10, let n = number.value else { return fail(invalidLengthError) }
                if let done = countRead(Int(n), at: i) { return done }

            case .payload:
                let n = min(bulkLeft, end &- i)
                i &+= n
                bulkLeft &-= n
                if bulkLeft != 0 { break }
                if end &- i >= 2 {                        // fast path: the CR LF is here too
                    guard base.load(fromByteOffset: i, as: UInt8.self) == 13,
                          base.load(fromByteOffset: i &+ 1, as: UInt8.self) == 10 else { return fail(.expectedCRLF) }
                    i &+= 2
                    if let done = valueCompleted(at: i) { return done }
                } else {
                    phase = .payloadCR
                }

            case .payloadCR:
                guard base.load(fromByteOffset: i, as: UInt8.self) == 13 else { return fail(.expectedCRLF) }
                i &+= 1
                phase = .payloadLF

            case .payloadLF:
                guard base.load(fromByteOffset: i, as: UInt8.self) == 10 else { return fail(.expectedCRLF) }
                i &+= 1
                if let done = valueCompleted(at: i) { return done }

            case .failed:
                return .error(error.protocolError(byte: errorByte))
            }
        }
        return .needMore
    }

    /// The count line of a '$' '!' '=' '*' '%' '~' '>' '|' value (in `type`) was read up to `i`.
    /// Returns the frame or error to report, or nil with the phase set to go on.
    @inlinable
    mutating func countRead(_ n: Int, at i: Int) -> FrameResult? {
        switch type {
        case UInt8(ascii: "$"), UInt8(ascii: "!"), UInt8(ascii: "="):
            if n == -1 && type == UInt8(ascii: "$") { return valueCompleted(at: i) }
            guard n >= 0, n <= maxBulkLength else { return fail(.invalidBulkLength) }
            bulkLeft = n
            phase = n == 0 ? .payloadCR : .payload
            return nil
        default:
            if n == -1 && type == UInt8(ascii: "*") { return valueCompleted(at: i) }
            guard n >= 0, n <= maxMultibulkLength else { return fail(.invalidMultibulkLength) }
            let paired = type == UInt8(ascii: "%") || type == UInt8(ascii: "|")
            let (elements, overflow1) = paired ? n.multipliedReportingOverflow(by: 2) : (n, false)
            let (total, overflow2) = remaining.addingReportingOverflow(elements)
            if overflow1 || overflow2 { return fail(.invalidMultibulkLength) }
            if n == 0 {
                // Nothing opens. An empty attribute annotates the next value; an empty aggregate is a value.
                if type == UInt8(ascii: "|") {
                    phase = .header
                    return nil
                }
                return valueCompleted(at: i)
            }
            remaining = total
            phase = .header
            return nil
        }
    }

    @usableFromInline
    var invalidLengthError: FramingError {
        switch type {
        case UInt8(ascii: "$"), UInt8(ascii: "!"), UInt8(ascii: "="): return .invalidBulkLength
        default: return .invalidMultibulkLength
        }
    }

    /// A value ended at `end`; returns the frame when the reply is complete.
    @inlinable
    mutating func valueCompleted(at end: Int) -> FrameResult? {
        phase = .header
        if remaining == 0 {
            remaining = 1
            inFrame = false
            kindPending = false
            return .frame(end: end)
        }
        return nil
    }

    @usableFromInline
    mutating func fail(_ e: FramingError, byte: UInt8 = 0) -> FrameResult {
        phase = .failed
        error = e
        errorByte = byte
        return .error(e.protocolError(byte: byte))
    }
}
