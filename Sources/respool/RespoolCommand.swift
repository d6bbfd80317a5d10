// RespoolCommand: the command line. Every setting is an environment variable (12-factor) and also a flag; flags win.
import ArgumentParser
import Glibc
import Logging
import Respool
import RespoolCore

func writeStderr(_ line: String) {
    var bytes = Array((line + "\n").utf8)
    _ = bytes.withUnsafeMutableBytes { Glibc.write(2, $0.baseAddress, $0.count) }
}

private func help(_ variable: String) -> ArgumentHelp {
    guard let o = Config.options.first(where: { $0.variable == variable }) else { return ArgumentHelp("") }
    return ArgumentHelp("\(o.help) [env: \(o.variable)] (default: \(o.defaultText))")
}

struct RespoolCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "respool",
        abstract: "A connection-pooling sidecar proxy for Redis.",
        discussion: """
            Point any Redis client at respool; it multiplexes all client connections onto a small, bounded pool of \
            upstream connections. Every option is read from its environment variable; a flag overrides it.
            """
    )

    @Option(name: .customLong("url"), help: help("RESPOOL_URL")) var url: String?
    @Option(name: .customLong("tls-verify"), help: help("RESPOOL_TLS_VERIFY")) var tlsVerify: String?
    @Option(name: .customLong("tls-ca-file"), help: help("RESPOOL_TLS_CA_FILE")) var tlsCAFile: String?
    @Option(name: .customLong("tls-cert-file"), help: help("RESPOOL_TLS_CERT_FILE")) var tlsCertFile: String?
    @Option(name: .customLong("tls-key-file"), help: help("RESPOOL_TLS_KEY_FILE")) var tlsKeyFile: String?
    @Option(name: .customLong("tls-server-name"), help: help("RESPOOL_TLS_SERVER_NAME")) var tlsServerName: String?
    @Option(name: .customLong("bind"), help: help("RESPOOL_BIND")) var bind: String?
    @Option(name: .customLong("port"), help: help("RESPOOL_PORT")) var port: String?
    @Option(name: .customLong("socket"), help: help("RESPOOL_SOCKET")) var socket: String?
    @Option(name: .customLong("max-server-connections"), help: help("RESPOOL_MAX_SERVER_CONNECTIONS")) var maxServerConnections: String?
    @Option(name: .customLong("max-clients"), help: help("RESPOOL_MAX_CLIENTS")) var maxClients: String?
    @Option(name: .customLong("plan-max-connections"), help: help("RESPOOL_PLAN_MAX_CONNECTIONS")) var planMaxConnections: String?
    @Option(name: .customLong("instances"), help: help("RESPOOL_INSTANCES")) var instances: String?
    @Option(name: .customLong("reserve-connections"), help: help("RESPOOL_RESERVE_CONNECTIONS")) var reserveConnections: String?
    @Option(name: .customLong("wait-timeout"), help: help("RESPOOL_WAIT_TIMEOUT")) var waitTimeout: String?
    @Option(name: .customLong("client-idle-timeout"), help: help("RESPOOL_CLIENT_IDLE_TIMEOUT")) var clientIdleTimeout: String?
    @Option(name: .customLong("min-server-connections"), help: help("RESPOOL_MIN_SERVER_CONNECTIONS")) var minServerConnections: String?
    @Option(name: .customLong("server-idle-timeout"), help: help("RESPOOL_SERVER_IDLE_TIMEOUT")) var serverIdleTimeout: String?
    @Option(name: .customLong("server-lifetime"), help: help("RESPOOL_SERVER_LIFETIME")) var serverLifetime: String?
    @Option(name: .customLong("server-keepalive"), help: help("RESPOOL_SERVER_KEEPALIVE")) var serverKeepalive: String?
    @Option(name: .customLong("command-timeout"), help: help("RESPOOL_COMMAND_TIMEOUT")) var commandTimeout: String?
    @Option(name: .customLong("server-check-after"), help: help("RESPOOL_SERVER_CHECK_AFTER")) var serverCheckAfter: String?
    @Option(name: .customLong("stats-bind"), help: help("RESPOOL_STATS_BIND")) var statsBind: String?
    @Option(name: .customLong("stats-port"), help: help("RESPOOL_STATS_PORT")) var statsPort: String?
    @Option(name: .customLong("stats-interval"), help: help("RESPOOL_STATS_INTERVAL")) var statsInterval: String?
    @Option(name: .customLong("advisor-interval"), help: help("RESPOOL_ADVISOR_INTERVAL")) var advisorInterval: String?
    @Option(name: .customLong("max-pipeline"), help: help("RESPOOL_MAX_PIPELINE")) var maxPipeline: String?
    @Option(name: .customLong("client-output-limit"), help: help("RESPOOL_CLIENT_OUTPUT_LIMIT")) var clientOutputLimit: String?
    @Option(name: .customLong("client-output-soft-limit"), help: help("RESPOOL_CLIENT_OUTPUT_SOFT_LIMIT")) var clientOutputSoftLimit: String?
    @Option(name: .customLong("client-output-soft-seconds"), help: help("RESPOOL_CLIENT_OUTPUT_SOFT_SECONDS")) var clientOutputSoftSeconds: String?
    @Option(name: .customLong("transaction-idle-timeout"), help: help("RESPOOL_TRANSACTION_IDLE_TIMEOUT")) var transactionIdleTimeout: String?
    @Option(name: .customLong("name"), help: help("RESPOOL_NAME")) var name: String?
    @Option(name: .customLong("log-level"), help: help("RESPOOL_LOG_LEVEL")) var logLevel: String?
    @Option(name: .customLong("connect-timeout"), help: help("RESPOOL_CONNECT_TIMEOUT")) var connectTimeout: String?
    @Option(name: .customLong("shutdown-timeout"), help: help("RESPOOL_SHUTDOWN_TIMEOUT")) var shutdownTimeout: String?
    @Option(name: .customLong("databases"), help: help("RESPOOL_DATABASES")) var databases: String?
    @Option(name: .customLong("client-password"), help: help("RESPOOL_CLIENT_PASSWORD")) var clientPassword: String?
    @Option(name: .customLong("keys"), help: help("RESPOOL_KEYS")) var keys: String?
    @Option(name: .customLong("max-bulk-length"), help: help("RESPOOL_MAX_BULK_LENGTH")) var maxBulkLength: String?
    @Option(name: .customLong("max-multibulk-length"), help: help("RESPOOL_MAX_MULTIBULK_LENGTH")) var maxMultibulkLength: String?

    /// The process environment with the flags merged over it.
    func environment() -> [String: String] {
        var env: [String: String] = [:]
        var p = environ
        while let entry = p.pointee {
            let s = String(cString: entry)
            if let eq = s.firstIndex(of: "=") { env[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
            p += 1
        }
        let flags: [(String, String?)] = [
            ("RESPOOL_URL", url), ("RESPOOL_TLS_VERIFY", tlsVerify), ("RESPOOL_TLS_CA_FILE", tlsCAFile),
            ("RESPOOL_TLS_CERT_FILE", tlsCertFile), ("RESPOOL_TLS_KEY_FILE", tlsKeyFile), ("RESPOOL_TLS_SERVER_NAME", tlsServerName),
            ("RESPOOL_BIND", bind), ("RESPOOL_PORT", port), ("RESPOOL_SOCKET", socket),
            ("RESPOOL_MAX_SERVER_CONNECTIONS", maxServerConnections), ("RESPOOL_MAX_CLIENTS", maxClients),
            ("RESPOOL_NAME", name), ("RESPOOL_LOG_LEVEL", logLevel), ("RESPOOL_CONNECT_TIMEOUT", connectTimeout),
            ("RESPOOL_SHUTDOWN_TIMEOUT", shutdownTimeout), ("RESPOOL_MAX_BULK_LENGTH", maxBulkLength),
            ("RESPOOL_MAX_MULTIBULK_LENGTH", maxMultibulkLength), ("RESPOOL_DATABASES", databases),
            ("RESPOOL_CLIENT_PASSWORD", clientPassword), ("RESPOOL_KEYS", keys),
            ("RESPOOL_PLAN_MAX_CONNECTIONS", planMaxConnections), ("RESPOOL_INSTANCES", instances),
            ("RESPOOL_RESERVE_CONNECTIONS", reserveConnections), ("RESPOOL_WAIT_TIMEOUT", waitTimeout),
            ("RESPOOL_CLIENT_IDLE_TIMEOUT", clientIdleTimeout), ("RESPOOL_MIN_SERVER_CONNECTIONS", minServerConnections),
            ("RESPOOL_SERVER_IDLE_TIMEOUT", serverIdleTimeout), ("RESPOOL_SERVER_LIFETIME", serverLifetime),
            ("RESPOOL_SERVER_KEEPALIVE", serverKeepalive), ("RESPOOL_COMMAND_TIMEOUT", commandTimeout),
            ("RESPOOL_SERVER_CHECK_AFTER", serverCheckAfter), ("RESPOOL_STATS_BIND", statsBind), ("RESPOOL_STATS_PORT", statsPort),
            ("RESPOOL_STATS_INTERVAL", statsInterval), ("RESPOOL_ADVISOR_INTERVAL", advisorInterval),
            ("RESPOOL_MAX_PIPELINE", maxPipeline), ("RESPOOL_CLIENT_OUTPUT_LIMIT", clientOutputLimit),
            ("RESPOOL_CLIENT_OUTPUT_SOFT_LIMIT", clientOutputSoftLimit), ("RESPOOL_CLIENT_OUTPUT_SOFT_SECONDS", clientOutputSoftSeconds), ("RESPOOL_TRANSACTION_IDLE_TIMEOUT", transactionIdleTimeout),
        ]
        for (variable, value) in flags { if let value { env[variable] = value } }
        return env
    }

    func start() -> Int32 {
        var host = [CChar](repeating: 0, count: 256)
        gethostname(&host, host.count - 1)
        let hostName = String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let config: Config
        do {
            config = try Config(environment: environment(), hostName: hostName.isEmpty ? "respool" : hostName)
        } catch {
            writeStderr("respool: \(error)")
            return 2
        }
        let level = Logger.Level(rawValue: config.logLevel.rawValue) ?? .info
        let logger = Logger(label: "respool") { label in LogfmtHandler(label: label, level: level) }
        do {
            let proxy = try Proxy(config: config, logger: logger)
            return try proxy.run()
        } catch let error as ConfigError {
            // A setting that parsed but cannot be used (a TLS file that does not load): as any bad value, exit 2.
            writeStderr("respool: \(error)")
            return 2
        } catch {
            logger.critical("cannot start", metadata: ["error": "\(error)"])
            writeStderr("respool: \(error)")
            return 1
        }
    }
}
