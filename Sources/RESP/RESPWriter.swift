// Builds replies (for commands answered locally) and commands (for handshakes), RESP2 or RESP3.

/// Builds replies and commands. Protocol-aware for RESP2/RESP3 differences.
public struct RESPWriter: Sendable {
    public var bytes: [UInt8]
    public var proto: Int               // 2 or 3

    public init(proto: Int = 2) {
        self.bytes = []
        self.proto = proto
    }

    /// "+<s>\r\n"; CR and LF inside `s` become spaces so the reply stays one line.
    public mutating func simpleString(_ s: String) {
        line(UInt8(ascii: "+"), s)
    }

    /// "-<s>\r\n" (s includes the code, e.g. "ERR ..."); CR and LF inside `s` become spaces (as redis-server does).
    public mutating func error(_ s: String) {
        line(UInt8(ascii: "-"), s)
    }

    public mutating func integer(_ n: Int) {
        header(UInt8(ascii: ":"), n)
    }

    public mutating func bulk(_ b: [UInt8]) {
        header(UInt8(ascii: "$"), b.count)
        bytes.append(contentsOf: b)
        crlf()
    }

    public mutating func bulk(_ s: String) {
        header(UInt8(ascii: "$"), s.utf8.count)
        bytes.append(contentsOf: s.utf8)
        crlf()
    }

    /// RESP2 "$-1\r\n", RESP3 "_\r\n".
    public mutating func null() {
        if proto >= 3 { bytes.append(contentsOf: [UInt8(ascii: "_"), 13, 10]) } else { header(UInt8(ascii: "$"), -1) }
    }

    /// RESP2 "*-1\r\n", RESP3 "_\r\n".
    public mutating func nullArray() {
        if proto >= 3 { bytes.append(contentsOf: [UInt8(ascii: "_"), 13, 10]) } else { header(UInt8(ascii: "*"), -1) }
    }

    public mutating func arrayHeader(_ n: Int) {
        header(UInt8(ascii: "*"), n)
    }

    /// RESP3 "%n", RESP2 "*(2n)".
    public mutating func mapHeader(_ n: Int) {
        if proto >= 3 { header(UInt8(ascii: "%"), n) } else { header(UInt8(ascii: "*"), 2 * n) }
    }

    /// RESP3 "~n", RESP2 "*n".
    public mutating func setHeader(_ n: Int) {
        header(proto >= 3 ? UInt8(ascii: "~") : UInt8(ascii: "*"), n)
    }

    /// RESP3 ">n", RESP2 "*n".
    public mutating func pushHeader(_ n: Int) {
        header(proto >= 3 ? UInt8(ascii: ">") : UInt8(ascii: "*"), n)
    }

    /// RESP3 "#t"/"#f", RESP2 ":1"/":0".
    public mutating func boolean(_ b: Bool) {
        if proto >= 3 {
            bytes.append(contentsOf: [UInt8(ascii: "#"), b ? UInt8(ascii: "t") : UInt8(ascii: "f"), 13, 10])
        } else {
            header(UInt8(ascii: ":"), b ? 1 : 0)
        }
    }

    /// Re-encode a decoded value verbatim (its own wire form, whatever `proto` is).
    public mutating func value(_ v: RESPValue) {
        switch v {
        case .simpleString(let b): raw(UInt8(ascii: "+"), b)
        case .error(let b): raw(UInt8(ascii: "-"), b)
        case .integer(let n): bytes.append(UInt8(ascii: ":")); appendDecimal(n); crlf()
        case .bulkString(let b?): bulk(b)
        case .bulkString(nil): header(UInt8(ascii: "$"), -1)
        case .array(let a?): header(UInt8(ascii: "*"), a.count); for e in a { value(e) }
        case .array(nil): header(UInt8(ascii: "*"), -1)
        case .null: bytes.append(contentsOf: [UInt8(ascii: "_"), 13, 10])
        case .boolean(let b): bytes.append(contentsOf: [UInt8(ascii: "#"), b ? UInt8(ascii: "t") : UInt8(ascii: "f"), 13, 10])
        case .double(let b): raw(UInt8(ascii: ","), b)
        case .bigNumber(let b): raw(UInt8(ascii: "("), b)
        case .bulkError(let b):
            header(UInt8(ascii: "!"), b.count)
            bytes.append(contentsOf: b)
            crlf()
        case .verbatim(let format, let text):
            header(UInt8(ascii: "="), format.count + 1 + text.count)
            bytes.append(contentsOf: format)
            bytes.append(UInt8(ascii: ":"))
            bytes.append(contentsOf: text)
            crlf()
        case .map(let kv): header(UInt8(ascii: "%"), kv.count / 2); for e in kv { value(e) }
        case .set(let a): header(UInt8(ascii: "~"), a.count); for e in a { value(e) }
        case .push(let a): header(UInt8(ascii: ">"), a.count); for e in a { value(e) }
        case .attribute(let kv, let annotated):
            header(UInt8(ascii: "|"), kv.count / 2)
            for e in kv { value(e) }
            value(annotated)
        }
    }

    /// "*n\r\n$len\r\narg\r\n..."
    /// One error reply, "-<s>\r\n", with CR and LF inside `s` replaced by spaces (as redis-server does): the one way
    /// respool composes an error, whatever its text came from (a client's argument, a server's or OpenSSL's message).
    public static func errorLine(_ s: String) -> [UInt8] {
        var w = RESPWriter()
        w.error(s)
        return w.bytes
    }

    public static func command(_ args: [[UInt8]]) -> [UInt8] {
        var w = RESPWriter()
        w.bytes.reserveCapacity(16 + args.reduce(0) { $0 + $1.count + 16 })
        w.arrayHeader(args.count)
        for a in args { w.bulk(a) }
        return w.bytes
    }

    public static func command(_ args: [String]) -> [UInt8] {
        command(args.map { Array($0.utf8) })
    }

    // MARK: - Pieces

    mutating func header(_ type: UInt8, _ n: Int) {
        bytes.append(type)
        appendDecimal(Int64(n))
        crlf()
    }

    mutating func line(_ type: UInt8, _ s: String) {
        bytes.append(type)
        for b in s.utf8 { bytes.append(b == 13 || b == 10 ? 32 : b) }
        crlf()
    }

    mutating func raw(_ type: UInt8, _ b: [UInt8]) {
        bytes.append(type)
        bytes.append(contentsOf: b)
        crlf()
    }

    mutating func crlf() {
        bytes.append(13)
        bytes.append(10)
    }

    mutating func appendDecimal(_ n: Int64) {
        if n < 0 { bytes.append(UInt8(ascii: "-")) }
        var magnitude = n.magnitude
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes of scratch, enough for 20 digits
        var count = 0
        withUnsafeMutableBytes(of: &digits) { buf in
            repeat {
                buf[23 - count] = UInt8(ascii: "0") + UInt8(magnitude % 10)
                magnitude /= 10
                count += 1
            } while magnitude != 0
            bytes.append(contentsOf: buf[(24 - count)...])
        }
    }
}
