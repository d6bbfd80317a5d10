// AppProcess: `respool exec -- COMMAND ARGS...`. The app runs as respool's child with its upstream variable pointing
// at respool's listener. Signals meant for the dyno (SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR2) are passed to the app,
// and respool keeps serving it: respool shuts down (drain, exit) once the app has exited, with the app's exit code.
// The app gets RESPOOL_SHUTDOWN_TIMEOUT after the first SIGTERM/SIGINT before it is killed.
import EventLoop
import Glibc
import Logging
import RespoolCore

/// What `respool exec` runs: the command and the environment it starts from (respool's own, without its flags).
public struct ExecSpec: Sendable {
    public let argv: [String]
    public let environment: [String: String]
    public init(argv: [String], environment: [String: String]) {
        self.argv = argv
        self.environment = environment
    }
}

final class AppProcess: EventHandler {
    enum Event: Int { case deadline, sigchld }
    unowned let runtime: Runtime
    let spec: ExecSpec
    private(set) var child: ChildProcess?
    private(set) var exitCode: Int32?
    private var deadline: Timer?

    init(runtime: Runtime, spec: ExecSpec) {
        self.runtime = runtime
        self.spec = spec
        super.init()
    }

    var running: Bool { child != nil && exitCode == nil }

    /// The URL the app is given for respool's listener: `unix://PATH` when respool has a socket, else TCP on the
    /// bind address (loopback when it binds every address), with RESPOOL_CLIENT_PASSWORD when one is required.
    /// `masked`: the password shown as `<password>` (for the log).
    static func localURL(config: Config, port: Int, masked: Bool = false) -> String {
        // With the user name `default`: clients then send AUTH default <password> (redis-cli sends AUTH "" <password>
        // for a URL without one, which Redis refuses).
        let auth = config.clientPassword.map { "default:\(masked ? "<password>" : RedisURL.percentEncode($0))@" } ?? ""
        if let path = config.socketPath { return "unix://\(auth)\(path)" }
        var host = config.bind
        if host == "0.0.0.0" || host.isEmpty { host = "127.0.0.1" }
        if host == "::" { host = "::1" }
        if host.contains(":") { host = "[\(host)]" }
        return "redis://\(auth)\(host):\(port)"
    }

    /// The app's environment: respool's, with RESPOOL_URL removed, so the upstreams' addresses and passwords stay
    /// with respool, and each upstream's variable set to the local URL of its listener. With one upstream that is
    /// REDIS_URL, which is what apps read (and the variable it came from, if another); with RESPOOL_URLS, each
    /// variable named there.
    static func environment(_ base: [String: String], upstreams: [(config: Config, localURL: String)]) -> [String: String] {
        var env = base
        env.removeValue(forKey: "RESPOOL_URL")
        for (config, url) in upstreams {
            if config.upstreamSource != "RESPOOL_URL" && config.upstreamSource != "default" {
                env[config.upstreamSource] = url
            }
            if config.upstreamLabel == nil { env["REDIS_URL"] = url }
        }
        return env
    }

    /// Starts the app. Throws when it cannot run.
    func start() throws(SystemError) {
        let ups = runtime.proxies.map { (config: $0.config, localURL: $0.localURL) }
        let c = try ChildProcess.spawn(spec.argv, environment: Self.environment(spec.environment, upstreams: ups))
        child = c
        var meta: Logger.Metadata = ["pid": "\(c.pid)", "command": "\(spec.argv.joined(separator: " "))"]
        for p in runtime.proxies {
            meta[p.config.upstreamLabel ?? "app_url"] = "\(p.localURLMasked)"
        }
        runtime.logger.info("app started", metadata: meta)
    }

    /// A signal for the dyno reached respool: the app gets it; respool keeps serving until the app exits. The first
    /// SIGTERM or SIGINT starts the app's deadline (RESPOOL_SHUTDOWN_TIMEOUT), after which it is killed.
    func forward(_ signal: Int32, name: String) {
        guard let child, running else { return }
        runtime.logger.info("signal passed to the app", metadata: ["signal": "\(name)", "pid": "\(child.pid)"])
        child.send(signal)
        guard signal == SIGTERM || signal == SIGINT, deadline == nil else { return }
        if let t = try? Timer(base: runtime.base, handler: self, tag: Event.deadline) {
            t.schedule(after: runtime.config.shutdownTimeout)
            deadline = t
        }
    }

    /// SIGCHLD: if the app has exited, respool shuts down with its exit code.
    func checkExited() {
        guard let child, exitCode == nil, let code = child.exitCode() else { return }
        exitCode = code
        deadline?.cancel()
        runtime.logger.info("app exited", metadata: ["pid": "\(child.pid)", "exit_code": "\(code)"])
        runtime.appExited(code)
    }

    override func handleEvent(_ what: Int16, tag: Int) {
        if tag == Event.sigchld.rawValue { return checkExited() }
        guard let child, running else { return }
        runtime.logger.warning("app still running after the shutdown timeout, killing it",
                             metadata: ["pid": "\(child.pid)", "timeout": "\(runtime.config.shutdownTimeout)s"])
        child.send(SIGKILL)
    }

    /// respool is stopping for a reason of its own (a failure, a second signal): the app is stopped too, SIGTERM
    /// then, after RESPOOL_SHUTDOWN_TIMEOUT, SIGKILL. Blocks (the loop is over).
    func stop() {
        guard let child, running else { return }
        child.send(SIGTERM)
        let until = monotonicNow() + runtime.config.shutdownTimeout
        var killed = false
        while true {
            if let code = child.exitCode() {
                exitCode = code
                runtime.logger.info("app exited", metadata: ["pid": "\(child.pid)", "exit_code": "\(code)"])
                return
            }
            if !killed && monotonicNow() >= until {
                child.send(SIGKILL)
                killed = true
            }
            usleep(10_000)
        }
    }
}
