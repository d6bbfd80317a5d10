// PubSub: all subscribers of one respool share one upstream subscriber connection per protocol. The hub subscribes
// that connection to the union of its clients' channels, patterns and shard channels (reference-counted) and fans
// each message out, byte for byte, to exactly the clients that asked for it. Clients get their own confirmations
// (with their own counts), sent only once the server has confirmed a new subscription, so a message published after
// a client saw its confirmation always reaches it.
import EventLoop
import Logging
import RESP
import RespoolCore

final class PubSubHub {
    typealias Space = PubSubSpace

    unowned let proxy: Proxy
    let proto: Int
    /// The subscriber connection (a lease without a client), nil until the first subscription.
    private(set) var upstream: UpstreamConnection?
    /// Clients receiving messages, per space and name.
    private var members: [[[UInt8]: [ObjectIdentifier: ClientConnection]]] = [[:], [:], [:]]
    /// Subscriptions per name, counting clients whose confirmation is still pending; the upstream is subscribed
    /// while this is above zero.
    private var refcount: [[[UInt8]: Int]] = [[:], [:], [:]]
    /// Names whose upstream subscription is sent and not yet confirmed.
    private var unconfirmed: [Set<[UInt8]>] = [[], [], []]
    /// Names the server has confirmed (and that no UNSUBSCRIBE has been sent for since).
    private var subscribedUpstream: [Set<[UInt8]>] = [[], [], []]
    /// Names whose upstream UNSUBSCRIBE is sent and not yet confirmed (with how many are on their way).
    private var unconfirmedUnsubscribe: [[[UInt8]: Int]] = [[:], [:], [:]]
    /// Client requests waiting for upstream confirmations, in arrival order.
    private var waiting: [Waiting] = []
    private var nextWaitingID = 0
    /// Commands sent on the subscriber connection whose replies are still due, oldest first: the server answers each
    /// with one confirmation per name, or with one error for the whole command (an ACL without the channel, say).
    private var sent: [Sent] = []
    /// Clients tracking with REDIRECT to a client of this hub (RESP2): the server sends their invalidations to this
    /// connection, which stays open while any of them tracks.
    private var trackers: Set<Int> = []
    /// Clients whose CLIENT TRACKING waits for this connection's handshake (its server id).
    private var readyWaiters: [ClientConnection] = []

    struct Waiting {
        let id: Int
        let client: ClientConnection
        let space: Space
        let names: [[UInt8]]
        let reply: [UInt8]
        /// An UNSUBSCRIBE's reply, waiting for the server to confirm the names it unsubscribed upstream (so counts
        /// asked for after it, PUBSUB NUMPAT say, are the server's as they would be directly).
        var unsubscribe = false
    }

    struct Sent {
        let subscribe: Bool
        let space: Space
        let names: [[UInt8]]
        /// The request it was sent for (a SUBSCRIBE), which gets the server's error if there is one.
        let owner: Int?
        var repliesLeft: Int
    }

    let user: Int
    private var key: Int { SessionContext.hubKey(proto: proto, user: user) }

    init(proxy: Proxy, proto: Int, user: Int) {
        self.proxy = proxy
        self.proto = proto
        self.user = user
    }

    var channelCount: Int { members[0].count + members[1].count + members[2].count }

    /// What to add to the server's count of `channel` (PubSubCount): this hub's clients on it minus the hub's own
    /// subscription; for the channel space, its patterns too (each client's matching pattern counts once, as each
    /// of the hub's does on the server).
    func correction(_ space: Space, _ channel: [UInt8]) -> Int {
        var c = (members[space.rawValue][channel]?.count ?? 0) - (subscribedUpstream[space.rawValue].contains(channel) ? 1 : 0)
        if space == .channel {
            for (pattern, clients) in members[Space.pattern.rawValue] where Glob.match(pattern, channel) { c += clients.count }
            for pattern in subscribedUpstream[Space.pattern.rawValue] where Glob.match(pattern, channel) { c -= 1 }
        }
        return c
    }

    private static let subscribeWords = ["SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE"]
    private static let unsubscribeWords = ["UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE"]

