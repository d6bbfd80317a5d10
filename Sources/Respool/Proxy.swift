// Proxy: owns the event loop, the listeners, the clients and the pool; runs the loop (one iteration, then the resumes,
// the flush of every dirty connection and the freeing of what closed) and carries out shutdown.
import EventLoop
import Glibc
import Logging
import RESP
import RespoolCore

/// Plain counters (the stats endpoint and metrics table come later; these are what the logs report).
struct Stats {
    var clientsAccepted = 0
    var clientsRejected = 0
    var clientBytesIn = 0
    var upstreamBytesIn = 0
    /// Bytes written to clients and to upstream connections.
    var bytesOut = 0
    var upstreamBytesOut = 0
    /// Error replies from the server passed to clients, and commands sent on leases.
    var errorReplies = 0
    var repliesServed = 0
    var commandsLeased = 0
    var commandsForwarded = 0
    var commandsLocal = 0
    var commandsRefused = 0
    var leasesGranted = 0
    var pubsubSubscribes = 0
    var waitTimeouts = 0
    var idleTimeouts = 0
    var outputLimitCloses = 0
    var upstreamRecycled = 0
    var commandTimeouts = 0
    var pipelineThrottles = 0
    var upstreamChecks = 0
    var oomErrors = 0
    var transactionIdleTimeouts = 0
    var keysSeen = 0
    var keysDenied = 0
    var keysScanned = 0
    var pubsubMessagesFannedOut = 0
    var commandsFailed = 0
    var protocolErrors = 0
    var upstreamConnects = 0
    var upstreamConnectFailures = 0
    var upstreamLost = 0
}

public final class Proxy: AcceptHandler {
    public let config: Config
    let logger: Logger
    let base: EventBase
    let limits: RESPLimits
    /// RESPOOL_CLIENT_PASSWORD as bytes (nil: clients need no AUTH).
    let clientPassword: [UInt8]?
    let upstreamLimits: RESPLimits
    private(set) var pool: Pool!
    private var listeners: [Listener] = []
    private(set) var clients: [Int: ClientConnection] = [:]
    private var openClients = 0
    var dirty = Ring<Unmanaged<Connection>>(capacity: 1024)
    private var resumes: [ClientConnection] = []
    var graveyard: [AnyObject] = []
    let scratch: UnsafeMutableRawPointer
    let scratchSize = 256 << 10
    private var nextClientId = 1
    private var running = true
    private(set) var shuttingDown = false
    private var exitCode: Int32 = 0
    private var signalHandler: SignalHandler!
    private var signals: [SignalWatch] = []
    private var shutdownTimer: Timer?
    var stats = Stats()
    let startedAt: Double

    /// The TLS settings of every upstream connection (rediss:// only).
    let tlsContext: TLSContext?
    /// The name sent as SNI and checked against the upstream's certificate.
    let tlsServerName: String

    /// Throws a ConfigError (exit 2) when a TLS file does not load, a SystemError when the event loop cannot start.
    public init(config: Config, logger: Logger) throws {
        self.config = config
        self.logger = logger
        tlsServerName = config.tls.serverName ?? config.upstream.host
        if config.upstream.tls {
            let t = config.tls
            do {
                tlsContext = try TLSContext(verify: t.verify, caFile: t.caFile, certFile: t.certFile, keyFile: t.keyFile)
            } catch {
                switch error {
                case .caFile(let why): throw ConfigError(variable: "RESPOOL_TLS_CA_FILE", message: why)
                case .certificate(let why): throw ConfigError(variable: "RESPOOL_TLS_CERT_FILE", message: why)
                case .privateKey(let why): throw ConfigError(variable: "RESPOOL_TLS_KEY_FILE", message: why)
                case .context(let why): throw ConfigError(variable: config.upstreamSource, message: why)
                }
            }
        } else {
            tlsContext = nil
        }
        base = try EventBase()
        clientPassword = config.clientPassword.map { Array($0.utf8) }
        limits = RESPLimits(maxBulkLength: config.maxBulkLength, maxMultibulkLength: config.maxMultibulkLength)
        upstreamLimits = RESPLimits(maxBulkLength: Int.max / 4, maxMultibulkLength: Int.max / 4,
                                    maxInlineLength: 64 << 10, maxReplyLineLength: 64 << 20, maxDepth: 1024)
        scratch = .allocate(byteCount: scratchSize, alignment: 16)
        startedAt = monotonicNow()
        super.init()
        pool = Pool(proxy: self, cap: config.maxServerConnections)
        signalHandler = SignalHandler(proxy: self)
        janitor = Janitor(proxy: self)
    }

