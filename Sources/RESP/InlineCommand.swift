// Splitting of inline requests ("SET a 'b c'\r\n"), exactly as redis-server's sdssplitargs (sds.c) does it.

public enum InlineCommand {
    /// redis-server's sdssplitargs: spaces separate; "..." with \n \r \t \b \a \\ \" \xHH escapes; '...' with \';
    /// a closing quote must be followed by a space or the end. Trailing "\r\n" or "\n" is stripped first.
    /// Throws RESPProtocolError("Protocol error: unbalanced quotes in request").
    ///
    /// As in C, a NUL byte ends the line (sdssplitargs walks a C string).
    public static func split<C: Collection>(_ line: C) throws(RESPProtocolError) -> [[UInt8]] where C.Element == UInt8 {
        var chars = Array(line)
        if chars.last == 10 {
            chars.removeLast()
            if chars.last == 13 { chars.removeLast() }
        }
        if let nul = chars.firstIndex(of: 0) { chars.removeSubrange(nul...) }
        chars.append(0)   // C string terminator: every p[k] read below stays in bounds up to the terminator
        return try chars.withUnsafeBufferPointer { (s) throws(RESPProtocolError) in try splitCString(s) }
    }

    static func splitCString(_ s: UnsafeBufferPointer<UInt8>) throws(RESPProtocolError) -> [[UInt8]] {
        let unbalanced = RESPProtocolError("Protocol error: unbalanced quotes in request")
        var args: [[UInt8]] = []
        var p = 0
        while true {
            while s[p] != 0 && isCSpace(s[p]) { p += 1 }        // skip blanks
            if s[p] == 0 { return args }
            var current: [UInt8] = []
            var inDoubleQuotes = false
            var inSingleQuotes = false
            var done = false
            while !done {
                let c = s[p]
                if inDoubleQuotes {
                    if c == UInt8(ascii: "\\") && s[p + 1] == UInt8(ascii: "x")
                        && hexValue(s[p + 2]) != nil && hexValue(s[p + 3]) != nil {
                        current.append(hexValue(s[p + 2])! << 4 | hexValue(s[p + 3])!)
                        p += 3
                    } else if c == UInt8(ascii: "\\") && s[p + 1] != 0 {
                        p += 1
                        switch s[p] {
                        case UInt8(ascii: "n"): current.append(10)
                        case UInt8(ascii: "r"): current.append(13)
                        case UInt8(ascii: "t"): current.append(9)
                        case UInt8(ascii: "b"): current.append(8)
                        case UInt8(ascii: "a"): current.append(7)
                        default: current.append(s[p])
                        }
                    } else if c == UInt8(ascii: "\"") {
                        // The closing quote must be followed by a space or nothing at all.
                        if s[p + 1] != 0 && !isCSpace(s[p + 1]) { throw unbalanced }
                        done = true
                    } else if c == 0 {
                        throw unbalanced                         // unterminated quotes
                    } else {
                        current.append(c)
                    }
                } else if inSingleQuotes {
                    if c == UInt8(ascii: "\\") && s[p + 1] == UInt8(ascii: "'") {
                        p += 1
                        current.append(UInt8(ascii: "'"))
                    } else if c == UInt8(ascii: "'") {
                        if s[p + 1] != 0 && !isCSpace(s[p + 1]) { throw unbalanced }
                        done = true
                    } else if c == 0 {
                        throw unbalanced
                    } else {
                        current.append(c)
                    }
                } else {
                    switch c {
                    case 32, 10, 13, 9, 0: done = true            // only these end an unquoted token (not \v \f)
                    case UInt8(ascii: "\""): inDoubleQuotes = true
                    case UInt8(ascii: "'"): inSingleQuotes = true
                    default: current.append(c)
                    }
                }
                if s[p] != 0 { p += 1 }
            }
            args.append(current)
        }
    }

    static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
