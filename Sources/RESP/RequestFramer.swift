// Resumable framer for client requests: finds where each request ends and captures its command head, exactly as
// redis-server's processMultibulkBuffer / processInlineBuffer (networking.c) accept them, without decoding.
//
// redis-server details reproduced here:
// - A request starting with '*' is multibulk, anything else is an inline line.
// - Count lines ("*<n>", "$<n>") are searched for '\r' with strchr(), so a NUL byte before the '\r' means the line
//   never ends: the request waits until more than maxInlineLength bytes arrived, then fails "too big ... string".
//   The inline '\n' search is strchr() as well, with the same effect.
// - A count line is judged only once its '\r' and one more byte are present: first the '$' check, then string2ll.
// Stricter than redis-server (on purpose): the byte after a count line's '\r' must be '\n', and the two bytes after
// a bulk payload must be "\r\n" (redis-server skips them unchecked).

/// What the request framer learned about the last completed request, without decoding it.
public struct CommandHead: Sendable, Equatable {
    /// Number of arguments; 0 = empty request (*0, *-1, blank inline line): NO reply is due.
    public var argc: Int
    /// Inline request: name/arg1 are empty; decode the line with InlineCommand.split.
    public var isInline: Bool
    /// argv[0] lowercased (truncated flag if > 32 bytes).
    public var name: SmallBytes
    /// argv[1] lowercased, if argc > 1 (subcommand: CLIENT SETNAME, ...).
    public var arg1: SmallBytes

    @inlinable
    public init(argc: Int = 0, isInline: Bool = false, name: SmallBytes = SmallBytes(), arg1: SmallBytes = SmallBytes()) {
        self.argc = argc
        self.isInline = isInline
        self.name = name
        self.arg1 = arg1
    }
}

/// Resumable framer for client requests, enforcing exactly what redis-server accepts (networking.c):
/// multibulk ("*<n>\r\n" then n times "$<len>\r\n<len bytes>\r\n") or an inline line ending in "\n".
public struct RequestFramer: Sendable {
    @usableFromInline
    enum Phase: UInt8, Sendable {
        case start              // before the first byte of a request
        case multibulkCount     // inside "*<n>", before its '\r'
        case multibulkCountLF   // after the '\r' of "*<n>"
        case bulkCount          // inside "$<len>", before its '\r'
        case bulkCountLF        // after the '\r' of "$<len>"
        case payload            // `bulkLeft` payload bytes still to come
        case payloadCR          // the '\r' after a payload
        case payloadLF          // the '\n' after a payload
        case inline             // inside an inline line, before its '\n'
        case blocked            // a NUL stopped redis-server's strchr(): only the length limit can end this line
        case failed
    }

    @usableFromInline var phase: Phase = .start
    @usableFromInline var lineLength = 0         // bytes of the current line so far (type byte included)
    @usableFromInline var number = IntegerScanner()
    @usableFromInline var lineType: UInt8 = 0    // first byte of the current "$<len>" line
    @usableFromInline var sawNonSpace = false    // inline line has a non-whitespace byte
    @usableFromInline var argsLeft = 0           // multibulk elements still to come, the current one included
    @usableFromInline var argIndex = 0           // index of the current element
    @usableFromInline var bulkLeft = 0           // payload bytes still to come
    @usableFromInline var error: FramingError = .invalidMultibulkLength  // meaningful in .blocked / .failed
    @usableFromInline var errorByte: UInt8 = 0
    @usableFromInline var current = CommandHead()
    @usableFromInline let maxBulkLength: Int
    @usableFromInline let maxMultibulkLength: Int
    @usableFromInline let maxInlineLength: Int

    public init(limits: RESPLimits = RESPLimits()) {
        maxBulkLength = limits.maxBulkLength
        maxMultibulkLength = limits.maxMultibulkLength
        maxInlineLength = limits.maxInlineLength
    }

    /// Valid after `.frame`: the head of the request that just completed.
    @inlinable
    public var head: CommandHead { current }

    /// True when no partial request is buffered (the last `next` ended exactly at a frame boundary).
    @inlinable
    public var isAtFrameBoundary: Bool { phase == .start }   // false once failed

