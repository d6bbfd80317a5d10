// RedisURL: the upstream address and credentials parsed from redis://[user:password@]host:port[/db].
// The password is never part of any description.

public struct RedisURL: Equatable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var username: String?
    public var password: String?
    public var db: Int
    public var tls: Bool

    public init(host: String = "127.0.0.1", port: Int = 6379, username: String? = nil, password: String? = nil, db: Int = 0, tls: Bool = false) {
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.db = db
        self.tls = tls
    }

    /// Parses a URL; the error text never repeats the URL (it may hold a password).
    public init(parsing text: String) throws(ConfigError.Problem) {
        guard let colon = text.firstIndex(of: ":"), text[colon...].hasPrefix("://") else {
            throw .init("must look like redis://[user:password@]host:port[/db] (or rediss:// for TLS)")
        }
        let scheme = text[..<colon].lowercased()
        switch scheme {
        case "redis": tls = false
        case "rediss": tls = true
        default: throw .init("scheme must be redis:// or rediss:// (got \(scheme.prefix(16))://)")
        }
        var rest = text[text.index(colon, offsetBy: 3)...]
        // Drop a query or fragment (some providers append options such as ?ssl_cert_reqs=none).
        if let q = rest.firstIndex(where: { $0 == "?" || $0 == "#" }) { rest = rest[..<q] }
        var path = Substring("")
        if let slash = rest.firstIndex(of: "/") {
            path = rest[rest.index(after: slash)...]
            rest = rest[..<slash]
        }
        username = nil
        password = nil
        if let at = rest.lastIndex(of: "@") {
            let userinfo = rest[..<at]
            rest = rest[rest.index(after: at)...]
            if let colon = userinfo.firstIndex(of: ":") {
                let u = try Self.percentDecode(userinfo[..<colon])
                username = u.isEmpty ? nil : u
                password = try Self.percentDecode(userinfo[userinfo.index(after: colon)...])
            } else if !userinfo.isEmpty {
                // redis://secret@host is how some clients spell a password without a user.
                password = try Self.percentDecode(userinfo)
            }
        }
        var hostPart = rest
        var portText: Substring? = nil
        if hostPart.hasPrefix("[") {
            guard let close = hostPart.firstIndex(of: "]") else { throw .init("IPv6 host is missing its closing ]") }
            let after = hostPart[hostPart.index(after: close)...]
            if after.hasPrefix(":") { portText = after.dropFirst() } else if !after.isEmpty { throw .init("unexpected text after the host") }
            hostPart = hostPart[hostPart.index(after: hostPart.startIndex)..<close]
        } else if let colon = hostPart.lastIndex(of: ":") {
            portText = hostPart[hostPart.index(after: colon)...]
            hostPart = hostPart[..<colon]
        }
        guard !hostPart.isEmpty else { throw .init("host is missing") }
        host = String(hostPart)
        if let portText {
            guard let p = Int(portText), (1...65535).contains(p) else { throw .init("port must be 1-65535") }
            port = p
        } else {
            port = 6379
        }
        if path.isEmpty {
            db = 0
        } else {
            guard let d = Int(path), d >= 0, d < 1 << 20 else { throw .init("database must be a number (the /db part)") }
            db = d
        }
    }

    private static func percentDecode(_ s: Substring) throws(ConfigError.Problem) -> String {
        guard s.contains("%") else { return String(s) }
        var out: [UInt8] = []
        var bytes = Array(s.utf8)[...]
        while let b = bytes.popFirst() {
            if b == UInt8(ascii: "%") {
                guard bytes.count >= 2, let v = UInt8(String(decoding: bytes.prefix(2), as: UTF8.self), radix: 16) else {
                    throw .init("bad percent-encoding in the user or password")
                }
                out.append(v)
                bytes = bytes.dropFirst(2)
            } else {
                out.append(b)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// `s` with every byte but unreserved ones (RFC 3986: letters, digits, - . _ ~) percent-encoded: safe as a URL's
    /// user or password.
    public static func percentEncode(_ s: String) -> String {
        var out = ""
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(b))
            default:
                out += "%" + (b < 16 ? "0" : "") + String(b, radix: 16, uppercase: true)
            }
        }
        return out
    }

    /// The URL with the password masked: safe for logs, stats and errors.
    public var description: String {
        var s = tls ? "rediss://" : "redis://"
        if username != nil || password != nil {
            s += username ?? ""
            if password != nil { s += ":***" }
            s += "@"
        }
        s += host.contains(":") ? "[\(host)]" : host
        s += ":\(port)/\(db)"
        return s
    }
}
