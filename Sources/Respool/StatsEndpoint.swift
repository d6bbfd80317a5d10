// StatsEndpoint: the local HTTP endpoint for operators, served from respool's own loop: /metrics (Prometheus),
// /stats (the same as JSON, with the configuration, passwords masked), /clients, /upstreams and /healthz. With several
// upstreams (RESPOOL_URLS) every metric carries an `upstream` label (its variable), /stats has one object per
// upstream, /clients and /upstreams items an "upstream" field, and /healthz is healthy when every upstream is.
import EventLoop
import RESP
import RespoolCore

final class StatsEndpoint: HTTPHandler {
    unowned let runtime: Runtime

    init(runtime: Runtime) {
        self.runtime = runtime
        super.init()
    }

    private var proxies: [Proxy] { runtime.proxies }
    private var several: Bool { proxies.count > 1 }

    override func respond(method: String, path: String, reply: HTTPReply) {
        if path == "/healthz" {
            health(reply)
        } else if path == "/clients" {
            streamClients(reply)
        } else {
            super.respond(method: method, path: path, reply: reply)
        }
    }

    /// /clients streams, `ClientsStream.batch` clients per loop iteration, so that listing 10,000 clients does not
    /// stall their traffic; clients that close meanwhile are left out.
    private var streams: [ObjectIdentifier: ClientsStream] = [:]

    /// Every upstream's verdict; 503 naming each unhealthy one (by its variable) when any is.
    private func health(_ reply: HTTPReply) {
        if !several {
            proxies[0].health.check { StatsEndpoint.sendHealth(reply, problem: $0) }
            return
        }
        var left = proxies.count
        var problems: [String] = []
        for p in proxies {
            p.health.check { problem in
                if let problem { problems.append("\(p.config.upstreamLabel ?? ""): \(problem)") }
                left -= 1
                if left == 0 { StatsEndpoint.sendHealth(reply, problem: problems.isEmpty ? nil : problems.joined(separator: "; ")) }
            }
        }
    }

    private func streamClients(_ reply: HTTPReply) {
        let ids = proxies.indices.flatMap { i in proxies[i].clientsByID.compactMap { $0.isClosed ? nil : ClientRef(proxy: i, id: $0.id) } }
        guard let stream = try? ClientsStream(endpoint: self, reply: reply, ids: ids) else {
            reply.send(status: 200, contentType: "application/json", body: Array("[\(clientsDocument(ids: ids[...]))]".utf8))
            return
        }
        streams[ObjectIdentifier(stream)] = stream
        reply.start(status: 200, contentType: "application/json")
        stream.next()
    }

    fileprivate func finished(_ stream: ClientsStream) {
        streams.removeValue(forKey: ObjectIdentifier(stream))
    }

    static func sendHealth(_ reply: HTTPReply, problem: String?) {
        if let problem {
            reply.send(status: 503, contentType: "text/plain; charset=utf-8", body: Array("unhealthy: \(problem)\n".utf8))
        } else {
            reply.send(status: 200, contentType: "text/plain; charset=utf-8", body: Array("ok\n".utf8))
        }
    }

    override func respond(method: String, path: String) -> (status: Int32, contentType: String, body: [UInt8]) {
        switch path {
        case "/metrics":
            let text = several ? Metrics.prometheus(labelled: proxies.map { ($0.config.upstreamLabel ?? "", values($0)) })
                : Metrics.prometheus(values(proxies[0]))
            return (200, "text/plain; version=0.0.4; charset=utf-8", Array(text.utf8))
        case "/stats":
            return (200, "application/json", Array(statsDocument().utf8))
        case "/upstreams":
            return (200, "application/json", Array(("[" + proxies.map(upstreamsDocument).filter { !$0.isEmpty }.joined(separator: ",") + "]").utf8))
        default:
            return (404, "text/plain; charset=utf-8", Array("not found; try /metrics, /stats, /clients, /upstreams or /healthz\n".utf8))
        }
    }

