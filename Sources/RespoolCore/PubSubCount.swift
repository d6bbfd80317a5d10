// PubSubCount: the subscriber counts redis-server gives for PUBLISH, SPUBLISH, PUBSUB NUMSUB and SHARDNUMSUB count
// respool's subscriber connections (one per protocol, subscribed to the union of its clients' names), not its clients.
// A reply is corrected as Redis would count these clients: the server's count minus respool's subscriber connections
// that match, plus respool's clients that match (a client subscribed to a channel and to a matching pattern counts
// twice, as in Redis). Pure: the driver supplies the correction per channel.
import RESP

public enum PubSubCount: Equatable, Sendable {
    case publish(channel: [UInt8])
    case spublish(channel: [UInt8])
    case numsub
    case shardnumsub

    /// The kind of count a request's reply carries (nil: nothing to correct, the reply goes as it is).
    public init?(_ args: [[UInt8]]) {
        guard let name = args.first.map({ SmallBytes(lowercasing: $0) }) else { return nil }
        switch name {
        case SmallBytes("publish") where args.count == 3: self = .publish(channel: args[1])
        case SmallBytes("spublish") where args.count == 3: self = .spublish(channel: args[1])
        case SmallBytes("pubsub") where args.count >= 2:
            switch SmallBytes(lowercasing: args[1]) {
            case SmallBytes("numsub"): self = .numsub
            case SmallBytes("shardnumsub"): self = .shardnumsub
            default: return nil
            }
        default: return nil
        }
    }

    /// The reply with its counts corrected; `correction(space, channel)` is what to add to the server's count of
    /// `channel` in `space` (for PUBLISH, `.channel` includes the matching patterns). Errors and anything unexpected
    /// are returned as they are.
    public func corrected(_ reply: [UInt8], proto: Int, correction: (PubSubSpace, [UInt8]) -> Int) -> [UInt8] {
        guard let decoded = (try? RESPDecoder.decode(reply)) ?? nil else { return reply }
        switch (self, decoded.value) {
        case (.publish(let channel), .integer(let n)):
            return Self.integer(max(0, Int(n) + correction(.channel, channel)))
        case (.spublish(let channel), .integer(let n)):
            return Self.integer(max(0, Int(n) + correction(.shard, channel)))
        case (.numsub, .array(let items?)), (.shardnumsub, .array(let items?)), (.numsub, .map(let items)), (.shardnumsub, .map(let items)):
            let space: PubSubSpace = self == .numsub ? .channel : .shard
            var w = RESPWriter(proto: proto)
            if case .map = decoded.value { w.mapHeader(items.count / 2) } else { w.arrayHeader(items.count) }
            var i = 0
            while i + 1 < items.count {
                guard case .bulkString(let name?) = items[i], case .integer(let n) = items[i + 1] else { return reply }
                w.bulk(name)
                w.integer(max(0, Int(n) + correction(space, name)))
                i += 2
            }
            return w.bytes
        default:
            return reply
        }
    }

    static func integer(_ n: Int) -> [UInt8] { Array(":\(n)\r\n".utf8) }
}
