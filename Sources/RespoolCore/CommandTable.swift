// CommandTable: which commands are multiplexed, answered by respool itself, or refused because they tie state to a
// connection (until leases exist). Looked up once per command by its lowercased name, without decoding the request.
import RESP

/// Commands that respool answers itself.
public enum LocalCommand: Sendable, Equatable {
    case hello, client, quit, select, auth, reset
}

/// Why a command cannot go over a shared connection (yet).
public enum StatefulKind: String, Sendable, Equatable {
    case pubsub = "pub/sub"
    case monitor = "MONITOR"
    case replication = "replication"
    case connectionState = "connection state"
    case cluster = "cluster mode"

    /// Why a command of this kind cannot go through the pool (the refusal says it).
    public var reason: String {
        switch self {
        case .pubsub: return "its subscription would take a shared connection"
        case .monitor: return "RESPOOL_PINNING=deny: it would hold an upstream connection for as long as it runs"
        case .replication: return "a replica needs a server connection of its own"
        case .connectionState: return "RESPOOL_PINNING=deny: it ties server-side state to one connection"
        case .cluster: return "respool fronts one server, not a cluster"
        }
    }
}

/// The subscribe family, served by respool's shared subscriber connection.
public enum PubSubCommand: Sendable, Equatable {
    case subscribe, psubscribe, ssubscribe, unsubscribe, punsubscribe, sunsubscribe

    /// The reply kind word ("subscribe", "punsubscribe"...).
    public var word: String {
        switch self {
        case .subscribe: return "subscribe"
        case .psubscribe: return "psubscribe"
        case .ssubscribe: return "ssubscribe"
        case .unsubscribe: return "unsubscribe"
        case .punsubscribe: return "punsubscribe"
        case .sunsubscribe: return "sunsubscribe"
        }
    }
}

/// Commands that start, end or take part in a transaction's connection state.
public enum TransactionCommand: Sendable, Equatable {
    case multi, exec, discard, watch, unwatch
}

public enum CommandRoute: Sendable, Equatable {
    /// Stateless: pipelined onto a shared upstream connection, bytes untouched.
    case forward
    /// MULTI/EXEC/DISCARD/WATCH/UNWATCH: run on an exclusive lease from MULTI or WATCH until EXEC, DISCARD or
    /// UNWATCH ends the state.
    case transaction(TransactionCommand)
    /// A blocking command: runs on an exclusive lease for the duration of the call.
    case blocking
    /// SUBSCRIBE and friends: fanned out from one shared subscriber connection per protocol.
    case pubsub(PubSubCommand)
    /// PING: forwarded, except in RESP2 subscribed mode where respool answers as redis does.
    case ping
    /// KEYS: subject to the KEYS guard (RESPOOL_KEYS).
    case keys
    /// Answered by respool.
    case local(LocalCommand)
    /// Needs a dedicated connection: refused with an error naming the command.
    case stateful(StatefulKind)
    /// XREAD / XREADGROUP: blocking only with a BLOCK argument; look at the arguments.
    case streamRead
    /// PUBLISH, SPUBLISH, PUBSUB: forwarded, and the subscriber counts in the reply (PUBLISH's receivers, NUMSUB,
    /// SHARDNUMSUB) are corrected from respool's subscriber connections to its clients (PubSubCount).
    case pubsubCount
    /// ACL and CONFIG: forwarded; those that change users or passwords (ACL SETUSER/DELUSER/LOAD, CONFIG SET
    /// requirepass) make respool check every client credential with the server again (`changesCredentials`).
    case admin
    /// SCRIPT and FUNCTION (their KILL) and SHUTDOWN: what must reach the server while a script holds it, so they go to
    /// the control connection, never behind the script on a shared one. Other SCRIPT/FUNCTION subcommands are forwarded.
    case serverControl
}

public enum CommandTable {
    /// Open addressing over a power-of-two slot array built once; a lookup hashes the name's inline words (no
    /// Hasher, no ARC) and usually ends at the first probe, since most commands (GET, SET...) are not in the table.
    private struct Slot {
        var key: SmallBytes
        var route: CommandRoute
        var used: Bool
    }