    deinit { scratch.deallocate() }

    /// Listens, connects the first upstream connection and runs until shutdown. Returns the exit code.
    public func run() throws(SystemError) -> Int32 {
        tuneMalloc()
        ignoreSIGPIPE()
        let tcp = try Listener(base: base, host: config.bind, port: config.port, handler: self)
        listeners.append(tcp)
        var meta: Logger.Metadata = ["listen": "\(tcp.address)"]
        listenDescription = "\(tcp.address)"
        if let path = config.socketPath {
            listeners.append(try Listener(base: base, unixPath: path, handler: self))
            meta["socket"] = "\(path)"
        }
        let resume = OneShot { [weak self] in self?.listeners.forEach { $0.resume() } }
        acceptResume = (resume, try Timer(base: base, handler: resume))
        signals.append(try SignalWatch(base: base, signal: SIGTERM, handler: signalHandler, tag: .primary))
        signals.append(try SignalWatch(base: base, signal: SIGINT, handler: signalHandler, tag: .tertiary))
        signals.append(try SignalWatch(base: base, signal: SIGUSR1, handler: signalHandler, tag: .secondary))
        meta["upstream"] = "\(config.upstream)"
        meta["upstream_from"] = "\(config.upstreamSource)"
        if config.upstream.tls {
            meta["tls_verify"] = "\(config.tls.verify ? "full" : "none")"
            meta["tls_server_name"] = "\(tlsServerName)"
            if let ca = config.tls.caFile { meta["tls_ca_file"] = "\(ca)" }
            if let cert = config.tls.certFile { meta["tls_cert_file"] = "\(cert)" }
        }
        meta["max_server_connections"] = "\(config.maxServerConnections)"
        meta["cap_from"] = "\(config.capSource)"
        meta["max_clients"] = "\(config.maxClients)"
        meta["name"] = "\(config.namePrefix)"
        meta["client_auth"] = "\(config.clientPassword == nil ? "off" : "required")"
        meta["backend"] = "\(base.backendName)"
        try janitor.start()
        if config.statsPort >= 0 {
            let endpoint = StatsEndpoint(proxy: self)
            let server = try HTTPServer(base: base, host: config.statsBind, port: config.statsPort, handler: endpoint)
            statsEndpoint = endpoint
            statsServer = server
            meta["stats"] = "\(server.address.map { "\($0)" } ?? "\(config.statsBind):\(config.statsPort)")"
        }
        meta["client_idle_timeout"] = "\(config.clientIdleTimeout)s"
        meta["transaction_idle_timeout"] = "\(config.transactionIdleTimeout)s"
        meta["wait_timeout"] = "\(config.waitTimeout)s"
        meta["min_server_connections"] = "\(config.minServerConnections)"
        meta["server_idle_timeout"] = "\(config.serverIdleTimeout)s"
        meta["server_lifetime"] = "\(config.serverLifetime)s"
        pool.keepWarm()
        logger.info("respool started", metadata: meta)
        if config.upstream.tls && !config.tls.verify {
            logger.warning("TLS certificate verification is off (RESPOOL_TLS_VERIFY=none): traffic is encrypted but the upstream's identity is not checked")
        }

        while running {
            base.runOnce()
            afterIteration()
        }
        if let server = statsServer {
            // What the stats endpoint still owes is answered (a /healthz waiting for its PING gets 503) and given a
            // few non-blocking loop passes to be written before evhttp is freed.
            healthAnswered(problem: "shutting down")
            server.answerPending()
            for _ in 0..<5 { base.runNonBlocking() }
            server.close()
        }
        logger.info("respool stopped", metadata: ["exit_code": "\(exitCode)"])
        return exitCode
    }

    /// Work done once per loop iteration: resume stalled clients, write every dirty connection once, free the closed.
    @inline(__always)
    private func afterIteration() {
        if !pendingCloses.isEmpty {
            let closes = pendingCloses
            pendingCloses.removeAll()
            for (c, reason) in closes { c.close(reason: reason) }
        }
        if !resumes.isEmpty {
            let r = resumes
            resumes.removeAll(keepingCapacity: true)
            for c in r { c.resume() }
        }
        while let c = dirty.popFirst() {
            c._withUnsafeGuaranteedRef { $0.flush() }
        }
        if !graveyard.isEmpty { graveyard.removeAll(keepingCapacity: true) }
        if shuttingDown { checkShutdownDone() }
    }

    private var pendingCloses: [(ClientConnection, String)] = []