    /// Current values of every metric in `Metrics.all` (sampled now: counts come from the live state, counters from
    /// the one table in Stats.swift).
    func values(_ proxy: Proxy) -> [MetricValues] {
        let pool = proxy.pool!
        let ups = pool.upstreams
        func d(_ v: Int) -> Double { Double(v) }
        var gauges: [String: MetricValues] = [:]
        func gauge(_ def: MetricDefinition, _ v: Double) { gauges[def.name] = MetricValues(def, v) }
        gauge(Metrics.clients, d(proxy.clientCount))
        // Each connection in exactly one state, so the states add up to the connections open (at most the cap).
        var byState = (shared: 0, leased: 0, pinned: 0, pubsub: 0, control: 0, connecting: 0)
        for u in ups {
            if u.state != .ready { byState.connecting += 1 }
            else if u.hub != nil { byState.pubsub += 1 }
            else if pool.state.connection(u.handle)?.role == .control { byState.control += 1 }
            else if u.leased && u.leasedTo?._withUnsafeGuaranteedRef({ $0.session.isPinned }) == true { byState.pinned += 1 }
            else if u.leased { byState.leased += 1 }
            else { byState.shared += 1 }
        }
        gauges[Metrics.upstreams.name] = MetricValues(Metrics.upstreams, [
            ("shared", d(byState.shared)), ("leased", d(byState.leased)), ("pinned", d(byState.pinned)),
            ("pubsub", d(byState.pubsub)), ("control", d(byState.control)), ("connecting", d(byState.connecting)),
        ])
        gauge(Metrics.upstreamsMax, d(pool.cap))
        gauge(Metrics.waitQueue, d(pool.waiterCount))
        gauge(Metrics.pubsubSubscribers, d(proxy.clients.values.reduce(0) { $0 + (!$1.isClosed && $1.session.isSubscribed ? 1 : 0) }))
        gauge(Metrics.pubsubChannels, d(proxy.subscribedChannels))
        gauge(Metrics.uptime, proxy.uptime)
        gauge(Metrics.eventLoopEvents, d(IOEvent.live))
        gauges[Metrics.commandDuration.name] = MetricValues(Metrics.commandDuration, histogram: proxy.commandDurations)
        gauges[Metrics.waitDuration.name] = MetricValues(Metrics.waitDuration, histogram: proxy.waitDurations)
        gauges[Metrics.roundTrip.name] = MetricValues(Metrics.roundTrip, histogram: proxy.roundTrips)
        for v in serverValues(proxy) { gauges[v.definition.name] = v }
        let counters = proxy.stats.samples()
        return Metrics.all.compactMap { def in
            if let v = gauges[def.name] { return v }
            return counters[def.name].map { MetricValues(def, $0) }
        }
    }

    /// The advisor's figures from the last INFO (metrics without a value yet are left out).
    private func serverValues(_ proxy: Proxy) -> [MetricValues] {
        let f = proxy.periodic.serverFigures
        var out: [MetricValues] = []
        func add(_ def: MetricDefinition, _ v: Int?) { if let v { out.append(MetricValues(def, Double(v))) } }
        add(Metrics.serverClients, f.connectedClients)
        add(Metrics.serverMaxClients, f.maxClients)
        add(Metrics.serverUsedMemory, f.usedMemory)
        if let m = f.maxMemory { out.append(MetricValues(Metrics.serverMaxMemory, [(f.maxMemoryPolicy ?? "unknown", Double(m))])) }
        add(Metrics.serverEvicted, f.evictedKeys)
        add(Metrics.serverRejected, f.rejectedConnections)
        return out
    }

    /// One upstream's document; with several, an object of them by variable.
    private func statsDocument() -> String {
        if !several { return statsDocument(proxies[0]) }
        let parts = proxies.map { "\(Metrics.jsonString($0.config.upstreamLabel ?? "")):\(statsDocument($0))" }
        return "{\"version\":\(Metrics.jsonString(respoolVersion)),\"uptime_seconds\":\(Metrics.number(proxies[0].uptime)),"
            + "\"upstreams\":{\(parts.joined(separator: ","))}}"
    }

    private func statsDocument(_ proxy: Proxy) -> String {
        let c = proxy.config
        var config: [String] = []
        config.append("\"upstream\":\(Metrics.jsonString(c.upstream.description))")
        config.append("\"listen\":\(Metrics.jsonString(proxy.listenDescription))")
        config.append("\"max_server_connections\":\(c.maxServerConnections)")
        config.append("\"cap_from\":\(Metrics.jsonString(c.capSource))")
        config.append("\"max_clients\":\(proxy.maxClients)")
        config.append("\"name\":\(Metrics.jsonString(c.namePrefix))")
        config.append("\"client_auth\":\(c.clientPassword == nil ? "false" : "true")")
        config.append("\"keys\":\(Metrics.jsonString(c.keysMode.rawValue))")
        config.append("\"deny_commands\":[\(c.deny.entries.map(Metrics.jsonString).joined(separator: ","))]")
        config.append("\"wait_timeout\":\(c.waitTimeout)")
        config.append("\"client_idle_timeout\":\(c.clientIdleTimeout)")
        config.append("\"transaction_idle_timeout\":\(c.transactionIdleTimeout)")
        config.append("\"command_timeout\":\(c.commandTimeout)")
        let advice = proxy.periodic.advice.map { "{\"code\":\(Metrics.jsonString($0.rawValue)),\"message\":\(Metrics.jsonString($0.message))}" }
        return "{\"version\":\(Metrics.jsonString(respoolVersion)),\"uptime_seconds\":\(Metrics.number(proxy.uptime)),"
            + "\"config\":{\(config.joined(separator: ","))},\"advice\":[\(advice.joined(separator: ","))],"
            + "\"metrics\":\(Metrics.json(values(proxy)))}"
    }