    /// The lookup table: the built-in entries, plus what `learn(fromCommandReply:)` added. Replaced, never mutated in
    /// place; respool's event loop is the only user (single-threaded).
    private struct SlotTable {
        let slots: UnsafeMutablePointer<Slot>
        let mask: Int
        let entries: [SmallBytes: CommandRoute]

        init(_ entries: [SmallBytes: CommandRoute]) {
            var size = 256
            while size < entries.count * 4 { size *= 2 }
            slots = .allocate(capacity: size)
            slots.initialize(repeating: Slot(key: SmallBytes(), route: .forward, used: false), count: size)
            mask = size - 1
            self.entries = entries
            for (key, route) in entries {
                var i = Int(truncatingIfNeeded: key.tableHash) & mask
                while slots[i].used { i = (i + 1) & mask }
                slots[i] = Slot(key: key, route: route, used: true)
            }
        }
    }

    nonisolated(unsafe) private static var table = SlotTable(entries)

    private static let entries: [SmallBytes: CommandRoute] = {
        var t: [SmallBytes: CommandRoute] = [:]
        t[SmallBytes("multi")] = .transaction(.multi)
        t[SmallBytes("exec")] = .transaction(.exec)
        t[SmallBytes("discard")] = .transaction(.discard)
        t[SmallBytes("watch")] = .transaction(.watch)
        t[SmallBytes("unwatch")] = .transaction(.unwatch)
        for n: StaticString in ["blpop", "brpop", "brpoplpush", "blmove", "blmpop", "bzpopmin", "bzpopmax", "bzmpop", "wait", "waitaof"] {
            t[SmallBytes(n)] = .blocking
        }
        t[SmallBytes("subscribe")] = .pubsub(.subscribe)
        t[SmallBytes("psubscribe")] = .pubsub(.psubscribe)
        t[SmallBytes("ssubscribe")] = .pubsub(.ssubscribe)
        t[SmallBytes("unsubscribe")] = .pubsub(.unsubscribe)
        t[SmallBytes("punsubscribe")] = .pubsub(.punsubscribe)
        t[SmallBytes("sunsubscribe")] = .pubsub(.sunsubscribe)
        t[SmallBytes("ping")] = .ping
        t[SmallBytes("keys")] = .keys
        t[SmallBytes("monitor")] = .stateful(.monitor)
        for n: StaticString in ["sync", "psync", "replconf"] { t[SmallBytes(n)] = .stateful(.replication) }
        for n: StaticString in ["readonly", "readwrite", "asking"] { t[SmallBytes(n)] = .stateful(.cluster) }
        t[SmallBytes("xread")] = .streamRead
        for n: StaticString in ["script", "function", "shutdown"] { t[SmallBytes(n)] = .serverControl }
        t[SmallBytes("xreadgroup")] = .streamRead
        for n: StaticString in ["publish", "spublish", "pubsub"] { t[SmallBytes(n)] = .pubsubCount }
        for n: StaticString in ["acl", "config"] { t[SmallBytes(n)] = .admin }
        t[SmallBytes("hello")] = .local(.hello)
        t[SmallBytes("client")] = .local(.client)
        t[SmallBytes("quit")] = .local(.quit)
        t[SmallBytes("select")] = .local(.select)
        t[SmallBytes("auth")] = .local(.auth)
        t[SmallBytes("reset")] = .local(.reset)
        return t
    }()

    /// The route for a command name (lowercased, as the framer captured it). Unknown names are forwarded: the server
    /// answers them (and module commands work).
    @inline(__always)
    public static func route(_ name: SmallBytes) -> CommandRoute {
        if name.truncated { return .forward }
        let t = table
        var i = Int(truncatingIfNeeded: name.tableHash) & t.mask
        while t.slots[i].used {
            if t.slots[i].key == name { return t.slots[i].route }
            i = (i + 1) & t.mask
        }
        return .forward
    }

