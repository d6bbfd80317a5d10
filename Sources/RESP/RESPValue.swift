// A fully decoded RESP value, for the rare paths (local commands, handshakes, tests); never the data path.

/// A fully decoded value (rare paths: local commands, handshakes, tests). Not for the data path.
public indirect enum RESPValue: Equatable, Sendable {
    case simpleString([UInt8])
    case error([UInt8])                  // without the leading '-'
    case integer(Int64)
    case bulkString([UInt8]?)            // nil = "$-1"
    case array([RESPValue]?)             // nil = "*-1"
    case null                            // "_"
    case boolean(Bool)
    case double([UInt8])                 // raw text after ','
    case bigNumber([UInt8])
    case bulkError([UInt8])
    case verbatim(format: [UInt8], text: [UInt8])
    case map([RESPValue])                // flattened key, value, key, value...
    case set([RESPValue])
    case push([RESPValue])
    case attribute([RESPValue], RESPValue) // flattened pairs, then the value it annotates

    /// simpleString/bulkString/error/verbatim text as UTF-8, else nil.
    public var string: String? {
        switch self {
        case .simpleString(let b), .error(let b), .verbatim(_, let b): return String(decoding: b, as: UTF8.self)
        case .bulkString(let b?): return String(decoding: b, as: UTF8.self)
        default: return nil
        }
    }
}