    /// Scan bytes[offset...]. Bytes consumed by earlier calls are remembered in the state (the caller keeps them);
    /// only NEW bytes are passed each time, each byte exactly once.
    public mutating func next(_ bytes: UnsafeRawBufferPointer, from offset: Int) -> FrameResult {
        if phase == .failed { return .error(error.protocolError(byte: errorByte)) }
        let end = bytes.count
        guard offset < end, let base = bytes.baseAddress else { return .needMore }
        var i = offset

        while i < end {
            switch phase {
            case .start:
                current = CommandHead()
                if base.load(fromByteOffset: i, as: UInt8.self) == UInt8(ascii: "*") {
                    if let (n, next) = quickCount(base, at: i, end: end), next &- i &- 2 <= maxInlineLength,
                       n > 0, n <= maxMultibulkLength {
                        i = next
                        current.argc = n
                        argsLeft = n
                        argIndex = 0
                        lineLength = 0
                        phase = .bulkCount
                        continue
                    }
                    i &+= 1
                    lineLength = 1
                    number = IntegerScanner()
                    phase = .multibulkCount
                } else {
                    current.isInline = true
                    lineLength = 0
                    sawNonSpace = false
                    phase = .inline
                }

            case .multibulkCount:
                while i < end {
                    let c = base.load(fromByteOffset: i, as: UInt8.self)
                    i &+= 1
                    if c == 13 {
                        phase = .multibulkCountLF
                        break
                    }
                    lineLength &+= 1
                    if c == 0 {
                        if let failure = block(.tooBigMultibulkCount) { return failure }
                        break
                    }
                    if lineLength > maxInlineLength { return fail(.tooBigMultibulkCount) }
                    number.feed(c)
                }

            case .multibulkCountLF:
                let c = base.load(fromByteOffset: i, as: UInt8.self)
                i &+= 1
                guard let n = number.value, n <= maxMultibulkLength, c == 10 else {
                    return fail(.invalidMultibulkLength)
                }
                if n <= 0 {
                    phase = .start                 // empty request: argc 0, no reply is due
                    return .frame(end: i)
                }
                current.argc = Int(n)
                argsLeft = Int(n)
                argIndex = 0
                lineLength = 0
                phase = .bulkCount

            case .bulkCount:
                if lineLength == 0, base.load(fromByteOffset: i, as: UInt8.self) == UInt8(ascii: "$"),
                   let (n, next) = quickCount(base, at: i, end: end), next &- i &- 2 <= maxInlineLength, n <= maxBulkLength {
                    i = next
                    startPayload(n)
                    continue
                }
                while i < end {
                    let c = base.load(fromByteOffset: i, as: UInt8.self)
                    i &+= 1
                    if c == 13 {
                        if lineLength == 0 { lineType = 13 }
                        phase = .bulkCountLF
                        break
                    }
                    lineLength &+= 1
                    if c == 0 {
                        if let failure = block(.tooBigBulkCount) { return failure }
                        break
                    }
                    if lineLength > maxInlineLength { return fail(.tooBigBulkCount) }
                    if lineLength == 1 {
                        lineType = c
                        number = IntegerScanner()
                    } else {
                        number.feed(c)
                    }
                }

            case .bulkCountLF:
                let c = base.load(fromByteOffset: i, as: UInt8.self)
                i &+= 1
                if lineType != UInt8(ascii: "$") { return fail(.expectedDollar, byte: lineType) }
                guard let n = number.value, n >= 0, n <= maxBulkLength, c == 10 else {
                    return fail(.invalidBulkLength)
                }
                startPayload(Int(n))

            case .payload:
                let n = min(bulkLeft, end &- i)
                if argIndex < 2 {
                    let chunk = UnsafeRawBufferPointer(start: base + i, count: n)
                    if argIndex == 0 { current.name.append(lowercasing: chunk) } else { current.arg1.append(lowercasing: chunk) }
                }
                i &+= n
                bulkLeft &-= n
                if bulkLeft != 0 { break }
                // Fast path: the payload's CR LF is here too.
                if end &- i >= 2 {
                    guard base.load(fromByteOffset: i, as: UInt8.self) == 13,
                          base.load(fromByteOffset: i &+ 1, as: UInt8.self) == 10 else { return fail(.expectedCRLF) }
                    i &+= 2
                    if let done = argumentCompleted(at: i) { return done }
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
                if let done = argumentCompleted(at: i) { return done }

            case .inline:
                while i < end {
                    let c = base.load(fromByteOffset: i, as: UInt8.self)
                    i &+= 1
                    if c == 10 {
                        current.argc = sawNonSpace ? 1 : 0   // a blank line is an empty request
                        phase = .start
                        return .frame(end: i)
                    }
                    lineLength &+= 1
                    if c == 0 {
                        if let failure = block(.tooBigInline) { return failure }
                        break
                    }
                    if lineLength > maxInlineLength { return fail(.tooBigInline) }
                    if !sawNonSpace && !isCSpace(c) { sawNonSpace = true }
                }

            case .blocked:
                let available = end &- i
                if available > maxInlineLength &- lineLength { return fail(error) }
                lineLength &+= available
                i = end

            case .failed:
                return .error(error.protocolError(byte: errorByte))
            }
        }
        return .needMore
    }

    /// A valid "$<n>\r\n" line was read: the payload (and its CR LF) follows.
    @inlinable
    mutating func startPayload(_ n: Int) {
        bulkLeft = n
        if n > SmallBytes.capacity {
            if argIndex == 0 { current.name.wasTruncated = true } else if argIndex == 1 { current.arg1.wasTruncated = true }
        }
        phase = n == 0 ? .payloadCR : .payload
    }

    /// An argument's CR LF ended at `end`: the request is complete or the next argument follows.
    @inlinable
    mutating func argumentCompleted(at end: Int) -> FrameResult? {
        argsLeft &-= 1
        if argsLeft == 0 {
            phase = .start
            return .frame(end: end)
        }
        argIndex &+= 1
        lineLength = 0
        phase = .bulkCount
        return nil
    }

    /// A NUL byte (already counted in lineLength) hides the rest of the line from redis-server's strchr().
    @usableFromInline
    mutating func block(_ tooBig: FramingError) -> FrameResult? {
        error = tooBig
        if lineLength > maxInlineLength { return fail(tooBig) }
        phase = .blocked
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
