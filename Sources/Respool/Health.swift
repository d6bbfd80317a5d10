// Health: /healthz. Healthy means respool accepts clients and the upstream answers a PING on a shared connection,
// and accepts respool's credentials again (AUTH: a password changed on the server shows here, before any new
// connection fails), within 2 s (on the control connection when a script holds every shared one: the server's -BUSY is then the verdict). Probes that arrive while a PING is in flight share its answer; the PING is an internal request of the
// connection (UpstreamConnection.Internal.health) whose reply, failure or timeout answers every waiting probe.
import EventLoop
import RespoolCore

final class Health {
    unowned let proxy: Proxy
    /// /healthz requests waiting for the upstream's answer to one PING (each is given the problem, nil if healthy).
    private var waiters: [(String?) -> Void] = []
    private var timer: (OneShot, Timer)?
    private var lastProblem: String?
    static let timeout = 2.0

    init(proxy: Proxy) {
        self.proxy = proxy
    }

    func check(_ verdict: @escaping (String?) -> Void) {
        var problem: String? = proxy.shuttingDown ? "shutting down" : nil
        let u = proxy.pool.forRespool()
        if problem == nil && u == nil {
            problem = "no ready upstream connection" + (proxy.pool.lastError.map { " (\($0))" } ?? "")
        }
        if let problem {
            verdict(problem)
            return
        }
        waiters.append(verdict)
        if waiters.count > 1 { return }
        u!.send(.health, ["PING"])
        u!.send(.healthAuth, u!.ownAuth.map { String(decoding: $0, as: UTF8.self) })
        if timer == nil {
            let h = OneShot { [weak self] in self?.answered(problem: "upstream did not answer PING within \(Health.timeout)s") }
            if let t = try? Timer(base: proxy.base, handler: h) { timer = (h, t) }
        }
        timer?.1.schedule(after: Health.timeout)
    }

    /// The PING answered (problem nil), failed or timed out: every waiting /healthz request gets the verdict.
    func answered(problem: String?) {
        guard !waiters.isEmpty else { return }   // a late PONG after the timeout
        timer?.1.cancel()
        // Each change of verdict is logged once (a refused credential names its user, never the password).
        if problem != lastProblem {
            if let problem {
                proxy.logger.warning("unhealthy", metadata: ["reason": "\(problem)"])
            } else {
                proxy.logger.notice("healthy again", metadata: ["after": "\(lastProblem ?? "")"])
            }
            lastProblem = problem
        }
        let w = waiters
        waiters.removeAll()
        for r in w { r(problem) }
    }
}
