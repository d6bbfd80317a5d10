// Advisor: what the Redis tips of experience say about the actual server, from its INFO (pure: INFO text in, figures
// and advice out). The driver polls INFO, exposes the figures as metrics and logs the advice, rate-limited.

public struct ServerFigures: Sendable, Equatable {
    public var connectedClients: Int?
    public var maxClients: Int?
    public var usedMemory: Int?
    public var maxMemory: Int?
    public var maxMemoryPolicy: String?
    public var evictedKeys: Int?
    public var rejectedConnections: Int?

    public init() {}

    /// Parses the fields it needs from INFO's "key:value" lines.
    public init(info: String) {
        self.init()
        for line in info.split(whereSeparator: \.isNewline) {   // "\r\n" is one Character
            guard let colon = line.firstIndex(of: ":") else { continue }
            let key = line[..<colon]
            let value = String(line[line.index(after: colon)...])
            switch key {
            case "connected_clients": connectedClients = Int(value)
            case "maxclients": maxClients = Int(value)
            case "used_memory": usedMemory = Int(value)
            case "maxmemory": maxMemory = Int(value)
            case "maxmemory_policy": maxMemoryPolicy = value
            case "evicted_keys": evictedKeys = Int(value)
            case "rejected_connections": rejectedConnections = Int(value)
            default: break
            }
        }
    }
}

public enum Advice: String, Sendable, CaseIterable {
    case noevictionNearFull = "noeviction_near_maxmemory"
    case clientsNearMax = "clients_near_maxclients"
    case oomErrors = "oom_errors"
    case keysUsed = "keys_used"

    public var message: String {
        switch self {
        case .noevictionNearFull:
            return "maxmemory-policy is noeviction and memory use is past 90% of maxmemory: writes will start failing; choose allkeys-lru for a cache, volatile-lru for mixed use"
        case .clientsNearMax:
            return "the server's connected clients are past 80% of maxclients: other instances or apps are using the budget"
        case .oomErrors:
            return "OOM errors are being returned to clients: the server is out of memory under its maxmemory-policy"
        case .keysUsed:
            return "KEYS is being used: it blocks the server for every key it holds; use SCAN (or RESPOOL_KEYS=scan)"
        }
    }
}

public enum Advisor {
    /// The advice that holds for these figures and recent events.
    public static func advise(_ f: ServerFigures, oomErrorsSinceLastPoll: Int, keysSinceLastPoll: Int) -> [Advice] {
        var out: [Advice] = []
        if f.maxMemoryPolicy == "noeviction", let used = f.usedMemory, let max = f.maxMemory, max > 0, used * 10 >= max * 9 {
            out.append(.noevictionNearFull)
        }
        if let c = f.connectedClients, let m = f.maxClients, m > 0, c * 10 >= m * 8 {
            out.append(.clientsNearMax)
        }
        if oomErrorsSinceLastPoll > 0 { out.append(.oomErrors) }
        if keysSinceLastPoll > 0 { out.append(.keysUsed) }
        return out
    }
}