    private func send(subscribe: Bool, space: Space, names: [[UInt8]], owner: Int?) {
        guard let u = upstream, !names.isEmpty else { return }
        let word = (subscribe ? Self.subscribeWords : Self.unsubscribeWords)[space.rawValue]
        u.sendToHub(RESPWriter.command([Array(word.utf8)] + names))
        sent.append(Sent(subscribe: subscribe, space: space, names: names, owner: owner, repliesLeft: names.count))
        for n in names {
            if subscribe {
                unconfirmed[space.rawValue].insert(n)
            } else {
                subscribedUpstream[space.rawValue].remove(n)
                unconfirmedUnsubscribe[space.rawValue][n, default: 0] += 1
            }
        }
    }

    /// The pool gave the hub its subscriber connection.
    func attach(_ u: UpstreamConnection) {
        guard upstream !== u else { return }
        precondition(upstream == nil, "hub of RESP\(proto) given a second subscriber connection")
        upstream = u
        u.hub = self
        u.rename("\(proxy.config.namePrefix):pubsub")
        proxy.sessionContext.subscriberReady.insert(key)
        // An established connection switched to this role has long finished its handshake (its server id is
        // known): ready now, not at a handshake that will never come again.
        if u.state == .ready { upstreamReady() }
    }

    /// The subscriber connection is gone (closed by the hub, or failed: `connectionLost` follows).
    func detach() {
        upstream = nil
        proxy.sessionContext.subscriberReady.remove(key)
        proxy.sessionContext.subscriberConnected.remove(key)
        trackers.removeAll()
        wakeReadyWaiters()
    }

    /// The subscriber connection completed its handshake.
    func upstreamReady() {
        proxy.sessionContext.subscriberConnected.insert(key)
        wakeReadyWaiters()
    }

    /// `client` waits for the connection's handshake (then decides its CLIENT TRACKING again).
    func waitForReady(_ client: ClientConnection) { readyWaiters.append(client) }

    private func wakeReadyWaiters() {
        let w = readyWaiters
        readyWaiters.removeAll()
        for c in w where !c.isClosed { proxy.scheduleResume(c) }
    }

    /// The server id of the subscriber connection, for a CLIENT TRACKING REDIRECT of `tracker`, which holds the
    /// connection open while it tracks; nil when there is no ready connection.
    func redirectTarget(for tracker: Int) -> Int64? {
        guard let u = upstream, u.state == .ready, u.serverID > 0 else { return nil }
        trackers.insert(tracker)
        return u.serverID
    }

    /// `tracker` stopped tracking (OFF, RESET, closed).
    func unhold(_ tracker: Int) {
        guard trackers.remove(tracker) != nil else { return }
        releaseIfUnused()
    }

    /// Subscribes `client` to `names` (the hub has its connection). True when the client's confirmations can go
    /// out at once (every name already subscribed upstream); else they go out when the server confirms the new ones
    /// (`ClientConnection.subscriptionAdmitted`), or the server's error does (`subscriptionRefused`).
    func subscribe(_ client: ClientConnection, space: Space, names: [[UInt8]], reply: [UInt8]) -> Bool {
        precondition(upstream != nil, "subscribe without a subscriber connection")
        let id = nextWaitingID
        nextWaitingID += 1
        var fresh: [[UInt8]] = []
        for n in names {
            refcount[space.rawValue][n, default: 0] += 1
            if refcount[space.rawValue][n] == 1 && !unconfirmed[space.rawValue].contains(n)
                && !subscribedUpstream[space.rawValue].contains(n) {
                fresh.append(n)
            }
        }
        send(subscribe: true, space: space, names: fresh, owner: id)
        let w = Waiting(id: id, client: client, space: space, names: names, reply: reply)
        if names.contains(where: { unconfirmed[space.rawValue].contains($0) }) {
            waiting.append(w)
            return false
        }
        for n in names { members[space.rawValue][n, default: [:]][ObjectIdentifier(client)] = client }
        return true
    }

