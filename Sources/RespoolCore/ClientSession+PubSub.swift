// ClientSession+PubSub: a client's subscriptions (its confirmations with its own counts, RESP2 subscribed-mode PING)
// and KEYS under the guard (RESPOOL_KEYS), answered by SCAN steps when asked to.
import RESP

extension ClientSession {
    // MARK: pub/sub

    mutating func forgetSubscriptions() {
        outbox.append(.unsubscribeAll(proto: proto, names: subscriptions.map { $0.sorted { $0.lexicographicallyPrecedes($1) } }))
        subscriptions = [[], [], []]
        pubsubPending = 0
    }

    func count(in space: PubSubSpace) -> Int {
        space == .shard ? subscriptions[2].count : subscriptions[0].count + subscriptions[1].count
    }

    /// "*3 $<kind> $<name> :<count>" (a push frame in RESP3).
    func confirmation(_ word: String, _ name: [UInt8]?, _ count: Int) -> [UInt8] {
        var w = RESPWriter(proto: proto)
        w.pushHeader(3)
        w.bulk(word)
        if let name { w.bulk(name) } else { w.null() }
        w.integer(count)
        return w.bytes
    }

    mutating func pubsub(_ command: PubSubCommand, args: [[UInt8]], context: SessionContext) -> Decision {
        let space: PubSubSpace
        switch command {
        case .subscribe, .unsubscribe: space = .channel
        case .psubscribe, .punsubscribe: space = .pattern
        case .ssubscribe, .sunsubscribe: space = .shard
        }
        let names = Array(args.dropFirst())
        switch command {
        case .subscribe, .psubscribe, .ssubscribe:
            if names.isEmpty { return .reply(RESPWriter.errorLine("ERR wrong number of arguments for '\(command.word)' command"), .error) }
            if inMulti { return .reply(RESPWriter.errorLine("ERR Command not allowed inside a transaction"), .error) }
            guard context.subscriberReady.contains(SessionContext.hubKey(proto: proto, user: user)) else {
                return .acquire(.subscriber(proto: proto, user: user))
            }
            // The confirmations, computed now with this client's counts after each name.
            var reply: [UInt8] = []
            var added: [[UInt8]] = []
            for n in names {
                if subscriptions[space.rawValue].insert(n).inserted { added.append(n) }
                reply += confirmation(command.word, n, count(in: space))
            }
            return .subscribe(space, added: added, confirmation: reply)
        case .unsubscribe, .punsubscribe, .sunsubscribe:
            let targets = names.isEmpty ? subscriptions[space.rawValue].sorted { $0.lexicographicallyPrecedes($1) } : names
            var reply: [UInt8] = []
            if targets.isEmpty { reply += confirmation(command.word, nil, count(in: space)) }
            var removed: [[UInt8]] = []
            for n in targets {
                if subscriptions[space.rawValue].remove(n) != nil { removed.append(n) }
                reply += confirmation(command.word, n, count(in: space))
            }
            return .unsubscribe(space, removed: removed, reply: reply)
        }
    }

    /// The hub waits for the server to confirm names of the last SUBSCRIBE: later requests wait for its reply.
    public mutating func subscriptionPending() {
        pubsubPending += 1
        updateFastPath()
    }

    /// The server confirmed a pending SUBSCRIBE (its confirmation goes out now). Returns whether a request waits
    /// for it (`decide` again).
    public mutating func subscriptionConfirmed() -> Bool {
        pubsubPending -= 1
        updateFastPath()
        return pubsubPending == 0 && stall == .replies && inFlight == 0
    }

    /// The server refused a pending SUBSCRIBE: the names it added are gone again (a refused SUBSCRIBE subscribes
    /// to none of its names). Returns whether a request waits for it.
    public mutating func subscriptionRefused(space: PubSubSpace, added: [[UInt8]]) -> Bool {
        for n in added { subscriptions[space.rawValue].remove(n) }
        return subscriptionConfirmed()
    }

    /// The subscriber connection is gone: the client is closed, as a direct connection to a failed server would be.
    public mutating func subscriberLost() {
        subscriptions = [[], [], []]
        pubsubPending = 0
    }

    /// PING in RESP2 subscribed mode: redis answers "*2 $4 pong $<message>".
    func subscribedPing(_ args: [[UInt8]]) -> [UInt8] {
        if args.count > 2 { return RESPWriter.errorLine("ERR wrong number of arguments for 'ping' command") }
        var w = RESPWriter(proto: proto)
        w.arrayHeader(2)
        w.bulk("pong")
        w.bulk(args.count == 2 ? args[1] : [])
        return w.bytes
    }

    // MARK: KEYS

    mutating func keys(_ r: Request, context: SessionContext) -> Decision {
        switch context.keysMode {
        case .allow, .warn:
            return forward()
        case .deny:
            if inFlight > 0 { return .wait }
            return .reply(RESPWriter.errorLine("ERR respool: KEYS is disabled (RESPOOL_KEYS=deny): it blocks the server for every key it holds; use SCAN 0 MATCH <pattern> COUNT 1000 and follow the cursor"), .keysDenied)
        case .scan:
            // Redis answers the arity error; inside a transaction KEYS is queued on the lease as sent.
            guard r.args.count == 2, mode == .normal else { return forward() }
            if inFlight > 0 { return .wait }
            guard upstream != nil else { return .acquire(.shared(proto: proto, db: db, user: user)) }
            mode = .scanning
            inFlight += 1
            return .scan(pattern: r.args[1], silent: false)
        }
    }

    /// The scan's reply (or error) has been handed over: later requests may go on.
    public mutating func scanFinished() {
        guard mode == .scanning else { return }
        mode = .normal
        updateFastPath()
    }
}
