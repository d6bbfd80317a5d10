// Periodic: what the janitor's tick does on longer cadences: the Redis health advisor's INFO poll (every
// RESPOOL_ADVISOR_INTERVAL: figures for the metrics, advice for /stats and the log) and the summary stats line (every
// RESPOOL_STATS_INTERVAL); and the SIGUSR1 line with every counter.
import EventLoop
import Logging
import RespoolCore

final class Periodic {
    unowned let proxy: Proxy
    private(set) var serverFigures = ServerFigures()
    private(set) var advice: [Advice] = []
    private var adviceWarnedAt: [Advice: Double] = [:]
    private var oomAtLastPoll = 0
    private var keysAtLastPoll = 0
    private var nextAdvisorPoll = 0.0
    private var nextStatsLine = 0.0
    private var commandsAtLastLine = 0

    init(proxy: Proxy) {
        self.proxy = proxy
    }

    /// Once a tick: poll INFO, log the stats line, each on its own cadence (the tick never fires early, so a
    /// deadline of "now + interval" would drift to every other tick).
    func tick(now: Double) {
        let config = proxy.config
        if config.advisorInterval > 0 && now >= nextAdvisorPoll {
            nextAdvisorPoll += config.advisorInterval
            if nextAdvisorPoll <= now { nextAdvisorPoll = now + config.advisorInterval }
            proxy.pool.forRespool()?.send(.advisorInfo, ["INFO"])
        }
        guard config.statsInterval > 0 else { return }
        if nextStatsLine == 0 { nextStatsLine = now + config.statsInterval }
        guard now >= nextStatsLine else { return }
        let stats = proxy.stats
        let commands = stats[.commandsForwarded] + stats[.commandsLocal]
        let rate = Double(commands - commandsAtLastLine) / config.statsInterval
        commandsAtLastLine = commands
        nextStatsLine += config.statsInterval
        if nextStatsLine <= now { nextStatsLine = now + config.statsInterval }
        let pool = proxy.pool!
        proxy.logger.info("stats", metadata: [
            "clients": "\(proxy.clientCount)", "upstreams_shared": "\(pool.state.sharedCount)",
            "upstreams_leased": "\(pool.leasedCount)", "upstreams_pinned": "\(pool.pinnedCount)", "commands_per_s": "\(Int(rate))", "waiting": "\(pool.waiterCount)",
            "wait_timeouts": "\(stats[.waitTimeouts])", "commands_failed": "\(stats[.commandsFailed])",
            "protocol_errors": "\(stats[.protocolErrors])", "oom_errors": "\(stats[.oomErrors])",
            "p50": "\(proxy.commandDurations.quantile(0.5).map(Metrics.logSeconds) ?? "-")",
            "p99": "\(proxy.commandDurations.quantile(0.99).map(Metrics.logSeconds) ?? "-")",
            "upstream_p99": "\(proxy.roundTrips.quantile(0.99).map(Metrics.logSeconds) ?? "-")",
        ])
    }

    /// A fresh INFO: figures for the metrics, advice for /stats, one warning line per advice per 10 minutes.
    func advisorPolled(_ figures: ServerFigures) {
        let stats = proxy.stats
        serverFigures = figures
        // Only KEYS that reached the server blocked it (not those denied or answered by SCAN steps).
        let keysForwarded = stats[.keysSeen] - stats[.keysDenied] - stats[.keysScanned]
        advice = Advisor.advise(figures, oomErrorsSinceLastPoll: stats[.oomErrors] - oomAtLastPoll,
                                keysSinceLastPoll: keysForwarded - keysAtLastPoll)
        oomAtLastPoll = stats[.oomErrors]
        keysAtLastPoll = keysForwarded
        let now = proxy.base.now()
        for a in advice where now - (adviceWarnedAt[a] ?? -1_000_000) >= 600 {
            adviceWarnedAt[a] = now
            var meta: Logger.Metadata = ["advice": "\(a.rawValue)"]
            if let used = figures.usedMemory { meta["used_memory"] = "\(used)" }
            if let max = figures.maxMemory { meta["maxmemory"] = "\(max)" }
            if let policy = figures.maxMemoryPolicy { meta["maxmemory_policy"] = "\(policy)" }
            if let c = figures.connectedClients { meta["connected_clients"] = "\(c)" }
            if let m = figures.maxClients { meta["maxclients"] = "\(m)" }
            proxy.logger.warning("\(a.message)", metadata: meta)
        }
    }

    /// SIGUSR1: every counter (from the one table in Stats.swift) and the gauges, as one line.
    func logCounters() {
        let pool = proxy.pool!
        var meta: Logger.Metadata = [
            "clients": "\(proxy.clientCount)", "upstreams": "\(pool.count)", "in_flight": "\(pool.totalPending)",
            "leases": "\(pool.leasedCount)", "waiting": "\(pool.waiterCount)",
        ]
        for (name, value) in proxy.stats.logMetadata { meta[name] = "\(value)" }
        proxy.logger.info("stats", metadata: meta)
    }
}
