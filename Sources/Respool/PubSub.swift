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
    enum Space: Int { case channel = 0, pattern = 1, shard = 2 }

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
    /// Client requests waiting for upstream confirmations, in arrival order.
    private var waiting: [Waiting] = []
    private var nextWaitingID = 0
    /// Commands sent on the subscriber connection whose replies are still due, oldest first: the server answers each
    /// with one confirmation per name, or with one error for the whole command (an ACL without the channel, say).
    private var sent: [Sent] = []

    struct Waiting {
        let id: Int
        let client: ClientConnection
        let space: Space
        let names: [[UInt8]]
        let reply: [UInt8]
    }

    struct Sent {
        let subscribe: Bool
        let space: Space
        let names: [[UInt8]]
        /// The request it was sent for (a SUBSCRIBE), which gets the server's error if there is one.
        let owner: Int?
        var repliesLeft: Int
    }

    init(proxy: Proxy, proto: Int) {
        self.proxy = proxy
        self.proto = proto
    }

    var channelCount: Int { members[0].count + members[1].count + members[2].count }

    private static let subscribeWords = ["SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE"]
    private static let unsubscribeWords = ["UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE"]

    private func send(subscribe: Bool, space: Space, names: [[UInt8]], owner: Int?) {
        guard let u = upstream, !names.isEmpty else { return }
        let word = (subscribe ? Self.subscribeWords : Self.unsubscribeWords)[space.rawValue]
        u.sendInternal(RESPWriter.command([Array(word.utf8)] + names))
        sent.append(Sent(subscribe: subscribe, space: space, names: names, owner: owner, repliesLeft: names.count))
        for n in names {
            if subscribe {
                unconfirmed[space.rawValue].insert(n)
            } else {
                subscribedUpstream[space.rawValue].remove(n)
            }
        }
    }

    /// Subscribes `client` to `names`. The reply (its confirmations) is sent at once when every name is already
    /// subscribed upstream, else when the server confirms the new ones (or the server's error instead, if it refuses
    /// them). Returns false when no subscriber connection can be had yet (the client waits for the pool), or an error.
    func subscribe(_ client: ClientConnection, space: Space, names: [[UInt8]], reply: [UInt8]) -> Result<Bool, PubSubError> {
        if upstream == nil {
            switch proxy.pool.lease(proto: proto, db: proxy.config.upstream.db, for: nil) {
            case .ready(let u):
                let conn = u.takeUnretainedValue()
                conn.hub = self
                conn.rename("\(proxy.config.namePrefix):pubsub")
                upstream = conn
            case .wait:
                return .success(false)
            case .unavailable(let why):
                return .failure(PubSubError(message: why))
            }
        }
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
            client.pubsubPending += 1
            waiting.append(w)
        } else {
            admit(w)
        }
        return .success(true)
    }

    /// Removes `client` from `names` (unsubscribing upstream the names nobody wants any more).
    func unsubscribe(_ client: ClientConnection, space: Space, names: [[UInt8]]) {
        var gone: [[UInt8]] = []
        for n in names {
            members[space.rawValue][n]?.removeValue(forKey: ObjectIdentifier(client))
            if members[space.rawValue][n]?.isEmpty == true { members[space.rawValue][n] = nil }
            if release(space: space, name: n) { gone.append(n) }
        }
        send(subscribe: false, space: space, names: gone, owner: nil)
        releaseIfUnused()
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

    /// A client went away: all its subscriptions end.
    func forget(_ client: ClientConnection) {
        waiting.removeAll { $0.client === client }
        for space in [Space.channel, .pattern, .shard] {
            let names = client.subscriptions[space.rawValue]
            if !names.isEmpty { unsubscribe(client, space: space, names: Array(names)) }
        }
    }

    private func admit(_ w: Waiting) {
        for n in w.names { members[w.space.rawValue][n, default: [:]][ObjectIdentifier(w.client)] = w.client }
        w.client.pubsubAdmitted(w.reply)
    }

    /// When nothing is subscribed any more, the subscriber connection is closed (its slot goes back to the pool).
    private func releaseIfUnused() {
        guard let u = upstream, refcount.allSatisfy({ $0.isEmpty }), waiting.isEmpty else { return }
        upstream = nil
        u.hub = nil
        sent.removeAll()
        unconfirmed = [[], [], []]
        subscribedUpstream = [[], [], []]
        proxy.pool.endLease(Unmanaged.passUnretained(u), clean: false)
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
            proxy.stats.pubsubMessagesFannedOut &+= clients.count
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
            replyArrived()
        default:
            break
        }
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
            return
        }
        for n in s.names { unconfirmed[s.space.rawValue].remove(n) }
        var gone: [[UInt8]] = []
        if let i = waiting.firstIndex(where: { $0.id == s.owner }) {
            let w = waiting.remove(at: i)
            for n in w.names where release(space: w.space, name: n) { gone.append(n) }
            w.client.pubsubRefused(w, error: error)
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
            let ready = !blocked.contains(id) && !w.names.contains { unconfirmed[w.space.rawValue].contains($0) }
            if ready {
                w.client.pubsubPending -= 1
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
        upstream = nil
        let everyone = Set(members.flatMap { $0.values.flatMap { $0.values } }.map(ObjectIdentifier.init))
        var clients: [ClientConnection] = members.flatMap { $0.values.flatMap { $0.values } }
        clients += waiting.map(\.client)
        members = [[:], [:], [:]]
        refcount = [[:], [:], [:]]
        unconfirmed = [[], [], []]
        subscribedUpstream = [[], [], []]
        waiting = []
        sent = []
        var seen = Set<ObjectIdentifier>()
        for c in clients where seen.insert(ObjectIdentifier(c)).inserted {
            c.subscriptions = [[], [], []]
            c.pubsubPending = 0
            c.close(reason: "upstream_lost_during_subscription")
        }
        proxy.logger.warning("subscriber connection lost", metadata: ["subscribers": "\(everyone.count)"])
    }
}