    /// Closes a client after the current callbacks (never inside an upstream's reply loop).
    func scheduleClose(_ c: ClientConnection, reason: String) {
        pendingCloses.append((c, reason))
    }

    func scheduleResume(_ c: ClientConnection) {
        resumes.append(c)
    }

    @inline(__always)
    func noteWritten(_ c: Connection, _ n: Int) {
        if c.isUpstream {
            stats.upstreamBytesOut &+= n
            unsafeDowncast(c, to: UpstreamConnection.self).startProbe()
        } else {
            stats.bytesOut &+= n
        }
    }

    // MARK: clients

    public override func accepted(fd: Int32, isUnix: Bool) {
        if shuttingDown {
            Socket.close(fd)
            return
        }
        if openClients >= config.maxClients {
            stats.clientsRejected &+= 1
            Socket.writeBestEffort(fd, "-ERR max number of clients reached\r\n")
            Socket.close(fd)
            logger.warning("client rejected", metadata: ["reason": "max_clients", "max_clients": "\(config.maxClients)"])
            return
        }
        if !isUnix {
            Socket.setNoDelay(fd)
            Socket.setKeepAlive(fd)   // a vanished peer is found even when it never sends again
        }
        let c = ClientConnection(proxy: self, fd: fd, id: nextClientId, isUnix: isUnix)
        nextClientId += 1
        do {
            try c.setUpEvents(read: true)
        } catch {
            logger.error("client setup failed", metadata: ["error": "\(error)"])
            c.closeSocket()
            return
        }
        clients[c.id] = c
        if janitor.enabled { activity.append(c) }
        openClients += 1
        stats.clientsAccepted &+= 1
    }

    public override func acceptFailed(_ error: SystemError) {
        logger.error("accept failed", metadata: ["error": "\(error)"])
        // Out of descriptors: stop accepting briefly instead of spinning; one timer, made at start-up, resumes.
        for l in listeners { l.pause() }
        acceptResume?.1.schedule(after: 0.1)
    }

    /// Resumes the listeners after an accept failure (created once in `run`).
    private var acceptResume: (OneShot, Timer)?

    private var graveyardTimers: [(OneShot, Timer)] = []

    func clientClosed(_ c: ClientConnection, reason: String) {
        openClients -= 1
    }

    private var hubs: [Int: PubSubHub] = [:]
    private var statsServer: HTTPServer?
    private var statsEndpoint: StatsEndpoint?
    private(set) var listenDescription = ""
    var activity = ActivityList()
    private var janitor: Janitor!
    var clientCount: Int { openClients }
    var keysWarnedAt = -1_000_000.0
    var keysSinceWarning = 0

    /// The pub/sub hub of a protocol (created on first use).
    func hub(proto: Int) -> PubSubHub {
        if let h = hubs[proto] { return h }
        let h = PubSubHub(proxy: self, proto: proto)
        hubs[proto] = h
        return h
    }

    var uptime: Double { monotonicNow() - startedAt }

    // MARK: advisor and periodic stats

    /// Latency of sampled commands (read to reply handed over) and of waits for a connection.
    var commandDurations = LatencyHistogram()
    var waitDurations = LatencyHistogram()
    /// Upstream round trips (one request per shared connection at a time, see UpstreamConnection.startProbe).
    var roundTrips = LatencyHistogram()
    var sampleCountdown = 0

    private(set) var serverFigures = ServerFigures()
    private(set) var advice: [Advice] = []
    private var adviceWarnedAt: [Advice: Double] = [:]
    private var oomAtLastPoll = 0
    private var keysAtLastPoll = 0
    private var nextAdvisorPoll = 0.0
    private var nextStatsLine = 0.0
    private var commandsAtLastLine = 0

