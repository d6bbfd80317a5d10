// Runtime: the process. Owns the event loop, the signals, the stats endpoint and the app of `respool exec`, and one
// Proxy per upstream (one, or one per variable named by RESPOOL_URLS); runs the loop until every proxy has shut down.
import EventLoop
import Glibc
import Logging
import RespoolCore

public final class Runtime {
    let base: EventBase
    let logger: Logger
    /// One per upstream, in the order RESPOOL_URLS names them.
    private(set) var proxies: [Proxy] = []
    private var running = true
    private var shuttingDown = false
    private var exitCode: Int32 = 0
    private var signalHandler: SignalHandler!
    private var signals: [SignalWatch] = []
    private var forwarders: [SignalForwarder] = []
    private(set) var app: AppProcess?
    private var statsServer: HTTPServer?
    private var statsEndpoint: StatsEndpoint?

    /// Throws a ConfigError (exit 2) when a TLS file does not load, a SystemError when the event loop cannot start.
    public init(configs: [Config], logger: Logger) throws {
        precondition(!configs.isEmpty, "a runtime without an upstream")
        self.logger = logger
        base = try EventBase()
        proxies = try configs.map { try Proxy(config: $0, logger: logger, base: base) }
        signalHandler = SignalHandler(runtime: self)
    }

    /// The settings that are the process's, not an upstream's (stats endpoint, shutdown timeout): the first's.
    var config: Config { proxies[0].config }

    /// Listens, connects and runs until shutdown. Returns the exit code. With `exec`, runs the app once listening
    /// (each upstream's variable pointing at its listener), passes it the dyno's signals, and shuts down once it has
    /// exited, with its exit code.
    public func run(exec: ExecSpec? = nil) throws(SystemError) -> Int32 {
        tuneMalloc()
        ignoreSIGPIPE()
        fitDescriptors()
        var statsAddress: String?
        if config.statsPort >= 0 {
            let endpoint = StatsEndpoint(runtime: self)
            let server = try HTTPServer(base: base, host: config.statsBind, port: config.statsPort, handler: endpoint)
            statsEndpoint = endpoint
            statsServer = server
            statsAddress = server.address.map { "\($0)" } ?? "\(config.statsBind):\(config.statsPort)"
        }
        for p in proxies { try p.start(stats: statsAddress) }
        signals.append(try SignalWatch(base: base, signal: SIGTERM, handler: signalHandler, tag: SignalHandler.Event.sigterm))
        signals.append(try SignalWatch(base: base, signal: SIGINT, handler: signalHandler, tag: SignalHandler.Event.sigint))
        signals.append(try SignalWatch(base: base, signal: SIGUSR1, handler: signalHandler, tag: SignalHandler.Event.sigusr1))
        if let exec {
            // Watched before the app starts, so that even an app exiting at once is seen.
            let a = AppProcess(runtime: self, spec: exec)
            app = a
            signals.append(try SignalWatch(base: base, signal: SIGCHLD, handler: a, tag: AppProcess.Event.sigchld))
            for (signal, name) in [(SIGHUP, "SIGHUP"), (SIGQUIT, "SIGQUIT"), (SIGUSR2, "SIGUSR2")] {
                let f = SignalForwarder(runtime: self, signal: signal, name: name)
                signals.append(try SignalWatch(base: base, signal: signal, handler: f, tag: SingleEvent.fired))
                forwarders.append(f)
            }
            do {
                try a.start()
            } catch {
                logger.error("cannot run the app", metadata: ["command": "\(exec.argv[0])", "error": "\(error)"])
                exitCode = error.errno == EACCES ? 126 : 127   // as a shell reports a command it cannot run
                beginShutdown(signal: "none (the app could not start)")
            }
        }

        while running {
            base.runOnce()
            for p in proxies { p.afterIteration() }
            if shuttingDown && proxies.allSatisfy(\.finished) { running = false }
        }
        if let server = statsServer {
            // What the stats endpoint still owes is answered (a /healthz waiting for its PING gets 503) and given a
            // few non-blocking loop passes to be written before evhttp is freed.
            for p in proxies { p.stopped() }
            server.answerPending()
            for _ in 0..<5 { base.runNonBlocking() }
            server.close()
        }
        if let app, app.running {
            app.stop()
        }
        logger.info("respool stopped", metadata: ["exit_code": "\(exitCode)"])
        return exitCode
    }