    /// Classifies the commands the server reports (the reply to COMMAND) that the built-in table does not know: those
    /// flagged "blocking" (module commands, newer Redis versions) run on leases. Returns the names learned as
    /// blocking. The built-in entries always win (XREAD blocks only with BLOCK, for example).
    @discardableResult
    public static func learn(fromCommandReply reply: RESPValue) -> [String] {
        guard case .array(let commands?) = reply else { return [] }
        var merged = table.entries
        var learned: [String] = []
        known = Known(commandReply: commands)
        for entry in commands {
            guard case .array(let fields?) = entry, fields.count >= 3, let name = fields[0].string else { continue }
            let flagValues: [RESPValue]
            switch fields[2] {
            case .array(let f?): flagValues = f
            case .set(let f): flagValues = f
            default: continue
            }
            let flags = Set(flagValues.compactMap { $0.string?.lowercased() })
            let key = SmallBytes(lowercasing: Array(name.utf8))
            guard !key.truncated, merged[key] == nil, flags.contains("blocking") else { continue }
            merged[key] = .blocking
            learned.append(name.lowercased())
        }
        if !learned.isEmpty { table = SlotTable(merged) }
        return learned.sorted()
    }

    /// Back to the built-in table (tests).
    public static func resetLearned() {
        table = SlotTable(entries)
        known = nil
    }

    /// The server's commands (name → arity, and a container's subcommands "name|sub" → arity), from its COMMAND
    /// reply; nil until learned.
    private struct Known {
        var arity: [String: Int] = [:]
        var subcommands: [String: [String: Int]] = [:]

        init(commandReply commands: [RESPValue]) {
            for entry in commands {
                guard case .array(let f?) = entry, f.count >= 2, let name = f[0].string?.lowercased(),
                      case .integer(let arity) = f[1] else { continue }
                self.arity[name] = Int(arity)
                guard f.count >= 10, case .array(let subs?) = f[9], !subs.isEmpty else { continue }
                var table: [String: Int] = [:]
                for sub in subs {
                    guard case .array(let sf?) = sub, sf.count >= 2, let full = sf[0].string?.lowercased(),
                          case .integer(let a) = sf[1] else { continue }
                    table[full] = Int(a)
                }
                subcommands[name] = table
            }
        }
    }

    nonisolated(unsafe) private static var known: Known?

    /// Whether an ACL or CONFIG request changes who may log in with what (then cached credentials are checked again).
    public static func changesCredentials(_ args: [[UInt8]]) -> Bool {
        guard args.count >= 2 else { return false }
        let name = SmallBytes(lowercasing: args[0]), sub = SmallBytes(lowercasing: args[1])
        if name == SmallBytes("acl") {
            return sub == SmallBytes("setuser") || sub == SmallBytes("deluser") || sub == SmallBytes("load")
        }
        return name == SmallBytes("config") && sub == SmallBytes("set")
            && args.dropFirst(2).contains { SmallBytes(lowercasing: $0) == SmallBytes("requirepass") }
    }

    /// Commands whose CLIENT LIST cmd= names the subcommand too ("client|list").
    static let containers: Set<SmallBytes> = Set(["client", "config", "acl", "cluster", "command", "function", "latency",
        "memory", "module", "object", "pubsub", "script", "slowlog", "xinfo", "xgroup"].map { SmallBytes(lowercasing: Array($0.utf8)) })

    /// A request's name as redis-server reports it in CLIENT LIST's cmd=: the subcommand too for container commands.
    public static func reportedName(_ r: Request) -> SmallBytes {
        guard r.args.count >= 2, containers.contains(r.name) else { return r.name }
        return SmallBytes(lowercasing: r.args[0] + [UInt8(ascii: "|")] + r.args[1])
    }

    /// The name redis-server uses for a command in its errors: "get", or "client|list" for a subcommand.
    public static func fullName(_ args: [[UInt8]]) -> String {
        guard let first = args.first else { return "" }
        let name = String(decoding: first, as: UTF8.self).lowercased()
        if args.count >= 2, let subs = known?.subcommands[name] {
            let full = name + "|" + String(decoding: args[1], as: UTF8.self).lowercased()
            if subs[full] != nil { return full }
        }
        return name
    }

