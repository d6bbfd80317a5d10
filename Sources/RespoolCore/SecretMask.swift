// SecretMask: CONFIG GET replies that would hand the upstream's own secrets (its password, its replication password,
// its TLS key passphrases) to a client of respool are masked: the point of holding the upstream URL in respool is that
// the app never needs it. An empty value (no password set) is left as it is, so "is a password set?" still works.
import RESP

public enum SecretMask {
    /// redis-server's parameters whose values are secrets.
    public static let parameters: [[UInt8]] = ["requirepass", "masterauth", "tls-key-file-pass", "tls-client-key-file-pass"]
        .map { Array($0.utf8) }
    public static let maskedValue = Array("(masked by respool)".utf8)

    /// Whether `args` is a CONFIG GET whose patterns can match a secret parameter (redis-server's glob rules,
    /// case-insensitively, as CONFIG GET matches).
    public static func applies(_ args: [[UInt8]]) -> Bool {
        guard args.count >= 3, SmallBytes(lowercasing: args[0]) == SmallBytes("config"),
              SmallBytes(lowercasing: args[1]) == SmallBytes("get") else { return false }
        return args.dropFirst(2).contains { pattern in
            let p = lowercased(pattern)
            return parameters.contains { Glob.match(p, $0) }
        }
    }

    /// The reply (RESP2 array or RESP3 map of name, value pairs) with the secret parameters' non-empty values masked;
    /// anything else is returned as it is.
    public static func masked(_ reply: [UInt8], proto: Int) -> [UInt8] {
        guard let decoded = (try? RESPDecoder.decode(reply)) ?? nil else { return reply }
        let items: [RESPValue]
        switch decoded.value {
        case .array(let a?): items = a
        case .map(let m): items = m
        default: return reply
        }
        guard items.count % 2 == 0 else { return reply }
        var w = RESPWriter(proto: proto)
        if case .map = decoded.value { w.mapHeader(items.count / 2) } else { w.arrayHeader(items.count) }
        var changed = false
        var i = 0
        while i < items.count {
            guard case .bulkString(let name?) = items[i], case .bulkString(let value?) = items[i + 1] else { return reply }
            w.bulk(name)
            if !value.isEmpty && parameters.contains(lowercased(name)) {
                w.bulk(maskedValue)
                changed = true
            } else {
                w.bulk(value)
            }
            i += 2
        }
        return changed ? w.bytes : reply
    }

    /// ASCII lowercase (parameter names and CONFIG GET patterns match case-insensitively).
    private static func lowercased(_ bytes: [UInt8]) -> [UInt8] {
        bytes.map { $0 >= 65 && $0 <= 90 ? $0 + 32 : $0 }
    }
}

/// How a reply is changed before it reaches the client (the FIFO's `.counted` entries).
public enum ReplyRewrite: Equatable, Sendable {
    /// PUBLISH, SPUBLISH and PUBSUB NUMSUB/SHARDNUMSUB counts corrected to respool's clients.
    case counts(PubSubCount)
    /// CONFIG GET with the upstream's secrets masked.
    case secrets
}