    /// Once a second from the janitor: poll INFO every RESPOOL_ADVISOR_INTERVAL, log the stats line every
    /// RESPOOL_STATS_INTERVAL.
    func periodic(now: Double) {
        if config.advisorInterval > 0 && now >= nextAdvisorPoll {
            nextAdvisorPoll += config.advisorInterval
            if nextAdvisorPoll <= now { nextAdvisorPoll = now + config.advisorInterval }
            if let u = pool.readyShared {
                u.requestInfo()
            }
        }
        if config.statsInterval > 0 {
            if nextStatsLine == 0 { nextStatsLine = now + config.statsInterval }
            if now >= nextStatsLine {
                let commands = stats.commandsForwarded + stats.commandsLocal
                let rate = Double(commands - commandsAtLastLine) / config.statsInterval
                commandsAtLastLine = commands
                // On the interval's own cadence: the janitor's tick never fires early, so "now + interval" drifted
                // to every other tick with a 1 s interval.
                nextStatsLine += config.statsInterval
                if nextStatsLine <= now { nextStatsLine = now + config.statsInterval }
                let ups = pool.upstreams
                logger.info("stats", metadata: [
                    "clients": "\(openClients)", "upstreams_shared": "\(ups.filter { !$0.leased && $0.hub == nil }.count)",
                    "upstreams_leased": "\(pool.leasedCount)", "commands_per_s": "\(Int(rate))", "waiting": "\(pool.waiterCount)",
                    "wait_timeouts": "\(stats.waitTimeouts)", "commands_failed": "\(stats.commandsFailed)",
                    "protocol_errors": "\(stats.protocolErrors)", "oom_errors": "\(stats.oomErrors)",
                    "p50": "\(commandDurations.quantile(0.5).map(Metrics.logSeconds) ?? "-")",
                    "p99": "\(commandDurations.quantile(0.99).map(Metrics.logSeconds) ?? "-")",
                    "upstream_p99": "\(roundTrips.quantile(0.99).map(Metrics.logSeconds) ?? "-")",
                ])
            }
        }
    }

    /// A fresh INFO: figures for the metrics, advice for /stats, one warning line per advice per 10 minutes.
    func advisorPolled(_ figures: ServerFigures) {
        serverFigures = figures
        advice = Advisor.advise(figures, oomErrorsSinceLastPoll: stats.oomErrors - oomAtLastPoll,
                                keysSinceLastPoll: stats.keysSeen - keysAtLastPoll)
        oomAtLastPoll = stats.oomErrors
        keysAtLastPoll = stats.keysSeen
        let now = base.now()
        for a in advice where now - (adviceWarnedAt[a] ?? -1_000_000) >= 600 {
            adviceWarnedAt[a] = now
            var meta: Logger.Metadata = ["advice": "\(a.rawValue)"]
            if let used = figures.usedMemory { meta["used_memory"] = "\(used)" }
            if let max = figures.maxMemory { meta["maxmemory"] = "\(max)" }
            if let policy = figures.maxMemoryPolicy { meta["maxmemory_policy"] = "\(policy)" }
            if let c = figures.connectedClients { meta["connected_clients"] = "\(c)" }
            if let m = figures.maxClients { meta["maxclients"] = "\(m)" }
            logger.warning("\(a.message)", metadata: meta)
        }
    }

    var subscribedChannels: Int { hubs.values.reduce(0) { $0 + $1.channelCount } }

    // MARK: health (/healthz)

    /// /healthz requests waiting for the upstream's answer to one PING (later requests join the one in flight).
    private var healthWaiters: [HTTPReply] = []
    private var healthTimer: (OneShot, Timer)?
    static let healthTimeout = 2.0

    /// Healthy means: respool accepts clients and the upstream answers PING on a shared connection within 2 s.
    func checkHealth(_ reply: HTTPReply) {
        var problem: String? = shuttingDown ? "shutting down" : nil
        let u = pool.readyShared
        if problem == nil && u == nil {
            problem = "no ready upstream connection" + (pool.lastError.map { " (\($0))" } ?? "")
        }
        if let problem {
            StatsEndpoint.sendHealth(reply, problem: problem)
            return
        }
        healthWaiters.append(reply)
        if healthWaiters.count > 1 { return }
        u!.healthPing()
        if healthTimer == nil {
            let h = OneShot { [weak self] in
                self?.healthAnswered(problem: "upstream did not answer PING within \(Proxy.healthTimeout)s")
            }
            if let t = try? Timer(base: base, handler: h) { healthTimer = (h, t) }
        }
        healthTimer?.1.schedule(after: Proxy.healthTimeout)
    }

    /// The PING answered (problem nil), failed or timed out: every waiting /healthz request gets the verdict.
    func healthAnswered(problem: String?) {
        guard !healthWaiters.isEmpty else { return }   // a late PONG after the timeout
        healthTimer?.1.cancel()
        let waiters = healthWaiters
        healthWaiters.removeAll()
        for w in waiters { StatsEndpoint.sendHealth(w, problem: problem) }
    }

    /// Open and closing clients in the order they connected (CLIENT LIST, CLIENT KILL).
    var clientsByID: [ClientConnection] { clients.values.sorted { $0.id < $1.id } }

    /// Forgets a closed client once no reply for it is outstanding.
    func reap(_ c: ClientConnection) {
        // Parked first: the registry may hold the last strong reference while `c` is borrowed by a callback.
        guard clients[c.id] != nil else { return }
        graveyard.append(c)
        clients.removeValue(forKey: c.id)
    }