    /// The error redis-server answers before anything else for a command it does not know or whose argument count is
    /// wrong (`args` with the name first), in its words; nil when the command is fine or the server's commands are
    /// not known yet. Respool asks where it answers in the server's place (a RESP2 subscriber, a client not
    /// authenticated yet), so that such a client gets what redis-server would have said.
    public static func serverRejection(_ args: [[UInt8]]) -> String? {
        guard let known, let first = args.first else { return nil }
        func cString(_ b: [UInt8], max: Int) -> String {
            String(decoding: b.prefix { $0 != 0 }.prefix(max), as: UTF8.self)
        }
        let name = String(decoding: first, as: UTF8.self).lowercased()
        var fullName = name
        var arity = known.arity[name]
        if let subs = known.subcommands[name], args.count >= 2 {
            fullName = name + "|" + String(decoding: args[1], as: UTF8.self).lowercased()
            arity = subs[fullName]
            if arity == nil {
                return "ERR unknown subcommand '\(cString(args[1], max: 128))'. Try \(cString(first, max: Int.max).uppercased()) HELP."
            }
        }
        guard let arity else {
            var tail = ""
            var i = 1
            while i < args.count && tail.utf8.count < 128 {
                tail += "'\(cString(args[i], max: 128 - tail.utf8.count))' "
                i += 1
            }
            return "ERR unknown command '\(cString(first, max: 128))', with args beginning with: \(tail)"
        }
        if (arity > 0 && arity != args.count) || args.count < -arity {
            return "ERR wrong number of arguments for '\(fullName)' command"
        }
        return nil
    }

    /// Whether an XREAD or XREADGROUP (`args` with the command name first) blocks: its options, read the way
    /// redis-server reads them up to STREAMS, include BLOCK with a value. After STREAMS come key names and ids, so a
    /// stream named "block" is not the option. Options respool does not know end the scan (the server answers them).
    public static func streamReadBlocks(_ args: [[UInt8]]) -> Bool {
        guard let first = args.first else { return false }
        let group = SmallBytes(lowercasing: first) == SmallBytes("xreadgroup")
        var i = 1
        while i < args.count {
            switch SmallBytes(lowercasing: args[i]) {
            case SmallBytes("streams"): return false
            case SmallBytes("block"): return i + 1 < args.count
            case SmallBytes("count"): i += 2
            case SmallBytes("group") where group: i += 3
            case SmallBytes("noack") where group: i += 1
            default: return false
            }
        }
        return false
    }

    /// CLIENT subcommands: which are answered locally, which are refused, the rest are forwarded (LIST, PAUSE, HELP...).
    public enum ClientSubcommand: Sendable, Equatable {
        case setname, getname, setinfo, id, info, list, kill, reply, noEvict, noTouch, getredir
        /// CLIENT TRACKING (pins the client while on), CLIENT UNBLOCK (its id translated to the server's).
        case tracking, unblock
        case forward
    }

    public static func clientSubcommand(_ arg: SmallBytes) -> ClientSubcommand {
        switch arg {
        case SmallBytes("setname"): return .setname
        case SmallBytes("getname"): return .getname
        case SmallBytes("setinfo"): return .setinfo
        case SmallBytes("id"): return .id
        case SmallBytes("info"): return .info
        case SmallBytes("list"): return .list
        case SmallBytes("kill"): return .kill
        case SmallBytes("reply"): return .reply
        case SmallBytes("no-evict"): return .noEvict
        case SmallBytes("no-touch"): return .noTouch
        case SmallBytes("getredir"): return .getredir
        case SmallBytes("tracking"): return .tracking
        case SmallBytes("unblock"): return .unblock
        // CACHING and TRACKINGINFO go where the client's commands go: its pinned connection while it tracks.
        default: return .forward
        }
    }

    /// The error a refused command gets (the client stays connected).
    public static func refusal(command: String, kind: StatefulKind) -> String {
        "ERR respool: '\(command)' is not available through the pool (\(kind.reason)); send it to Redis directly"
    }
}
