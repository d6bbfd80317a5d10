// Config: respool's settings as a pure function of a [String: String] environment (flags are merged in by main).
// A bad value is a ConfigError naming the variable; main prints it as one line and exits 2.

public struct ConfigError: Error, Equatable, Sendable, CustomStringConvertible {
    public struct Problem: Error, Equatable, Sendable {
        public let message: String
        public init(_ message: String) { self.message = message }
    }
    public let variable: String
    public let message: String
    public init(variable: String, message: String) {
        self.variable = variable
        self.message = message
    }
    public var description: String { "\(variable): \(message)" }
}

public enum LogLevelSetting: String, CaseIterable, Sendable {
    case trace, debug, info, notice, warning, error, critical
}

/// One documented setting: the single table that --help, the README and validation are written from.
public struct ConfigOption: Sendable {
    public let variable: String
    public let flag: String
    public let defaultText: String
    public let help: String
}

/// What to do with KEYS (O(N), stalls a production Redis).
public enum KeysMode: String, CaseIterable, Sendable {
    case allow, warn, deny, scan
}

/// TLS to the upstream (rediss://).
public struct TLSSettings: Equatable, Sendable {
    /// Check the server's certificate chain and name (RESPOOL_TLS_VERIFY=full, the default) or not (none).
    public var verify = true
    public var caFile: String?
    public var certFile: String?
    public var keyFile: String?
    /// Name sent as SNI and checked against the certificate; the URL's host when nil.
    public var serverName: String?
    public init() {}
}

public struct Config: Equatable, Sendable {
    public var upstream: RedisURL
    /// Which variable the upstream came from (RESPOOL_URL, REDIS_URL, the default, or one named by RESPOOL_URLS),
    /// for the start-up line.
    public var upstreamSource: String
    /// With RESPOOL_URLS: the variable this upstream came from, which labels its stats, logs and listener; nil with
    /// one upstream (RESPOOL_URL or REDIS_URL), whose stats carry no upstream label.
    public var upstreamLabel: String?
    public var bind: String
    public var port: Int
    public var socketPath: String?
    public var maxServerConnections: Int
    /// How the cap was set, for the start-up line ("RESPOOL_MAX_SERVER_CONNECTIONS", "default" or the plan formula).
    public var capSource: String
    /// Seconds a client may wait for a connection to lease (or for the pool) before it gets an error.
    public var waitTimeout: Double
    /// Output a client may have queued (unread replies) before it is closed: hard limit, and soft limit held for
    /// `outputSoftSeconds` (redis's client-output-buffer-limit normal class, made finite).
    public var outputHardLimit: Int
    public var outputSoftLimit: Int
    public var outputSoftSeconds: Double
    /// Seconds between INFO polls of the advisor (0 = off) and between stats log lines (0 = off).
    public var advisorInterval: Double
    public var statsInterval: Double
    /// The stats endpoint: bind address and port (-1 = off; 0 picks a free port).
    public var statsBind: String
    public var statsPort: Int
    /// Shared upstream connections kept open (opened at start-up).
    public var minServerConnections: Int
    /// Seconds after which an idle shared connection beyond the minimum is closed (0 = never).
    public var serverIdleTimeout: Double
    /// Seconds after which a connection is replaced once idle (0 = never).
    public var serverLifetime: Double
    /// Unanswered commands per client before respool stops reading from it (until half are answered).
    public var maxPipeline: Int
    /// Seconds of idleness after which a pooled connection is PINGed before a command is sent on it (0 = never).
    public var serverCheckAfter: Double
    /// Seconds a command on a shared connection may wait for its reply (0 = no limit; leased connections exempt).
    public var commandTimeout: Double
    /// Seconds of idleness after which a pooled connection is PINGed (0 = never).
    public var serverKeepalive: Double
    /// Seconds of inactivity after which a client is closed (0 = never).
    public var clientIdleTimeout: Double
    /// Seconds a client may sit idle inside MULTI or WATCH (holding a lease) before it is closed (0 = never).
    public var transactionIdleTimeout: Double
    public var maxClients: Int
    public var namePrefix: String
    public var logLevel: LogLevelSetting
    public var connectTimeout: Double
    public var shutdownTimeout: Double
    public var maxBulkLength: Int
    public var maxMultibulkLength: Int
    public var databases: Int
    /// Password clients must AUTH with (never printed); nil: no AUTH required.
    public var clientPassword: String?
    public var keysMode: KeysMode
    /// RESPOOL_PINNING=allow (MONITOR and CLIENT TRACKING pin a connection) or deny (they are refused).
    public var pinning: Bool
    /// CONFIG GET replies with the upstream's secrets (requirepass, masterauth, TLS key passphrases) masked.
    public var maskSecrets: Bool
    /// RESPOOL_DENY_COMMANDS: commands answered with an error instead of reaching the server.
    public var deny: DenyList
    /// Used when the upstream URL is rediss://.
    public var tls: TLSSettings