    /// The JSON objects of the clients in `ids` still open, comma-separated.
    fileprivate func clientsDocument(ids: ArraySlice<ClientRef>) -> String {
        let now = runtime.base.now()
        let items = ids.compactMap { r -> (Proxy, ClientConnection)? in
            let p = proxies[r.proxy]
            guard let c = p.clients[r.id], !c.isClosed else { return nil }
            return (p, c)
        }.map { (proxy, c) -> String in
            let s = c.session
            let state: String
            if s.isSubscribed { state = "subscribed" }
            else if s.isBlocked { state = "blocked" }
            else if s.isPinned { state = "pinned" }
            else if s.lease != nil { state = "leased" }
            else if case .pool = s.stall { state = "waiting" }
            else { state = "idle" }
            let name = s.name.map { Metrics.jsonString(String(decoding: $0, as: UTF8.self)) } ?? "null"
            let upstream = several ? "\"upstream\":\(Metrics.jsonString(proxy.config.upstreamLabel ?? "")),": ""
            return "{\(upstream)\"id\":\(c.id),\"addr\":\(Metrics.jsonString(c.peerAddress)),\"name\":\(name),\"db\":\(s.db),\"resp\":\(s.proto),"
                + "\"age\":\(Int(now - c.createdAt)),\"idle\":\(Int(now - c.lastActive)),\"state\":\"\(state)\","
                + "\"in_flight\":\(s.inFlight),\"last_command\":\(Metrics.jsonString(s.lastCommand.description)),"
                + "\"output_bytes\":\(c.out.count),\"pin\":\(s.pinReason.map { "\"\($0)\"" } ?? "null")}"
        }
        return items.joined(separator: ",")
    }

    /// One upstream's connections, comma-separated.
    private func upstreamsDocument(_ proxy: Proxy) -> String {
        let now = proxy.base.now()
        let upstream = several ? "\"upstream\":\(Metrics.jsonString(proxy.config.upstreamLabel ?? "")),": ""
        let items = proxy.pool.upstreams.map { u -> String in
            let control = proxy.pool.state.connection(u.handle)?.role == .control
            let pinned = u.leasedTo?._withUnsafeGuaranteedRef { $0.session.isPinned } ?? false
            let state = u.hub != nil ? "pubsub" : pinned ? "pinned" : u.leased ? "leased"
                : u.state.rawValue != "ready" ? u.state.rawValue : control ? "control" : "shared"
            let holder = u.leasedTo.map { String($0.takeUnretainedValue().id) } ?? "null"
            return "{\(upstream)\"id\":\(u.id),\"name\":\(Metrics.jsonString(u.serverName)),\"state\":\"\(state)\",\"resp\":\(u.proto),\"db\":\(u.db),"
                + "\"age\":\(Int(now - u.createdAt)),\"pending\":\(u.pending),\"commands_served\":\(u.commandsServed),\"leased_to\":\(holder),"
                + "\"stuck\":\(u.stuck),\"tls\":\(u.tls.map { Metrics.jsonString($0.description) } ?? "null")}"
        }
        return items.joined(separator: ",")
    }
}

/// A client of /clients: which upstream's (index in `Runtime.proxies`) and its id there (ids are per upstream).
struct ClientRef {
    let proxy: Int
    let id: Int
}

let respoolVersion = "0.1.0"

/// One /clients answer in progress: a batch of clients per loop iteration, on a zero-delay timer.
private final class ClientsStream: EventHandler {
    static let batch = 200
    unowned let endpoint: StatsEndpoint
    let reply: HTTPReply
    let ids: [ClientRef]
    var position = 0
    var wroteAny = false
    var timer: Timer?

    init(endpoint: StatsEndpoint, reply: HTTPReply, ids: [ClientRef]) throws(SystemError) {
        self.endpoint = endpoint
        self.reply = reply
        self.ids = ids
        super.init()
        timer = try Timer(base: endpoint.runtime.base, handler: self)
    }

    override func handleEvent(_ what: Int16, tag: Int) { next() }

    func next() {
        let end = min(ids.count, position + ClientsStream.batch)
        var text = position == 0 ? "[" : ""
        let part = endpoint.clientsDocument(ids: ids[position..<end])
        if !part.isEmpty {
            if wroteAny { text += "," }
            text += part
            wroteAny = true
        }
        position = end
        if position >= ids.count {
            reply.chunk(Array((text + "]").utf8))
            reply.end()
            timer?.free()
            timer = nil
            endpoint.finished(self)
        } else {
            reply.chunk(Array(text.utf8))
            timer?.schedule(after: 0)
        }
    }
}