    /// Removes `client` from `names` (unsubscribing upstream the names nobody wants any more). True when the
    /// client's reply can go at once; else (`reply` given, names unsubscribed upstream) it goes out when the server
    /// has confirmed them (`ClientConnection.subscriptionAdmitted`), as a direct client's comes after the server
    /// has removed its subscription.
    @discardableResult
    func unsubscribe(_ client: ClientConnection, space: Space, names: [[UInt8]], reply: [UInt8]? = nil) -> Bool {
        var gone: [[UInt8]] = []
        for n in names {
            members[space.rawValue][n]?.removeValue(forKey: ObjectIdentifier(client))
            if members[space.rawValue][n]?.isEmpty == true { members[space.rawValue][n] = nil }
            if release(space: space, name: n) { gone.append(n) }
        }
        send(subscribe: false, space: space, names: gone, owner: nil)
        var waits = false
        if let reply, !gone.isEmpty, upstream != nil {
            waiting.append(Waiting(id: nextWaitingID, client: client, space: space, names: gone, reply: reply, unsubscribe: true))
            nextWaitingID += 1
            waits = true
        }
        releaseIfUnused()
        return !waits
    }

    /// One client less wants `name`; true when the upstream subscription should end now (a name whose subscription
    /// is still unconfirmed is unsubscribed when its confirmation comes).
    private func release(space: Space, name n: [UInt8]) -> Bool {
        guard let c = refcount[space.rawValue][n] else { return false }
        if c > 1 {
            refcount[space.rawValue][n] = c - 1
            return false
        }
        refcount[space.rawValue][n] = nil
        return subscribedUpstream[space.rawValue].contains(n)
    }

    /// A client went away (or sent RESET): all its subscriptions end (`names` per space).
    func forget(_ client: ClientConnection, names: [[[UInt8]]]) {
        waiting.removeAll { $0.client === client }
        for space in Space.allCases where !names[space.rawValue].isEmpty {
            unsubscribe(client, space: space, names: names[space.rawValue])
        }
    }

    private func admit(_ w: Waiting) {
        if !w.unsubscribe {
            for n in w.names { members[w.space.rawValue][n, default: [:]][ObjectIdentifier(w.client)] = w.client }
        }
        w.client.subscriptionAdmitted(w.reply)
    }

    /// When nothing is subscribed any more, the subscriber connection is closed (its slot goes back to the pool).
    func releaseIfUnused() {
        guard let u = upstream, refcount.allSatisfy({ $0.isEmpty }), waiting.isEmpty, trackers.isEmpty, readyWaiters.isEmpty else { return }
        detach()
        u.hub = nil
        sent.removeAll()
        unconfirmed = [[], [], []]
        unconfirmedUnsubscribe = [[:], [:], [:]]
        subscribedUpstream = [[], [], []]
        proxy.pool.endLease(u.handle, .close)
    }

    // MARK: frames from the subscriber connection

    /// One complete frame from the subscriber connection: a message to fan out, a confirmation to consume, or an
    /// error refusing the oldest command sent.
    func frame(_ bytes: UnsafeRawBufferPointer) {
        guard let decoded = (try? RESPDecoder.decode(bytes)) ?? nil else { return }
        let items: [RESPValue]
        switch decoded.value {
        case .array(let a?): items = a
        case .push(let a): items = a
        case .error, .bulkError:
            refused(Array(bytes))
            return
        default: return
        }
        guard let kind = items.first?.string, items.count >= 2 else { return }
        func name(_ i: Int) -> [UInt8]? {
            if case .bulkString(let b?) = items[i] { return b }
            return nil
        }
        switch kind {
        case "message", "pmessage", "smessage":
            let space: Space = kind == "message" ? .channel : kind == "pmessage" ? .pattern : .shard
            guard let key = name(1), let clients = members[space.rawValue][key] else { return }
            proxy.stats[.pubsubMessages] &+= clients.count
            for c in clients.values where !c.isClosed { c.deliver(bytes.baseAddress!, count: bytes.count) }
        case "subscribe", "psubscribe", "ssubscribe":
            let space: Space = kind == "subscribe" ? .channel : kind == "psubscribe" ? .pattern : .shard
            replyArrived()
            guard let key = name(1) else { return }
            unconfirmed[space.rawValue].remove(key)
            subscribedUpstream[space.rawValue].insert(key)
            if refcount[space.rawValue][key] == nil {
                // Everyone who wanted it left (or was refused) while the subscription was on its way.
                send(subscribe: false, space: space, names: [key], owner: nil)
            }
            releaseConfirmed()
            releaseIfUnused()
        case "unsubscribe", "punsubscribe", "sunsubscribe":
            let space: Space = kind == "unsubscribe" ? .channel : kind == "punsubscribe" ? .pattern : .shard
            replyArrived()
            if let key = name(1) { unsubscribeConfirmed(space, key) }
            releaseConfirmed()
            releaseIfUnused()
        default:
            break
        }
    }

