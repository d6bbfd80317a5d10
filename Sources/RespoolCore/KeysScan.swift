// KeysScan: a KEYS answered by an incremental SCAN (RESPOOL_KEYS=scan), as pure state: the SCAN command for each
// step, and what each SCAN reply means (the next cursor, or the KEYS reply). The driver sends the steps as internal
// requests on the client's connection.
import RESP

public struct KeysScan: Sendable {
    public static let count = "1000"
    public let pattern: [UInt8]
    /// The client asked for no reply (CLIENT REPLY OFF/SKIP): the scan runs, its answer is dropped.
    public let silent: Bool
    private var seen = Set<[UInt8]>()
    public private(set) var keys: [[UInt8]] = []
    public private(set) var steps = 0

    public init(pattern: [UInt8], silent: Bool = false) {
        self.pattern = pattern
        self.silent = silent
    }

    /// SCAN <cursor> MATCH <pattern> COUNT 1000.
    public mutating func command(cursor: [UInt8]) -> [UInt8] {
        steps += 1
        return RESPWriter.command([Array("SCAN".utf8), cursor, Array("MATCH".utf8), pattern, Array("COUNT".utf8), Array(Self.count.utf8)])
    }

    public enum Step: Equatable, Sendable {
        /// Send the next step from this cursor.
        case next(cursor: [UInt8])
        /// The scan is over: this is the client's reply (the deduplicated keys, or the server's error).
        case done([UInt8])
    }

    /// One SCAN reply (`bytes`, as framed): collect its keys and go on with its cursor, or answer when it is back at 0.
    public mutating func step(_ bytes: [UInt8], proto: Int) -> Step {
        let decoded = (try? RESPDecoder.decode(bytes)) ?? nil
        guard case .array(let parts?)? = decoded?.value, parts.count == 2, let cursor = parts[0].string,
              case .array(let found?) = parts[1] else {
            // An error (or anything unexpected) from SCAN is what the client gets.
            if case .error? = decoded?.value { return .done(bytes) }
            return .done(RESPWriter.errorLine("ERR respool: unexpected SCAN reply"))
        }
        for k in found {
            if case .bulkString(let key?) = k, seen.insert(key).inserted { keys.append(key) }
        }
        if cursor != "0" { return .next(cursor: Array(cursor.utf8)) }
        var w = RESPWriter(proto: proto)
        w.arrayHeader(keys.count)
        for k in keys { w.bulk(k) }
        return .done(w.bytes)
    }
}
