// Proxy: one upstream's listeners, clients and pool; after each loop iteration (driven by Runtime, which owns the loop,
// the signals, the stats endpoint and the app of `respool exec`) the resumes, the flush of every dirty connection and
// the freeing of what closed; accepts clients and carries out its part of shutdown. Health checks (Health.swift) and
// the periodic work (Periodic.swift: advisor polls, stats lines) have their own files.
import EventLoop
import Glibc
import Logging
import RESP
import RespoolCore

public final class Proxy: AcceptHandler {
    public let config: Config
    let logger: Logger
    let base: EventBase
    let limits: RESPLimits
    let upstreamLimits: RESPLimits
    /// What every client session's decisions depend on (configuration, the server's HELLO, the hubs' connections).
    var sessionContext: SessionContext
    /// The users clients authenticated as (RESPOOL_CLIENT_PASSWORD unset), with the URL's as 0.
    let credentials: Credentials
    private(set) var pool: Pool!
    private var listeners: [Listener] = []
    private(set) var clients: [Int: ClientConnection] = [:]
    private var openClients = 0
    var dirty = Ring<Unmanaged<Connection>>(capacity: 1024)
    private var resumes: [ClientConnection] = []
    /// Clients whose wait for the pool failed, answered with it when they resume (rare: kept out of every client).
    var waitFailures: [Int: PoolState.Failure] = [:]
    private var pendingCloses: [(ClientConnection, String)] = []
    var graveyard: [AnyObject] = []
    let scratch: UnsafeMutableRawPointer
    let scratchSize = 256 << 10
    private var nextClientId = 1
    /// The clients accepted at most: RESPOOL_MAX_CLIENTS, or fewer when the open-files limit cannot hold that many
    /// (Runtime.fitDescriptors).
    var maxClients: Int
    /// Rejections at max clients and accept failures are logged at most once a second, with a count.
    private var rejectedLog = EverySecond()
    private var acceptFailedLog = EverySecond()
    /// Shutdown is over: every client closed, every connection closed (or the shutdown timeout passed).
    private(set) var finished = false
    private(set) var shuttingDown = false
    /// Timers of rare events: the shutdown deadline, and the listeners' resume after an accept failure.
    private var shutdownTimer: (OneShot, Timer)?
    private var acceptResume: (OneShot, Timer)?
    let stats = Counters()
    let startedAt: Double
    private(set) var health: Health!
    private(set) var periodic: Periodic!
    private var janitor: Janitor!
    private var hubs: [Int: PubSubHub] = [:]
    private(set) var listenDescription = ""
    /// The URL an app uses to reach this upstream through respool (what `respool exec` gives it).
    private(set) var localURL = ""
    /// The same with the client password masked (for logs).
    private(set) var localURLMasked = ""
    var activity = ActivityList()
    /// The CLIENT LIST/INFO/KILL being answered and whose it is (its own line counts it, as redis's does).
    var clientCommandRunning: (client: Int, args: [[UInt8]])?
    var keysWarnedAt = -1_000_000.0
    var keysSinceWarning = 0

    /// Latency of sampled commands (read to reply handed over) and of waits for a connection.
    var commandDurations = LatencyHistogram()
    var waitDurations = LatencyHistogram()
    /// Upstream round trips (one request per shared connection at a time, see UpstreamConnection.startProbe).
    var roundTrips = LatencyHistogram()
    var sampleCountdown = 0

    /// The TLS settings of every upstream connection (rediss:// only).
    let tlsContext: TLSContext?
    /// The name sent as SNI and checked against the upstream's certificate.
    let tlsServerName: String

    /// Throws a ConfigError (exit 2) when a TLS file does not load. With several upstreams every log line carries
    /// `pool=<its variable>`.
    init(config: Config, logger: Logger, base: EventBase) throws {
        self.config = config
        maxClients = config.maxClients
        var logger = logger
        if let label = config.upstreamLabel { logger[metadataKey: "pool"] = "\(label)" }
        self.logger = logger
        credentials = Credentials(url: config.upstream)
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
        self.base = base
        sessionContext = SessionContext(config: config)
        limits = RESPLimits(maxBulkLength: config.maxBulkLength, maxMultibulkLength: config.maxMultibulkLength)
        upstreamLimits = RESPLimits(maxBulkLength: Int.max / 4, maxMultibulkLength: Int.max / 4,
                                    maxInlineLength: 64 << 10, maxReplyLineLength: 64 << 20)
        scratch = .allocate(byteCount: scratchSize, alignment: 16)
        startedAt = monotonicNow()
        super.init()
        pool = Pool(proxy: self)
        janitor = Janitor(proxy: self)
        health = Health(proxy: self)
        periodic = Periodic(proxy: self)
    }