    private func unsubscribeConfirmed(_ space: Space, _ key: [UInt8]) {
        guard let c = unconfirmedUnsubscribe[space.rawValue][key] else { return }
        unconfirmedUnsubscribe[space.rawValue][key] = c > 1 ? c - 1 : nil
    }

    /// A confirmation counts against the oldest command sent.
    private func replyArrived() {
        guard !sent.isEmpty else { return }
        sent[0].repliesLeft -= 1
        if sent[0].repliesLeft <= 0 { sent.removeFirst() }
    }

    /// The server refused the oldest command sent (`error` is its reply, byte for byte). A SUBSCRIBE's request gets
    /// that error as its reply, in its place in the client's order, and its names are rolled back; names it
    /// subscribed for that other waiting requests also want are asked for again, on behalf of the first of them
    /// (so if the server refuses those too, it is that request's own names it refuses).
    private func refused(_ error: [UInt8]) {
        guard !sent.isEmpty else {
            proxy.logger.warning("subscriber connection error", metadata: ["error": "\(String(decoding: error, as: UTF8.self))"])
            return
        }
        let s = sent.removeFirst()
        guard s.subscribe else {
            proxy.logger.warning("unsubscribe refused by the server", metadata: ["error": "\(String(decoding: error, as: UTF8.self))"])
            for n in s.names { unsubscribeConfirmed(s.space, n) }
            releaseConfirmed()
            releaseIfUnused()
            return
        }
        for n in s.names { unconfirmed[s.space.rawValue].remove(n) }
        var gone: [[UInt8]] = []
        if let i = waiting.firstIndex(where: { $0.id == s.owner }) {
            let w = waiting.remove(at: i)
            for n in w.names where release(space: w.space, name: n) { gone.append(n) }
            w.client.subscriptionRefused(space: w.space, added: w.names, error: error)
        }
        send(subscribe: false, space: s.space, names: gone, owner: nil)
        // Names of the refused command still wanted by other waiting requests: asked for again.
        var again = s.names.filter { refcount[s.space.rawValue][$0] != nil }
        for w in waiting where w.space == s.space && !again.isEmpty {
            let mine = again.filter { w.names.contains($0) }
            guard !mine.isEmpty else { continue }
            again.removeAll { mine.contains($0) }
            send(subscribe: true, space: s.space, names: mine, owner: w.id)
        }
        releaseConfirmed()
        releaseIfUnused()
    }

    /// Sends the confirmations whose names are all confirmed upstream, keeping each client's order.
    private func releaseConfirmed() {
        var still: [Waiting] = []
        var blocked = Set<ObjectIdentifier>()
        for w in waiting {
            let id = ObjectIdentifier(w.client)
            let ready = !blocked.contains(id) && !w.names.contains {
                w.unsubscribe ? unconfirmedUnsubscribe[w.space.rawValue][$0] != nil : unconfirmed[w.space.rawValue].contains($0)
            }
            if ready {
                if !w.client.isClosed { admit(w) }
            } else {
                blocked.insert(id)
                still.append(w)
            }
        }
        waiting = still
    }

    /// The subscriber connection failed: every subscriber is closed, as a direct connection to a failed server
    /// would be; clients reconnect and subscribe again.
    func connectionLost() {
        detach()
        var clients: [ClientConnection] = members.flatMap { $0.values.flatMap { $0.values } }
        clients += waiting.map(\.client)
        members = [[:], [:], [:]]
        refcount = [[:], [:], [:]]
        unconfirmed = [[], [], []]
        subscribedUpstream = [[], [], []]
        unconfirmedUnsubscribe = [[:], [:], [:]]
        waiting = []
        sent = []
        var seen = Set<ObjectIdentifier>()
        for c in clients where seen.insert(ObjectIdentifier(c)).inserted {
            c.session.subscriberLost()
            c.close(reason: "upstream_lost_during_subscription")
        }
        proxy.logger.warning("subscriber connection lost", metadata: ["subscribers": "\(seen.count)"])
    }
}