    // MARK: shutdown

    func beginShutdown(signal: String) {
        if shuttingDown {
            logger.warning("second signal, exiting at once", metadata: ["signal": "\(signal)"])
            exitCode = 1
            running = false
            return
        }
        shuttingDown = true
        logger.info("shutting down", metadata: ["signal": "\(signal)", "clients": "\(openClients)",
                                                "in_flight": "\(pool.totalPending)", "timeout": "\(config.shutdownTimeout)s"])
        for l in listeners { l.close() }
        listeners.removeAll()
        // Readiness probes waiting for a PING flip to 503 at once (new ones get it from checkHealth).
        healthAnswered(problem: "shutting down")
        // Commands already read are answered; nothing new is read.
        for c in clients.values { c.disableReading() }
        let h = OneShot { [weak self] in
            guard let self else { return }
            self.logger.warning("shutdown timeout, closing with commands in flight", metadata: ["in_flight": "\(self.pool.totalPending)"])
            self.running = false
        }
        if let t = try? Timer(base: base, handler: h) {
            t.schedule(after: config.shutdownTimeout)
            shutdownTimer = t
            graveyardTimers.append((h, t))
        }
        checkShutdownDone()
    }

    private func checkShutdownDone() {
        // Blocked commands on leased connections are not waited for: their connections are closed below and their
        // clients get an error.
        if pool.sharedPending > 0 { return }
        for c in clients.values where !c.isClosed && (!c.out.isEmpty || c.stall != .none) {
            if c.stall != .none { c.close(reason: "shutdown") } else { return }
        }
        pool.closeAll()
        // Clients blocked on a leased connection just got an error reply: one last write, then everyone is closed.
        for c in clients.values where !c.isClosed && !c.out.isEmpty { c.flush() }
        for c in clients.values where !c.isClosed { c.close(reason: "shutdown") }
        running = false
    }

    func logStats() {
        logger.info("stats", metadata: [
            "clients": "\(openClients)", "upstreams": "\(pool.count)", "in_flight": "\(pool.totalPending)",
            "commands_forwarded": "\(stats.commandsForwarded)", "commands_local": "\(stats.commandsLocal)",
            "commands_refused": "\(stats.commandsRefused)", "commands_failed": "\(stats.commandsFailed)",
            "clients_accepted": "\(stats.clientsAccepted)", "clients_rejected": "\(stats.clientsRejected)",
            "protocol_errors": "\(stats.protocolErrors)", "upstream_connects": "\(stats.upstreamConnects)",
            "upstream_connect_failures": "\(stats.upstreamConnectFailures)", "upstream_lost": "\(stats.upstreamLost)",
            "leases": "\(pool.leasedCount)", "waiting": "\(pool.waiterCount)", "leases_granted": "\(stats.leasesGranted)", "wait_timeouts": "\(stats.waitTimeouts)",
            "idle_timeouts": "\(stats.idleTimeouts)", "transaction_idle_timeouts": "\(stats.transactionIdleTimeouts)",
            "output_limit_closes": "\(stats.outputLimitCloses)", "command_timeouts": "\(stats.commandTimeouts)",
            "pipeline_throttles": "\(stats.pipelineThrottles)", "upstream_recycled": "\(stats.upstreamRecycled)",
            "upstream_checks": "\(stats.upstreamChecks)",
            "pubsub_subscribes": "\(stats.pubsubSubscribes)", "pubsub_messages_out": "\(stats.pubsubMessagesFannedOut)",
            "keys_seen": "\(stats.keysSeen)", "keys_denied": "\(stats.keysDenied)", "keys_scanned": "\(stats.keysScanned)",
        ])
    }
}

/// Signal events: SIGTERM/SIGINT shut down (a second one exits at once); SIGUSR1 logs the counters.
final class SignalHandler: EventHandler {
    unowned let proxy: Proxy
    init(proxy: Proxy) {
        self.proxy = proxy
        super.init()
    }
    override func handleEvent(_ what: Int16, tag: Int) {
        switch tag {
        case 0: proxy.beginShutdown(signal: "SIGTERM")
        case 2: proxy.beginShutdown(signal: "SIGINT")
        default: proxy.logStats()
        }
    }
}

/// A handler running a closure (rare events only: timers of shutdown and accept back-off).
final class OneShot: EventHandler {
    let body: () -> Void
    init(_ body: @escaping () -> Void) {
        self.body = body
        super.init()
    }
    override func handleEvent(_ what: Int16, tag: Int) { body() }
}
