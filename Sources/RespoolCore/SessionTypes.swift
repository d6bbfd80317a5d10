// SessionTypes: what a ClientSession works with: the server's description of itself, the context its decisions
// depend on, a decoded request, the pub/sub spaces.
import RESP

/// What the server said about itself in its HELLO reply (repeated to clients in respool's HELLO reply).
public struct ServerInfo: Equatable, Sendable {
    public var server = "redis"
    public var version = "unknown"
    public var mode = "standalone"
    public var role = "master"
    public var modules: RESPValue = .array([])
    /// The id of the connection the HELLO was sent on (not repeated to clients: each gets its own).
    public var connectionID: Int64 = 0

    public init() {}

    /// From the HELLO reply of a handshake (a map in RESP3, a flat array in RESP2).
    public init?(helloReply value: RESPValue) {
        var pairs: [RESPValue] = []
        switch value {
        case .map(let p): pairs = p
        case .array(let a?): pairs = a
        default: return nil
        }
        var i = 0
        while i + 1 < pairs.count {
            let v = pairs[i + 1]
            switch pairs[i].string ?? "" {
            case "server": server = v.string ?? server
            case "version": version = v.string ?? version
            case "mode": mode = v.string ?? mode
            case "role": role = v.string ?? role
            case "modules": modules = v
            case "id": if case .integer(let n) = v { connectionID = n }
            default: break
            }
            i += 2
        }
    }
}

/// What a session's decisions depend on beyond itself (configuration and what the driver knows now).
public struct SessionContext: Sendable {
    /// RESPOOL_CLIENT_PASSWORD (nil: clients need no AUTH).
    public var clientPassword: [UInt8]?
    public var databases: Int
    public var defaultDB: Int
    public var keysMode: KeysMode
    /// RESPOOL_PINNING=allow: MONITOR and CLIENT TRACKING pin a connection instead of being refused.
    public var pinning = true
    /// From the first completed handshake (nil until then).
    public var serverInfo: ServerInfo?
    /// Pub/sub hubs (by `hubKey`: protocol and user) that have their subscriber connection.
    public var subscriberReady: Set<Int> = []
    /// Hubs whose subscriber connection has completed its handshake (its server id is known: CLIENT TRACKING
    /// REDIRECT to a respool client is translated to it).
    public var subscriberConnected: Set<Int> = []
    /// The URL's credentials: a client's AUTH with these succeeds without asking the server.
    public var urlUser: [UInt8]?
    public var urlPassword: [UInt8]?
    /// RESPOOL_DENY_COMMANDS.
    public var deny = DenyList()

    /// One hub per protocol and user (a credential id; 0 is the URL's).
    public static func hubKey(proto: Int, user: Int) -> Int { user * 4 + proto }

    public init(clientPassword: [UInt8]?, databases: Int, defaultDB: Int, keysMode: KeysMode) {
        self.clientPassword = clientPassword
        self.databases = databases
        self.defaultDB = defaultDB
        self.keysMode = keysMode
    }

    public init(config: Config) {
        self.init(clientPassword: config.clientPassword.map { Array($0.utf8) }, databases: config.databases,
                  defaultDB: config.upstream.db, keysMode: config.keysMode)
        pinning = config.pinning
        deny = config.deny
        urlUser = config.upstream.username.map { Array($0.utf8) }
        urlPassword = config.upstream.password.map { Array($0.utf8) }
    }
}

/// One request, decoded (the slow path), with its route.
public struct Request: Sendable {
    public var route: CommandRoute
    /// The command name, lowercased.
    public var name: SmallBytes
    /// The arguments, the command name first.
    public var args: [[UInt8]]

    public init(route: CommandRoute, name: SmallBytes, args: [[UInt8]]) {
        self.route = route
        self.name = name
        self.args = args
    }

    public init(args: [[UInt8]]) {
        let name = args.first.map { SmallBytes(lowercasing: $0) } ?? SmallBytes()
        self.init(route: CommandTable.route(name), name: name, args: args)
    }
}

public enum PubSubSpace: Int, Sendable, CaseIterable {
    case channel = 0, pattern = 1, shard = 2
}