    public static let options: [ConfigOption] = [
        .init(variable: "RESPOOL_URLS", flag: "urls", defaultText: "(none: one upstream, RESPOOL_URL or REDIS_URL)",
              help: "Several upstreams in one process: the names of the variables holding their URLs, e.g. \"REDIS_URL REDIS_CACHE_URL\". Each gets its own listener (consecutive ports from RESPOOL_PORT; RESPOOL_SOCKET gets .<VARIABLE> appended after the first), pool, cap and stats label; any setting can be given for one of them as SETTING_<VARIABLE> (RESPOOL_MAX_SERVER_CONNECTIONS_REDIS_CACHE_URL=5)."),
        .init(variable: "RESPOOL_URL", flag: "url", defaultText: "$REDIS_URL, else redis://127.0.0.1:6379",
              help: "Upstream Redis: redis://[user:password@]host:port[/db], or rediss:// for TLS. The password AUTHs every upstream connection and is never printed."),
        .init(variable: "RESPOOL_TLS_VERIFY", flag: "tls-verify", defaultText: "full",
              help: "rediss:// only. full: check the server's certificate chain (RESPOOL_TLS_CA_FILE, else the system's CAs) and that it names the host; none: encrypt without checking who answers (for servers with self-signed certificates, such as Heroku Data for Redis)."),
        .init(variable: "RESPOOL_TLS_CA_FILE", flag: "tls-ca-file", defaultText: "(the system's CA store)",
              help: "rediss:// only. PEM file of the certificate authorities to trust."),
        .init(variable: "RESPOOL_TLS_CERT_FILE", flag: "tls-cert-file", defaultText: "(none)",
              help: "rediss:// only. PEM client certificate (chain), for servers that require one (tls-auth-clients); needs RESPOOL_TLS_KEY_FILE."),
        .init(variable: "RESPOOL_TLS_KEY_FILE", flag: "tls-key-file", defaultText: "(none)",
              help: "rediss:// only. PEM private key of RESPOOL_TLS_CERT_FILE."),
        .init(variable: "RESPOOL_TLS_SERVER_NAME", flag: "tls-server-name", defaultText: "the URL's host",
              help: "rediss:// only. Name sent as SNI and checked against the server's certificate."),
        .init(variable: "RESPOOL_BIND", flag: "bind", defaultText: "127.0.0.1", help: "Address to listen on for clients."),
        .init(variable: "RESPOOL_PORT", flag: "port", defaultText: "6380", help: "TCP port to listen on (0 picks a free port, printed at start-up)."),
        .init(variable: "RESPOOL_SOCKET", flag: "socket", defaultText: "(none)", help: "Also listen on this unix socket path (faster than loopback TCP for a sidecar)."),
        .init(variable: "RESPOOL_MAX_SERVER_CONNECTIONS", flag: "max-server-connections", defaultText: "10",
              help: "Hard cap on upstream connections respool ever has open at once; with 3 or more, one slot is kept for the control connection (SCRIPT KILL, FUNCTION KILL, SHUTDOWN)."),
        .init(variable: "RESPOOL_PLAN_MAX_CONNECTIONS", flag: "plan-max-connections", defaultText: "(none)",
              help: "The Redis plan's connection limit; with RESPOOL_INSTANCES and RESPOOL_RESERVE_CONNECTIONS it sets the cap to floor((plan - reserve) / instances), at least 1, unless RESPOOL_MAX_SERVER_CONNECTIONS is set."),
        .init(variable: "RESPOOL_INSTANCES", flag: "instances", defaultText: "1",
              help: "How many respools share the plan's connections."),
        .init(variable: "RESPOOL_RESERVE_CONNECTIONS", flag: "reserve-connections", defaultText: "2",
              help: "Connections of the plan left free for consoles and one-off processes."),
        .init(variable: "RESPOOL_WAIT_TIMEOUT", flag: "wait-timeout", defaultText: "5",
              help: "Seconds a command may wait for an upstream connection (a lease when all are taken) before it gets an error; the client stays connected."),
        .init(variable: "RESPOOL_CLIENT_IDLE_TIMEOUT", flag: "client-idle-timeout", defaultText: "300",
              help: "Seconds after which an idle client is closed (0 = never), as hosted Redis does; never subscribers, blocked clients or clients waiting for a reply."),
        .init(variable: "RESPOOL_TRANSACTION_IDLE_TIMEOUT", flag: "transaction-idle-timeout", defaultText: "60",
              help: "Seconds a client may sit idle inside MULTI or WATCH, holding a leased connection, before it is closed and the transaction discarded (0 = never)."),
        .init(variable: "RESPOOL_CLIENT_OUTPUT_LIMIT", flag: "client-output-limit", defaultText: "64mb",
              help: "Replies a client may leave unread before it is closed (bytes, or with kb/mb/gb)."),
        .init(variable: "RESPOOL_CLIENT_OUTPUT_SOFT_LIMIT", flag: "client-output-soft-limit", defaultText: "16mb",
              help: "Unread replies a client may keep for RESPOOL_CLIENT_OUTPUT_SOFT_SECONDS before it is closed."),
        .init(variable: "RESPOOL_CLIENT_OUTPUT_SOFT_SECONDS", flag: "client-output-soft-seconds", defaultText: "60",
              help: "Seconds a client may stay above the soft output limit."),
        .init(variable: "RESPOOL_MIN_SERVER_CONNECTIONS", flag: "min-server-connections", defaultText: "1",
              help: "Shared upstream connections kept open, opened at start-up so the first request does not pay for connecting."),
        .init(variable: "RESPOOL_SERVER_IDLE_TIMEOUT", flag: "server-idle-timeout", defaultText: "120",
              help: "Seconds after which a shared upstream connection idle beyond the minimum is closed (0 = never); below hosted Redis's 300 s idle kill."),
        .init(variable: "RESPOOL_SERVER_LIFETIME", flag: "server-lifetime", defaultText: "3600",
              help: "Seconds after which an upstream connection is replaced, once it is idle (0 = never)."),
        .init(variable: "RESPOOL_SERVER_KEEPALIVE", flag: "server-keepalive", defaultText: "60",
              help: "Seconds of idleness after which a pooled connection is checked with PING (0 = never), so a server-side idle timeout never kills it unnoticed."),
        .init(variable: "RESPOOL_SERVER_CHECK_AFTER", flag: "server-check-after", defaultText: "30",
              help: "Seconds of idleness after which a pooled connection is checked with PING before a command is sent on it, so a connection that died meanwhile costs a reconnect, not a failed command (0 = never)."),
        .init(variable: "RESPOOL_COMMAND_TIMEOUT", flag: "command-timeout", defaultText: "0 (off)",
              help: "Seconds a multiplexed command may wait for its reply; past it the commands in flight on that upstream connection get an error and the connection is closed (its reply stream can no longer be trusted). Blocking commands and transactions (leases) are exempt."),
        .init(variable: "RESPOOL_MAX_PIPELINE", flag: "max-pipeline", defaultText: "10000",
              help: "Unanswered commands a client may have in flight; past it respool stops reading from that client until half are answered."),
        .init(variable: "RESPOOL_STATS_BIND", flag: "stats-bind", defaultText: "127.0.0.1",
              help: "Address of the stats endpoint (/metrics, /stats, /clients, /upstreams, /healthz)."),
        .init(variable: "RESPOOL_STATS_PORT", flag: "stats-port", defaultText: "9122",
              help: "Port of the stats endpoint (9121 is redis_exporter's); off to disable; 0 picks a free port, printed at start-up."),
        .init(variable: "RESPOOL_STATS_INTERVAL", flag: "stats-interval", defaultText: "60",
              help: "Seconds between summary log lines (clients, upstream connections, commands/s, waits, errors); 0 = off."),
        .init(variable: "RESPOOL_ADVISOR_INTERVAL", flag: "advisor-interval", defaultText: "60",
              help: "Seconds between INFO polls of the Redis health advisor (memory, eviction policy, clients); 0 = off."),
        .init(variable: "RESPOOL_MAX_CLIENTS", flag: "max-clients", defaultText: "10000",
              help: "Client connections accepted; past it a client gets -ERR max number of clients reached and is closed. At start-up respool raises its soft open-files limit toward the hard one to fit this, the upstream cap and 32 of its own; when they cannot fit, it lowers this to what does and logs one warning."),
        .init(variable: "RESPOOL_NAME", flag: "name", defaultText: "$DYNO, else the host name",
              help: "Prefix of the CLIENT SETNAME given to upstream connections (<name>:pool)."),
        .init(variable: "RESPOOL_LOG_LEVEL", flag: "log-level", defaultText: "info",
              help: "trace, debug, info, notice, warning, error or critical."),
        .init(variable: "RESPOOL_CONNECT_TIMEOUT", flag: "connect-timeout", defaultText: "5",
              help: "Seconds an upstream connect (and its handshake) may take."),
        .init(variable: "RESPOOL_SHUTDOWN_TIMEOUT", flag: "shutdown-timeout", defaultText: "25",
              help: "Seconds to finish in-flight commands after SIGTERM/SIGINT before exiting."),
        .init(variable: "RESPOOL_CLIENT_PASSWORD", flag: "client-password", defaultText: "(none: no AUTH needed)",
              help: "Password clients must AUTH (or HELLO AUTH) with, as redis's requirepass; never printed. Upstream credentials come from the URL only."),
        .init(variable: "RESPOOL_KEYS", flag: "keys", defaultText: "warn",
              help: "KEYS guard: allow; warn (log a rate-limited line, count it); deny (error suggesting SCAN); scan (answer KEYS by an incremental SCAN, so the server never blocks)."),
        .init(variable: "RESPOOL_PINNING", flag: "pinning", defaultText: "allow",
              help: "allow: a client that sends a command tying server state to its connection (MONITOR, CLIENT TRACKING) gets an upstream connection of its own while that state lasts, counted like a lease; deny: such commands get an error."),
        .init(variable: "RESPOOL_MASK_SECRETS", flag: "mask-secrets", defaultText: "on",
              help: "on: CONFIG GET replies carrying the upstream's secrets (requirepass, masterauth, tls-key-file-pass, tls-client-key-file-pass) show \"(masked by respool)\" instead of a non-empty value, so an app that knows only respool's address or RESPOOL_CLIENT_PASSWORD cannot read the server's password; off: passed as they are."),
        .init(variable: "RESPOOL_DENY_COMMANDS", flag: "deny-commands", defaultText: "(none)",
              help: "Commands respool answers with a NOPERM error instead of passing them on, e.g. \"FLUSHALL,FLUSHDB,CONFIG|SET,DEBUG\" (NAME or NAME|SUBCOMMAND, case-insensitive, separated by commas); inside MULTI the error makes EXEC fail with EXECABORT, as an ACL denial does."),
        .init(variable: "RESPOOL_DATABASES", flag: "databases", defaultText: "16",
              help: "Number of databases of the server (its `databases` setting): SELECT accepts 0 to this minus 1."),
        .init(variable: "RESPOOL_MAX_BULK_LENGTH", flag: "max-bulk-length", defaultText: "536870912",
              help: "Largest bulk string accepted from a client, in bytes (Redis's proto-max-bulk-len)."),
        .init(variable: "RESPOOL_MAX_MULTIBULK_LENGTH", flag: "max-multibulk-length", defaultText: "2147483647",
              help: "Most arguments accepted in one command."),
    ]