    deinit {
        scratch.deallocate()
        stats.deallocate()
        dirty.deallocate()
    }

    /// Listens and connects the first upstream connection; logs the start-up line (with the stats endpoint's
    /// address, `stats`, when there is one).
    func start(stats: String?) throws(SystemError) {
        let tcp = try Listener(base: base, host: config.bind, port: config.port, handler: self)
        listeners.append(tcp)
        var meta: Logger.Metadata = ["listen": "\(tcp.address)"]
        listenDescription = "\(tcp.address)"
        if let path = config.socketPath {
            listeners.append(try Listener(base: base, unixPath: path, handler: self))
            meta["socket"] = "\(path)"
        }
        localURL = AppProcess.localURL(config: config, port: tcp.address.port)
        localURLMasked = AppProcess.localURL(config: config, port: tcp.address.port, masked: true)
        meta["local_url"] = "\(localURLMasked)"
        let resume = OneShot { [weak self] in self?.listeners.forEach { $0.resume() } }
        acceptResume = (resume, try Timer(base: base, handler: resume))
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
        meta["max_clients"] = "\(maxClients)"
        meta["name"] = "\(config.namePrefix)"
        meta["client_auth"] = "\(config.clientPassword == nil ? "off" : "required")"
        meta["backend"] = "\(base.backendName)"
        try janitor.start()
        if let stats { meta["stats"] = "\(stats)" }
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
    }

    /// Work done once per loop iteration: close what asked to be closed, resume stalled clients, write every dirty
    /// connection once, free the closed.
    @inline(__always)
    func afterIteration() {
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
        if shuttingDown && !finished { checkShutdownDone() }
    }

    /// Closes a client after the current callbacks (never inside an upstream's reply loop).
    func scheduleClose(_ c: ClientConnection, reason: String) {
        pendingCloses.append((c, reason))
    }

    /// Decides a stalled client's request again after the current callbacks, in the order they were scheduled.
    func scheduleResume(_ c: ClientConnection) {
        resumes.append(c)
    }

    @inline(__always)
    func noteWritten(_ c: Connection, _ n: Int) {
        if c.isUpstream {
            stats[.upstreamBytesOut] &+= n
            unsafeDowncast(c, to: UpstreamConnection.self).startProbe()
        } else {
            stats[.bytesToClients] &+= n
        }
    }

    /// The server's HELLO reply of a completed handshake: what respool's own HELLO replies repeat.
    func serverHandshake(_ info: ServerInfo) {
        sessionContext.serverInfo = info
    }

    /// The pub/sub hub of a protocol (created on first use).
    /// The pub/sub hub of a protocol and user (credential id; 0 is the URL's): each user's subscriptions run on a
    /// subscriber connection authenticated as that user.
    func hub(proto: Int, user: Int = 0) -> PubSubHub {
        let key = SessionContext.hubKey(proto: proto, user: user)
        if let h = hubs[key] { return h }
        let h = PubSubHub(proxy: self, proto: proto, user: user)
        hubs[key] = h
        return h
    }

    /// Whether the server (its HELLO's version) is at least major.minor (false while unknown).
    func serverIsAtLeast(_ major: Int, _ minor: Int) -> Bool {
        guard let v = sessionContext.serverInfo?.version else { return false }
        let parts = v.split(separator: ".").compactMap { Int($0) }
        guard parts.count >= 2 else { return false }
        return parts[0] > major || (parts[0] == major && parts[1] >= minor)
    }

    var subscribedChannels: Int { hubs.values.reduce(0) { $0 + $1.channelCount } }
    /// Whether any subscriber connection exists (else the server's counts need no correction).
    var hasSubscriberConnections: Bool { hubs.values.contains { $0.upstream != nil } }

    /// What to add to the server's subscriber count of `channel` so that it counts respool's clients (PubSubCount).
    func subscriberCorrection(_ space: PubSubSpace, _ channel: [UInt8]) -> Int {
        hubs.values.reduce(0) { $0 + $1.correction(space, channel) }
    }
    var uptime: Double { monotonicNow() - startedAt }