    /// Descriptors respool needs beside its clients and upstream connections: standard streams, the loop's epoll and
    /// signal pipe, listeners, the stats endpoint and its clients, a control connection (redis-server reserves 32 too).
    static let reservedDescriptors = 32

    /// As redis-server does: raise the soft open-files limit toward the hard one so that every upstream's max clients,
    /// its cap and respool's own descriptors fit; if they cannot, lower the max clients (in proportion across
    /// upstreams) and say so once. A client past it then gets "max number of clients reached" at once instead of
    /// waiting in the backlog for a descriptor.
    private func fitDescriptors() {
        let wanted = proxies.reduce(Self.reservedDescriptors) { $0 + $1.config.maxClients + $1.config.maxServerConnections }
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return }
        if limit.rlim_cur < rlim_t(wanted) {
            var raised = limit
            raised.rlim_cur = min(limit.rlim_max, rlim_t(wanted))   // (RLIM_INFINITY is the largest value)
            if setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
        }
        let available = Int(min(limit.rlim_cur, rlim_t(Int32.max)))
        guard available < wanted else { return }
        let clientsWanted = proxies.reduce(0) { $0 + $1.config.maxClients }
        let room = max(proxies.count, available - Self.reservedDescriptors - proxies.reduce(0) { $0 + $1.config.maxServerConnections })
        for p in proxies { p.maxClients = max(1, room * p.config.maxClients / clientsWanted) }
        logger.warning("the open-files limit cannot hold RESPOOL_MAX_CLIENTS: max clients lowered to fit (raise ulimit -n, or LimitNOFILE, to at least the wanted limit)",
                       metadata: ["open_files_limit": "\(available)", "wanted": "\(wanted)",
                                  "max_clients": "\(proxies.map { String($0.maxClients) }.joined(separator: ","))"])
    }

    /// The app of `respool exec` exited: respool drains and exits with its code.
    func appExited(_ code: Int32) {
        exitCode = code
        beginShutdown(signal: "none (the app exited)")
    }

    /// A dyno signal: the app's when there is one still running (respool keeps serving it), else respool's shutdown.
    func signalled(_ signal: Int32, name: String) {
        if let app, app.running {
            app.forward(signal, name: name)
        } else if signal == SIGTERM || signal == SIGINT {
            beginShutdown(signal: name)
        }
    }

    /// Every upstream stops accepting and drains; a second signal exits at once.
    func beginShutdown(signal: String) {
        if shuttingDown {
            logger.warning("second signal, exiting at once", metadata: ["signal": "\(signal)"])
            if app?.exitCode == nil { exitCode = 1 }
            running = false
            return
        }
        shuttingDown = true
        for p in proxies { p.beginShutdown(signal: signal) }
    }

    func logCounters() {
        for p in proxies { p.periodic.logCounters() }
    }
}

/// Signal events: SIGTERM/SIGINT shut down (a second one exits at once), or under `respool exec` go to the app;
/// SIGUSR1 logs the counters.
final class SignalHandler: EventHandler {
    enum Event: Int { case sigterm, sigint, sigusr1 }
    unowned let runtime: Runtime
    init(runtime: Runtime) {
        self.runtime = runtime
        super.init()
    }
    override func handleEvent(_ what: Int16, tag: Int) {
        switch Event(rawValue: tag) {
        case .sigterm?: runtime.signalled(SIGTERM, name: "SIGTERM")
        case .sigint?: runtime.signalled(SIGINT, name: "SIGINT")
        case .sigusr1?, nil: runtime.logCounters()
        }
    }
}

/// Under `respool exec`: a signal respool has no use for (SIGHUP, SIGQUIT, SIGUSR2), passed to the app.
final class SignalForwarder: EventHandler {
    unowned let runtime: Runtime
    let signal: Int32
    let name: String
    init(runtime: Runtime, signal: Int32, name: String) {
        self.runtime = runtime
        self.signal = signal
        self.name = name
        super.init()
    }
    override func handleEvent(_ what: Int16, tag: Int) { runtime.signalled(signal, name: name) }
}