    /// Builds the configuration from `environment` (process environment with flags merged over it).
    /// `hostName` is the fallback for the name prefix.
    /// The configuration of every upstream: one (RESPOOL_URL or REDIS_URL), or one per variable named by
    /// RESPOOL_URLS, each with its SETTING_<VARIABLE> overrides, its port (RESPOOL_PORT + its position, unless 0 or
    /// given for it) and its socket path.
    public static func all(environment env: [String: String], hostName: String = "respool") throws(ConfigError) -> [Config] {
        guard let list = env["RESPOOL_URLS"]?.trimmingSpaces, !list.isEmpty else {
            return [try Config(environment: env, hostName: hostName)]
        }
        let names = list.split(whereSeparator: { $0 == " " || $0 == "," || $0 == "\t" }).map(String.init)
        var seen: Set<String> = []
        for n in names {
            guard let f = n.utf8.first, f == UInt8(ascii: "_") || (f >= 65 && f <= 90) || (f >= 97 && f <= 122),
                  n.utf8.allSatisfy({ $0 == UInt8(ascii: "_") || ($0 >= 48 && $0 <= 57) || ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) }) else {
                throw ConfigError(variable: "RESPOOL_URLS", message: "must list environment variable names, got \"\(n.prefix(40))\"")
            }
            guard seen.insert(n).inserted else { throw ConfigError(variable: "RESPOOL_URLS", message: "names \(n) twice") }
            guard env[n]?.trimmingSpaces.isEmpty == false else {
                throw ConfigError(variable: n, message: "is named by RESPOOL_URLS but not set")
            }
        }
        var configs: [Config] = []
        for (i, n) in names.enumerated() {
            var e = env
            let suffix = "_" + n
            for (k, v) in env where k.hasSuffix(suffix) && k.count > suffix.count {
                let base = String(k.dropLast(suffix.count))
                if options.contains(where: { $0.variable == base }) { e[base] = v }
            }
            if env["RESPOOL_PORT" + suffix] == nil, let p = Int(e["RESPOOL_PORT"]?.trimmingSpaces ?? "6380"), p != 0, p + i <= 65535 {
                e["RESPOOL_PORT"] = String(p + i)
            }
            if env["RESPOOL_SOCKET" + suffix] == nil, i > 0, let path = e["RESPOOL_SOCKET"], !path.isEmpty {
                e["RESPOOL_SOCKET"] = path + "." + n
            }
            do {
                configs.append(try Config(environment: e, hostName: hostName, upstreamVariable: n))
            } catch {
                // A bad override is named as it was given.
                throw env[error.variable + suffix] != nil ? ConfigError(variable: error.variable + suffix, message: error.message) : error
            }
        }
        return configs
    }

    public init(environment env: [String: String], hostName: String = "respool", upstreamVariable: String? = nil) throws(ConfigError) {
        func value(_ name: String) -> String? {
            guard let v = env[name]?.trimmingSpaces, !v.isEmpty else { return nil }
            return v
        }
        func integer(_ name: String, default d: Int, range: ClosedRange<Int>) throws(ConfigError) -> Int {
            guard let text = value(name) else { return d }
            guard let v = Int(text), range.contains(v) else {
                throw ConfigError(variable: name, message: "must be an integer from \(range.lowerBound) to \(range.upperBound), got \"\(text.prefix(40))\"")
            }
            return v
        }
        func seconds(_ name: String, default d: Double, allowZero: Bool) throws(ConfigError) -> Double {
            guard let text = value(name) else { return d }
            guard let v = Double(text), v.isFinite, v >= 0, allowZero || v > 0, v <= 86_400 * 365 else {
                throw ConfigError(variable: name, message: "must be a number of seconds\(allowZero ? "" : " above 0"), got \"\(text.prefix(40))\"")
            }
            return v
        }

        upstreamLabel = upstreamVariable
        if let n = upstreamVariable {
            do { upstream = try RedisURL(parsing: value(n) ?? "") } catch { throw ConfigError(variable: n, message: error.message) }
            upstreamSource = n
        } else if let text = value("RESPOOL_URL") {
            do { upstream = try RedisURL(parsing: text) } catch { throw ConfigError(variable: "RESPOOL_URL", message: error.message) }
            upstreamSource = "RESPOOL_URL"
        } else if let text = value("REDIS_URL") {
            do { upstream = try RedisURL(parsing: text) } catch { throw ConfigError(variable: "REDIS_URL", message: error.message) }
            upstreamSource = "REDIS_URL"
        } else {
            upstream = RedisURL()
            upstreamSource = "default"
        }
        bind = value("RESPOOL_BIND") ?? "127.0.0.1"
        if bind.contains(where: { $0 == " " || $0 == "/" }) {
            throw ConfigError(variable: "RESPOOL_BIND", message: "must be an IP address or host name, got \"\(bind.prefix(40))\"")
        }
        port = try integer("RESPOOL_PORT", default: 6380, range: 0...65535)
        socketPath = value("RESPOOL_SOCKET")
        if let p = socketPath, p.utf8.count > 107 {
            throw ConfigError(variable: "RESPOOL_SOCKET", message: "path is longer than 107 bytes")
        }
        if value("RESPOOL_MAX_SERVER_CONNECTIONS") != nil || value("RESPOOL_PLAN_MAX_CONNECTIONS") == nil {
            maxServerConnections = try integer("RESPOOL_MAX_SERVER_CONNECTIONS", default: 10, range: 1...100_000)
            capSource = value("RESPOOL_MAX_SERVER_CONNECTIONS") != nil ? "RESPOOL_MAX_SERVER_CONNECTIONS" : "default"
        } else {
            let plan = try integer("RESPOOL_PLAN_MAX_CONNECTIONS", default: 0, range: 1...1_000_000)
            let instances = try integer("RESPOOL_INSTANCES", default: 1, range: 1...100_000)
            let reserve = try integer("RESPOOL_RESERVE_CONNECTIONS", default: 2, range: 0...1_000_000)
            maxServerConnections = max(1, (plan - reserve) / instances)
            capSource = "floor((plan \(plan) - reserve \(reserve)) / instances \(instances))"
        }
        waitTimeout = try seconds("RESPOOL_WAIT_TIMEOUT", default: 5, allowZero: false)
        func bytes(_ name: String, default d: Int) throws(ConfigError) -> Int {
            guard let text = value(name)?.lowercased() else { return d }
            let units: [(String, Int)] = [("gb", 1 << 30), ("mb", 1 << 20), ("kb", 1 << 10), ("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10), ("b", 1)]
            var number = Substring(text)
            var multiplier = 1
            if let (suffix, m) = units.first(where: { text.hasSuffix($0.0) }) {
                number = number.dropLast(suffix.count)
                multiplier = m
            }
            guard let v = Int(number.trimmingCharacters()), v > 0, v <= Int(Int32.max) * 16 / multiplier else {
                throw ConfigError(variable: name, message: "must be a size in bytes, optionally with kb, mb or gb, got \"\(text.prefix(40))\"")
            }
            return v * multiplier
        }
        outputHardLimit = try bytes("RESPOOL_CLIENT_OUTPUT_LIMIT", default: 64 << 20)
        outputSoftLimit = try bytes("RESPOOL_CLIENT_OUTPUT_SOFT_LIMIT", default: 16 << 20)
        outputSoftSeconds = try seconds("RESPOOL_CLIENT_OUTPUT_SOFT_SECONDS", default: 60, allowZero: true)
        clientIdleTimeout = try seconds("RESPOOL_CLIENT_IDLE_TIMEOUT", default: 300, allowZero: true)
        minServerConnections = try integer("RESPOOL_MIN_SERVER_CONNECTIONS", default: 1, range: 0...100_000)
        if minServerConnections > maxServerConnections {
            throw ConfigError(variable: "RESPOOL_MIN_SERVER_CONNECTIONS", message: "must not exceed the cap (\(maxServerConnections))")
        }
        serverIdleTimeout = try seconds("RESPOOL_SERVER_IDLE_TIMEOUT", default: 120, allowZero: true)
        serverLifetime = try seconds("RESPOOL_SERVER_LIFETIME", default: 3600, allowZero: true)
        serverKeepalive = try seconds("RESPOOL_SERVER_KEEPALIVE", default: 60, allowZero: true)
        commandTimeout = try seconds("RESPOOL_COMMAND_TIMEOUT", default: 0, allowZero: true)
        serverCheckAfter = try seconds("RESPOOL_SERVER_CHECK_AFTER", default: 30, allowZero: true)
        statsBind = value("RESPOOL_STATS_BIND") ?? "127.0.0.1"
        statsInterval = try seconds("RESPOOL_STATS_INTERVAL", default: 60, allowZero: true)
        advisorInterval = try seconds("RESPOOL_ADVISOR_INTERVAL", default: 60, allowZero: true)
        if value("RESPOOL_STATS_PORT")?.lowercased() == "off" {
            statsPort = -1
        } else {
            statsPort = try integer("RESPOOL_STATS_PORT", default: 9122, range: 0...65535)
        }
        maxPipeline = try integer("RESPOOL_MAX_PIPELINE", default: 10_000, range: 2...100_000_000)
        transactionIdleTimeout = try seconds("RESPOOL_TRANSACTION_IDLE_TIMEOUT", default: 60, allowZero: true)
        maxClients = try integer("RESPOOL_MAX_CLIENTS", default: 10_000, range: 1...10_000_000)
        let rawName = value("RESPOOL_NAME") ?? value("DYNO") ?? hostName
        guard !rawName.utf8.contains(where: { $0 <= 32 || $0 >= 127 }) else {
            throw ConfigError(variable: value("RESPOOL_NAME") != nil ? "RESPOOL_NAME" : "DYNO",
                              message: "must not contain spaces or special characters (Redis client names cannot)")
        }
        namePrefix = rawName
        if let text = value("RESPOOL_LOG_LEVEL") {
            guard let l = LogLevelSetting(rawValue: text.lowercased()) else {
                throw ConfigError(variable: "RESPOOL_LOG_LEVEL",
                                  message: "must be one of \(LogLevelSetting.allCases.map(\.rawValue).joined(separator: ", ")), got \"\(text.prefix(40))\"")
            }
            logLevel = l
        } else {
            logLevel = .info
        }
        connectTimeout = try seconds("RESPOOL_CONNECT_TIMEOUT", default: 5, allowZero: false)
        shutdownTimeout = try seconds("RESPOOL_SHUTDOWN_TIMEOUT", default: 25, allowZero: true)
        maxBulkLength = try integer("RESPOOL_MAX_BULK_LENGTH", default: 512 << 20, range: 1...(Int(Int32.max) * 2))
        maxMultibulkLength = try integer("RESPOOL_MAX_MULTIBULK_LENGTH", default: Int(Int32.max), range: 1...Int(Int32.max))
        databases = try integer("RESPOOL_DATABASES", default: 16, range: 1...1_000_000)
        clientPassword = env["RESPOOL_CLIENT_PASSWORD"].flatMap { $0.isEmpty ? nil : $0 }
        if let text = value("RESPOOL_KEYS") {
            guard let m = KeysMode(rawValue: text.lowercased()) else {
                throw ConfigError(variable: "RESPOOL_KEYS", message: "must be allow, warn, deny or scan, got \"\(text.prefix(40))\"")
            }
            keysMode = m
        } else {
            keysMode = .warn
        }
        if let text = value("RESPOOL_PINNING") {
            switch text.lowercased() {
            case "allow": pinning = true
            case "deny": pinning = false
            default: throw ConfigError(variable: "RESPOOL_PINNING", message: "must be allow or deny, got \"\(text.prefix(40))\"")
            }
        } else {
            pinning = true
        }
        if let text = value("RESPOOL_MASK_SECRETS") {
            switch text.lowercased() {
            case "on", "yes", "true", "1": maskSecrets = true
            case "off", "no", "false", "0": maskSecrets = false
            default: throw ConfigError(variable: "RESPOOL_MASK_SECRETS", message: "must be on or off, got \"\(text.prefix(40))\"")
            }
        } else {
            maskSecrets = true
        }
        deny = try value("RESPOOL_DENY_COMMANDS").map { (t) throws(ConfigError) in try DenyList(parsing: t) } ?? DenyList()
        tls = TLSSettings()
        let tlsVariables = ["RESPOOL_TLS_VERIFY", "RESPOOL_TLS_CA_FILE", "RESPOOL_TLS_CERT_FILE", "RESPOOL_TLS_KEY_FILE", "RESPOOL_TLS_SERVER_NAME"]
        if !upstream.tls, let set = tlsVariables.first(where: { value($0) != nil }) {
            throw ConfigError(variable: set, message: "is set but the upstream (\(upstreamSource)) is redis://; use rediss:// for TLS")
        }
        if let text = value("RESPOOL_TLS_VERIFY") {
            switch text.lowercased() {
            case "full": tls.verify = true
            case "none": tls.verify = false
            default: throw ConfigError(variable: "RESPOOL_TLS_VERIFY", message: "must be full or none, got \"\(text.prefix(40))\"")
            }
        }
        tls.caFile = value("RESPOOL_TLS_CA_FILE")
        tls.certFile = value("RESPOOL_TLS_CERT_FILE")
        tls.keyFile = value("RESPOOL_TLS_KEY_FILE")
        if tls.certFile != nil && tls.keyFile == nil {
            throw ConfigError(variable: "RESPOOL_TLS_KEY_FILE", message: "is needed with RESPOOL_TLS_CERT_FILE")
        }
        if tls.keyFile != nil && tls.certFile == nil {
            throw ConfigError(variable: "RESPOOL_TLS_CERT_FILE", message: "is needed with RESPOOL_TLS_KEY_FILE")
        }
        tls.serverName = value("RESPOOL_TLS_SERVER_NAME")
        if let n = tls.serverName, n.utf8.contains(where: { $0 <= 32 || $0 >= 127 || $0 == UInt8(ascii: "/") }) {
            throw ConfigError(variable: "RESPOOL_TLS_SERVER_NAME", message: "must be a host name or IP address, got \"\(n.prefix(40))\"")
        }
        if upstream.db >= databases {
            throw ConfigError(variable: upstreamSource, message: "database \(upstream.db) is not below RESPOOL_DATABASES (\(databases))")
        }
    }
}

extension Substring {
    func trimmingCharacters() -> String { String(self).trimmingSpaces }
}

extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" || f == "\n" || f == "\r" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\n" || l == "\r" { s = s.dropLast() }
        return String(s)
    }
}