struct PubSubError: Error {
    let message: String
}

extension ClientConnection {
    var subscriptionCount: Int { subscriptions[0].count + subscriptions[1].count }

    /// Handles SUBSCRIBE and friends. Returns false when the client must wait (for the pool).
    func pubsub(_ command: PubSubCommand, args: [[UInt8]]) -> Bool {
        let space: PubSubHub.Space
        switch command {
        case .subscribe, .unsubscribe: space = .channel
        case .psubscribe, .punsubscribe: space = .pattern
        case .ssubscribe, .sunsubscribe: space = .shard
        }
        let names = Array(args.dropFirst())
        let hub = proxy.hub(proto: proto)
        switch command {
        case .subscribe, .psubscribe, .ssubscribe:
            if names.isEmpty {
                replyError("ERR wrong number of arguments for '\(command.word)' command")
                return true
            }
            if inMulti {
                replyError("ERR Command not allowed inside a transaction")
                return true
            }
            // The confirmations, computed now with this client's counts after each name.
            var reply: [UInt8] = []
            var added: [[UInt8]] = []
            for n in names {
                if subscriptions[space.rawValue].insert(n).inserted { added.append(n) }
                let count = space == .shard ? subscriptions[2].count : subscriptionCount
                reply += confirmation(command.word, n, count)
            }
            switch hub.subscribe(self, space: space, names: added, reply: reply) {
            case .success(true):
                proxy.stats.pubsubSubscribes &+= names.count
                updateFastPath()
                return true
            case .success(false):
                for n in added { subscriptions[space.rawValue].remove(n) }
                stall = .pool
                return false
            case .failure(let e):
                for n in added { subscriptions[space.rawValue].remove(n) }
                replyError(e.message)
                return true
            }
        case .unsubscribe, .punsubscribe, .sunsubscribe:
            let targets = names.isEmpty ? subscriptions[space.rawValue].sorted { $0.lexicographicallyPrecedes($1) } : names
            var reply: [UInt8] = []
            if targets.isEmpty {
                reply += confirmation(command.word, nil, space == .shard ? subscriptions[2].count : subscriptionCount)
            }
            var removed: [[UInt8]] = []
            for n in targets {
                if subscriptions[space.rawValue].remove(n) != nil { removed.append(n) }
                reply += confirmation(command.word, n, space == .shard ? subscriptions[2].count : subscriptionCount)
            }
            if !removed.isEmpty { hub.unsubscribe(self, space: space, names: removed) }
            pubsubReply(reply)
            updateFastPath()
            return true
        }
    }

    /// "*3 $<kind> $<name> :<count>" (a push frame in RESP3).
    private func confirmation(_ word: String, _ name: [UInt8]?, _ count: Int) -> [UInt8] {
        var w = RESPWriter(proto: proto)
        w.pushHeader(3)
        w.bulk(word)
        if let name { w.bulk(name) } else { w.null() }
        w.integer(count)
        return w.bytes
    }

    /// The server refused this client's SUBSCRIBE: its error is the reply, and the names it added are gone again
    /// (as on redis-server, a refused SUBSCRIBE subscribes to none of its names).
    func pubsubRefused(_ w: PubSubHub.Waiting, error: [UInt8]) {
        pubsubPending -= 1
        for n in w.names { subscriptions[w.space.rawValue].remove(n) }
        if !isClosed {
            out.append(error)
            markDirty()
        }
        if pubsubPending == 0 {
            updateFastPath()
            if stall == .barrier { proxy.scheduleResume(self) }
        }
    }

    /// The hub admitted this client's subscriptions: its confirmations go out now.
    func pubsubAdmitted(_ reply: [UInt8]) {
        if isClosed { return }
        out.append(reply)
        markDirty()
        if pubsubPending == 0 {
            updateFastPath()
            if stall == .barrier { proxy.scheduleResume(self) }
        }
    }

    private func pubsubReply(_ bytes: [UInt8]) {
        guard !isClosed else { return }
        out.append(bytes)
        markDirty()
    }

    /// PING in RESP2 subscribed mode: redis answers "*2 $4 pong $<message>".
    func subscribedPing(_ args: [[UInt8]]) {
        if args.count > 2 {
            replyError("ERR wrong number of arguments for 'ping' command")
            return
        }
        var w = RESPWriter(proto: proto)
        w.arrayHeader(2)
        w.bulk("pong")
        w.bulk(args.count == 2 ? args[1] : [])
        reply(w.bytes)
    }

    /// Ends every subscription of this client (RESET, close).
    func unsubscribeAll() {
        if subscriptions.contains(where: { !$0.isEmpty }) || pubsubPending > 0 {
            proxy.hub(proto: proto).forget(self)
            subscriptions = [[], [], []]
            pubsubPending = 0
        }
        updateFastPath()
    }
}
