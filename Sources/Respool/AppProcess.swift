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
    unowned let proxy: Proxy
    let spec: ExecSpec
    private(set) var child: ChildProcess?
    private(set) var exitCode: Int32?
    private var deadline: Timer?

    init(proxy: Proxy, spec: ExecSpec) {
        self.proxy = proxy
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

    /// The app's environment: respool's, with the upstream's variable set to respool's local URL (REDIS_URL too,
    /// which is what apps read, when the upstream came from RESPOOL_URL or the default) and RESPOOL_URL removed, so
    /// the upstream's address and password stay with respool.
    static func environment(_ base: [String: String], config: Config, localURL: String) -> [String: String] {
        var env = base
        env.removeValue(forKey: "RESPOOL_URL")
        if config.upstreamSource != "RESPOOL_URL" && config.upstreamSource != "default" {
            env[config.upstreamSource] = localURL
        }
        env["REDIS_URL"] = localURL
        return env
    }

    /// Starts the app. Throws when it cannot run.
    func start(port: Int) throws(SystemError) {
        let url = Self.localURL(config: proxy.config, port: port)
        let c = try ChildProcess.spawn(spec.argv, environment: Self.environment(spec.environment, config: proxy.config, localURL: url))
        child = c
        proxy.logger.info("app started", metadata: ["pid": "\(c.pid)", "command": "\(spec.argv.joined(separator: " "))",
                                                     "app_url": "\(Self.localURL(config: proxy.config, port: port, masked: true))"])
    }

    /// A signal for the dyno reached respool: the app gets it; respool keeps serving until the app exits. The first
    /// SIGTERM or SIGINT starts the app's deadline (RESPOOL_SHUTDOWN_TIMEOUT), after which it is killed.
    func forward(_ signal: Int32, name: String) {
        guard let child, running else { return }
        proxy.logger.info("signal passed to the app", metadata: ["signal": "\(name)", "pid": "\(child.pid)"])
        child.send(signal)
        guard signal == SIGTERM || signal == SIGINT, deadline == nil else { return }
        if let t = try? Timer(base: proxy.base, handler: self, tag: Event.deadline) {
            t.schedule(after: proxy.config.shutdownTimeout)
            deadline = t
        }
    }

    /// SIGCHLD: if the app has exited, respool shuts down with its exit code.
    func checkExited() {
        guard let child, exitCode == nil, let code = child.exitCode() else { return }
        exitCode = code
        deadline?.cancel()
        proxy.logger.info("app exited", metadata: ["pid": "\(child.pid)", "exit_code": "\(code)"])
        proxy.appExited(code)
    }

    override func handleEvent(_ what: Int16, tag: Int) {
        if tag == Event.sigchld.rawValue { return checkExited() }
        guard let child, running else { return }
        proxy.logger.warning("app still running after the shutdown timeout, killing it",
                             metadata: ["pid": "\(child.pid)", "timeout": "\(proxy.config.shutdownTimeout)s"])
        child.send(SIGKILL)
    }

    /// respool is stopping for a reason of its own (a failure, a second signal): the app is stopped too, SIGTERM
    /// then, after RESPOOL_SHUTDOWN_TIMEOUT, SIGKILL. Blocks (the loop is over).
    func stop() {
        guard let child, running else { return }
        child.send(SIGTERM)
        let until = monotonicNow() + proxy.config.shutdownTimeout
        var killed = false
        while true {
            if let code = child.exitCode() {
                exitCode = code
                proxy.logger.info("app exited", metadata: ["pid": "\(child.pid)", "exit_code": "\(code)"])
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