    // MARK: clients

    public override func accepted(fd: Int32, isUnix: Bool) {
        if shuttingDown {
            Socket.close(fd)
            return
        }
        if openClients >= maxClients {
            stats[.clientsRejected] &+= 1
            Socket.writeBestEffort(fd, "-ERR max number of clients reached\r\n")
            Socket.close(fd)
            if let n = rejectedLog.due(now: base.now()) {
                logger.warning("client rejected", metadata: ["reason": "max_clients", "max_clients": "\(maxClients)", "rejected": "\(n)"])
            }
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
        stats[.clientsAccepted] &+= 1
    }

    public override func acceptFailed(_ error: SystemError) {
        if let n = acceptFailedLog.due(now: base.now()) {
            logger.error("accept failed", metadata: ["error": "\(error)", "failures": "\(n)"])
        }
        // Out of descriptors: stop accepting briefly instead of spinning; one timer, made at start-up, resumes.
        for l in listeners { l.pause() }
        acceptResume?.1.schedule(after: 0.1)
    }

    func clientClosed(_ c: ClientConnection, reason: String) {
        openClients -= 1
    }

    var clientCount: Int { openClients }

    /// Open and closing clients in the order they connected (CLIENT LIST, CLIENT KILL).
    var clientsByID: [ClientConnection] { clients.values.sorted { $0.id < $1.id } }

    /// Forgets a closed client once no reply for it is outstanding.
    func reap(_ c: ClientConnection) {
        // Parked first: the registry may hold the last strong reference while `c` is borrowed by a callback.
        guard clients[c.id] != nil else { return }
        waitFailures.removeValue(forKey: c.id)
        graveyard.append(c)
        clients.removeValue(forKey: c.id)
    }

    // MARK: shutdown

    /// Stops accepting, answers what was read, then closes everything (`finished`), within RESPOOL_SHUTDOWN_TIMEOUT.
    func beginShutdown(signal: String) {
        if shuttingDown { return }
        shuttingDown = true
        logger.info("shutting down", metadata: ["signal": "\(signal)", "clients": "\(openClients)",
                                                "in_flight": "\(pool.totalPending)", "timeout": "\(config.shutdownTimeout)s"])
        for l in listeners { l.close() }
        listeners.removeAll()
        // Readiness probes waiting for a PING flip to 503 at once (new ones get it from Health.check).
        health.answered(problem: "shutting down")
        // Commands already read are answered; nothing new is read; clients waiting for a connection get an error.
        for c in clients.values { c.disableReading() }
        pool.beginShutdown()
        let h = OneShot { [weak self] in
            guard let self else { return }
            self.logger.warning("shutdown timeout, closing with commands in flight", metadata: ["in_flight": "\(self.pool.totalPending)"])
            self.finished = true
        }
        if let t = try? Timer(base: base, handler: h) {
            t.schedule(after: config.shutdownTimeout)
            shutdownTimer = (h, t)
        }
        checkShutdownDone()
    }

    private func checkShutdownDone() {
        // Blocked commands on leased connections are not waited for: their connections are closed below and their
        // clients get an error.
        if pool.sharedPending > 0 { return }
        for c in clients.values where !c.isClosed && (!c.out.isEmpty || c.session.stall != .none) {
            if c.session.stall != .none { c.close(reason: "shutdown") } else { return }
        }
        pool.closeAll()
        // Clients blocked on a leased connection just got an error reply: one last write, then everyone is closed.
        for c in clients.values where !c.isClosed && !c.out.isEmpty { c.flush() }
        for c in clients.values where !c.isClosed { c.close(reason: "shutdown") }
        finished = true
    }

    /// The end of the loop: what the endpoint still owes about this upstream is answered.
    func stopped() {
        health.answered(problem: "shutting down")
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

/// A line logged at most once a second: `due` counts the events and answers how many there were since the last line
/// when one is due now (nil otherwise).
struct EverySecond {
    private var loggedAt = -Double.infinity
    private var count = 0
    mutating func due(now: Double) -> Int? {
        count += 1
        guard now - loggedAt >= 1 else { return nil }
        loggedAt = now
        defer { count = 0 }
        return count
    }
}
