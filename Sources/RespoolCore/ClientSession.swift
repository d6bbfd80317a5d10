// ClientSession: one client's state as pure state. It decides what each request needs (forwarded, answered here,
// held until the replies in flight are in, or a connection of some kind first), tracks the connection state the
// client has set up (a transaction or WATCH on a lease, subscriptions, protocol, database, name, authentication,
// CLIENT REPLY) and what each reply or upstream event changes. No I/O: the driver (ClientConnection) frames requests,
// carries bytes and carries out the decisions, and drains the side effects queued in `effects`.
//
// The ordering rule lives here: a request is answered by respool itself only when nothing of the client is in
// flight (`wait` otherwise), and everything in flight is on one connection (`upstream`), so every command gets
// exactly one reply, in the order sent, or the client is closed.
import RESP

public struct ClientSession {
    /// Where the client is, as far as connections go.
    public enum Mode: Equatable, Sendable {
        /// Multiplexed: commands in flight are on the shared connection `upstream` (nil when none are).
        case normal
        /// Holding an exclusive connection (`upstream`): a transaction, WATCH, or a blocking command in flight.
        case leased(Lease)
        /// A KEYS answered by SCAN steps on `upstream` (RESPOOL_KEYS=scan); later requests wait for it.
        case scanning
        /// MULTI could not get a connection: until EXEC or DISCARD, commands are answered with errors (none runs
        /// outside the transaction it was meant for).
        case refusedTransaction(reason: String)
    }

    /// Whether the client is still read from. Kept apart from `Mode`: a client closing (QUIT, a protocol error) may
    /// still hold a lease with replies due, which must be given back when they are in.
    public enum Lifecycle: Equatable, Sendable {
        case open
        /// Reads no more; closed once the replies due are out (and then `lastReply`, if any).
        case closing(reason: String, lastReply: [UInt8]?)
        case closed(reason: String)
    }

    public struct Lease: Equatable, Sendable {
        public var multi = false
        public var watching = false
        /// Its connection state was changed by commands respool cannot undo (SELECT, connection commands in MULTI).
        public var tainted = false
        /// Pinned: server state tied to the connection that lasts beyond a transaction (MONITOR until RESET or the
        /// client closes; CLIENT TRACKING until it is turned off or RESET).
        public var monitor = false
        /// A command of the open transaction was denied (RESPOOL_DENY_COMMANDS): EXEC answers EXECABORT.
        public var denied = false
        public var tracking = false
        /// A transaction's state (MULTI, WATCH): subject to RESPOOL_TRANSACTION_IDLE_TIMEOUT.
        public var holdsState: Bool { multi || watching }
        public var pinned: Bool { monitor || tracking }
        /// The lease stays while any of this lasts.
        public var keepsLease: Bool { holdsState || pinned }
        public init() {}
    }

    /// How a lease goes back: clean (nothing on it: it rejoins the shared set as it is), reset (state on it but no
    /// reply due: RESET and the handshake's name and database, then it rejoins), close (replies still due: a blocked
    /// call or a transaction in flight, whose outcome cannot be waited for).
    public enum LeaseEnd: Equatable, Sendable { case clean, reset, close }

    /// What a request that cannot be answered yet waits for.
    public enum Stall: Equatable, Sendable {
        case none
        /// The replies of the client's commands in flight (a command respool answers itself keeps the order).
        case replies
        /// A connection from the pool.
        case pool(Need)
        /// The server's answer to the client's credential (`Decision.verify`).
        case verification
    }

    /// What the server said to a client's credential.
    public enum AuthOutcome: Equatable, Sendable {
        /// Accepted: connections of this credential id serve the client from now on.
        case verified(user: Int)
        /// Refused: the server's error, byte for byte, is the client's answer.
        case refused([UInt8])
    }

    public enum ReplyMode: Sendable { case on, off, skipNext }

    public enum Decision: Equatable, Sendable {
        /// Send the request to `upstream` (it is set; the request is counted in flight). `silent`: its reply is
        /// dropped (CLIENT REPLY OFF/SKIP).
        case forward(silent: Bool)
        /// Get this first (then `pinned`, `leased` or the hub's connection), and decide again.
        case acquire(Need)
        /// Answered here with these bytes (empty: no reply, CLIENT REPLY OFF/SKIP).
        case reply([UInt8], Answer)
        /// Held until the replies in flight are in (`stall` is `.replies`); decide again then.
        case wait
        /// Subscribe the hub to `added` (names new to this client; `confirmation` is the client's reply, sent when
        /// the server has confirmed them).
        case subscribe(PubSubSpace, added: [[UInt8]], confirmation: [UInt8])
        /// Names this client no longer wants (the reply goes out at once).
        case unsubscribe(PubSubSpace, removed: [[UInt8]], reply: [UInt8])
        /// Answer KEYS by SCAN steps on `upstream` (counted in flight; `scanFinished` ends it). `silent`: the answer is
        /// dropped (CLIENT REPLY OFF/SKIP).
        case scan(pattern: [UInt8], silent: Bool)
        /// CLIENT LIST, CLIENT KILL, CLIENT INFO: answered by the driver, which knows every client (not at all when
        /// `silent`).
        case clientCommand(silent: Bool)
        /// Ask the server whether this credential is good (AUTH or HELLO AUTH with RESPOOL_CLIENT_PASSWORD unset;
        /// `user` nil: AUTH with the password only); `authChecked` brings the answer, then decide again.
        case verify(user: [UInt8]?, password: [UInt8])
    }

    /// What kind of answer respool gave itself (for the counters).
    public enum Answer: Equatable, Sendable {
        /// A connection-level command answered locally (HELLO, CLIENT, SELECT...).
        case local
        /// A command respool does not run through the pool (MONITOR...).
        case refused
        /// KEYS with RESPOOL_KEYS=deny.
        case keysDenied
        /// An error in the server's place (NOAUTH, RESP2 subscribed mode, a refused transaction, a bad argument).
        case error
    }

    /// Side effects of a decision or event, drained by the driver.
    public enum Effect: Equatable, Sendable {
        /// Give the lease back as it is, reset, or close its connection (LeaseEnd).
        case endLease(ConnHandle, LeaseEnd)
        /// The client pinned its lease (`command`: MONITOR, CLIENT TRACKING): the driver counts and logs it, and
        /// routes the server's unsolicited output on it (monitor lines) to the client.
        case pinned(ConnHandle, command: String)
        /// Tracking ended (OFF, RESET, the lease given back): a hold on the hub for REDIRECT ends with it.
        case trackingEnded
        /// Switch the leased connection's protocol (HELLO while holding a lease).
        case retargetLease(ConnHandle, proto: Int)
        /// Name the leased connection after the client (CLIENT SETNAME, HELLO SETNAME).
        case nameLease(ConnHandle)
        /// Unsubscribe the client from everything (RESET, close): the names per space, in the protocol's hub.
        case unsubscribeAll(proto: Int, names: [[[UInt8]]])
    }

    public let id: Int
    public internal(set) var mode = Mode.normal
    public internal(set) var lifecycle = Lifecycle.open
    public internal(set) var stall = Stall.none
    /// The connection the client's in-flight commands are on (a shared one it is pinned to, its lease, or its scan's).
    public var upstream: ConnHandle?
    /// Replies due from upstream (the fast path counts here).
    public var inFlight = 0
    /// Whether a multiplexable command may skip `decide`: nothing of authentication, reply mode, subscriptions or a
    /// refused transaction applies.
    public internal(set) var fastPath = true
    public internal(set) var proto = 2
    public internal(set) var db: Int
    public internal(set) var name: [UInt8]?
    public internal(set) var libName: [UInt8]?
    public internal(set) var libVersion: [UInt8]?
    public internal(set) var authenticated: Bool
    /// The credential the client authenticated with (the driver's id; 0 is the URL's): its commands go to
    /// connections authenticated as that user, never with more rights than it has.
    public internal(set) var user = 0
    /// The server's answer to the credential of the AUTH or HELLO being decided (RESPOOL_CLIENT_PASSWORD unset).
    public internal(set) var authOutcome: AuthOutcome?
    public internal(set) var replyMode = ReplyMode.on
    /// Channels, patterns and shard channels (by `PubSubSpace`).
    public internal(set) var subscriptions: [Set<[UInt8]>] = [[], [], []]
    /// SUBSCRIBE requests whose confirmations wait for the server's.
    public internal(set) var pubsubPending = 0
    /// Commands queued in the current MULTI (CLIENT LIST's multi=), -1 outside MULTI.
    public var multiQueued = -1
    /// The last command's name as CLIENT LIST's cmd= shows it ("get", "client|list"); the driver's fast path sets it.
    public var lastCommand = SmallBytes()
    /// A SCRIPT KILL, FUNCTION KILL or SHUTDOWN is in flight on the control connection (database 0, RESP2): the
    /// client's next commands wait for its reply instead of following it there.
    public internal(set) var onControl = false
    /// CLIENT TRACKING ON REDIRECT <id>: the respool client id the invalidations go to (the driver translates it to
    /// a server connection id when it sends the command); nil without REDIRECT or when tracking is off.
    public internal(set) var trackingRedirect: Int?
    @usableFromInline var outbox: [Effect] = []

    public init(id: Int, context: SessionContext) {
        self.id = id
        db = context.defaultDB
        authenticated = context.clientPassword == nil
        updateFastPath()
    }

    // MARK: reading

    public var isSubscribed: Bool {
        !subscriptions[0].isEmpty || !subscriptions[1].isEmpty || !subscriptions[2].isEmpty || pubsubPending > 0
    }
    public var lease: ConnHandle? {
        if case .leased = mode { return upstream }
        return nil
    }
    public var leaseState: Lease? {
        if case .leased(let l) = mode { return l }
        return nil
    }
    public var inMulti: Bool { leaseState?.multi ?? false }
    /// Blocked in a command (a lease without transaction state, with its reply due).
    public var isBlocked: Bool { leaseState.map { !$0.keepsLease && inFlight > 0 } ?? false }
    public var isClosing: Bool { lifecycle != .open }
    public var isClosed: Bool {
        if case .closed = lifecycle { return true }
        return false
    }
    /// Clients the idle timeout never closes: subscribers, clients with replies due (blocked ones included),
    /// waiting for a connection or for their own earlier replies, or scanning.
    /// Monitors too: redis-server never times out a MONITOR client (it is flagged as a replica).
    public var isIdleTimeoutExempt: Bool {
        isSubscribed || inFlight > 0 || stall != .none || mode == .scanning || leaseState?.monitor == true
    }
    public var isPinned: Bool { leaseState?.pinned ?? false }
    /// What pins the client's lease: "monitor", "tracking" (nil when nothing does).
    public var pinReason: String? {
        guard let l = leaseState, l.pinned else { return nil }
        return l.monitor ? (l.tracking ? "monitor,tracking" : "monitor") : "tracking"
    }

    /// The next side effect for the driver to carry out.
    public mutating func nextEffect() -> Effect? { outbox.isEmpty ? nil : outbox.removeFirst() }
    @inlinable public var hasEffects: Bool { !outbox.isEmpty }

    mutating func updateFastPath() {
        let modeAllows: Bool
        switch mode {
        case .normal, .leased: modeAllows = lifecycle == .open
        default: modeAllows = false
        }
        fastPath = modeAllows && !onControl && authenticated && replyMode == .on && pubsubPending == 0 && !(proto == 2 && isSubscribed)
    }

    // MARK: the fast path

    /// A multiplexable command went to `upstream` without `decide` (the driver checked `fastPath`).
    @inlinable
    public mutating func forwardedFast() {
        assert(stall == .none, "fast path while stalled")
        inFlight += 1
        if multiQueued >= 0 { multiQueued += 1 }
    }

    /// The fast path found no connection now: the request waits for the pool (the pool queued the client).
    public mutating func waitFor(_ need: Need) {
        stall = .pool(need)
    }

    /// A shared connection was acquired for the client's next commands (it had none in flight).
    public mutating func pinned(_ h: ConnHandle) {
        precondition(upstream == nil || upstream == h, "client \(id) pinned to \(h) while on \(String(describing: upstream))")
        upstream = h
    }

    // MARK: deciding

    /// What to do with `r`. Changes the state only when the request is handled (not for `.acquire` and `.wait`,
    /// after which the driver decides again).
    public mutating func decide(_ r: Request, context: SessionContext) -> Decision {
        precondition(lifecycle == .open, "decide on client \(id), which is \(lifecycle)")
        stall = .none
        let isClientReply = r.route == .local(.client) && r.args.count > 1 && SmallBytes(lowercasing: r.args[1]) == SmallBytes("reply")
        // CLIENT REPLY decides for its own reply; RESET turns the replies back on before answering (as redis does).
        let silent = replyMode != .on && !isClientReply && r.route != .local(.reset)
        var d = route(r, context: context)
        switch d {
        case .wait:
            stall = .replies
        case .acquire(let need):
            stall = .pool(need)
        case .verify:
            stall = .verification
        case .reply(let bytes, let kind) where silent && !bytes.isEmpty:
            d = .reply([], kind)
            fallthrough
        default:
            lastCommand = CommandTable.reportedName(r)
            if silent {
                switch d {
                case .forward: d = .forward(silent: true)
                case .scan(let pattern, _): d = .scan(pattern: pattern, silent: true)
                case .clientCommand: d = .clientCommand(silent: true)
                case .subscribe(let space, let added, _): d = .subscribe(space, added: added, confirmation: [])
                case .unsubscribe(let space, let removed, _): d = .unsubscribe(space, removed: removed, reply: [])
                default: break
                }
            }
            if replyMode == .skipNext && !isClientReply { replyMode = .on }
            if inMulti { multiQueued += 1 }
        }
        updateFastPath()
        return d
    }

    /// The error for a command refused before it runs, as redis-server's rejectCommand words it: an EXEC refused so
    /// gets "EXECABORT Transaction discarded because of: " and the reason (without its "ERR " code, which redis adds
    /// only to plain errors), whether or not a transaction was open.
    static func rejection(_ message: String, _ r: Request) -> [UInt8] {
        guard r.name == SmallBytes("exec") else { return RESPWriter.errorLine(message) }
        let reason = message.hasPrefix("ERR ") ? String(message.dropFirst(4)) : message
        return RESPWriter.errorLine("EXECABORT Transaction discarded because of: " + reason)
    }

    mutating func route(_ r: Request, context: SessionContext) -> Decision {
        if mode == .scanning || (onControl && inFlight > 0) { return .wait }
        if !authenticated {
            switch r.route {
            case .local(.auth), .local(.hello), .local(.quit), .local(.reset): break
            default:
                if inFlight > 0 { return .wait }
                // redis-server rejects an unknown command (or a wrong argument count) before asking for AUTH.
                return .reply(Self.rejection(CommandTable.serverRejection(r.args) ?? "NOAUTH Authentication required.", r), .error)
            }
        }
        // Confirmations of an earlier SUBSCRIBE are still due: keep the order.
        if pubsubPending > 0 { return .wait }
        if proto == 2 && isSubscribed {
            switch r.route {
            case .pubsub, .ping, .local(.quit), .local(.reset): break
            default:
                if inFlight > 0 { return .wait }
                return .reply(Self.rejection(CommandTable.serverRejection(r.args)
                    ?? "ERR Can't execute '\(CommandTable.fullName(r.args))': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context", r), .error)
            }
        }
        // Denied (RESPOOL_DENY_COMMANDS) after the authentication check and before anything else, as an ACL denial.
        if !context.deny.isEmpty, let denied = context.deny.denied(name: r.name, arg1: r.args.count > 1 ? SmallBytes(lowercasing: r.args[1]) : nil) {
            if inFlight > 0 { return .wait }
            if case .leased(var l) = mode, l.multi {
                if r.name == SmallBytes("exec") { return abortDeniedTransaction(Self.rejection(DenyList.message(denied), r)) }
                l.denied = true
                mode = .leased(l)
            }
            return .reply(Self.rejection(DenyList.message(denied), r), .refused)
        }
        if case .refusedTransaction(let reason) = mode {
            switch r.route {
            case .local(.quit), .local(.reset): break
            default: return refusedTransaction(r.route, reason: reason)
            }
        }
        switch r.route {
        case .forward:
            return forward()
        case .pubsub(let command):
            if inFlight > 0 { return .wait }
            return pubsub(command, args: r.args, context: context)
        case .keys:
            return keys(r, context: context)
        case .ping:
            if proto == 2 && isSubscribed {
                if inFlight > 0 { return .wait }
                return .reply(subscribedPing(r.args), .error)
            }
            return forward()
        case .pubsubCount, .admin:
            return forward()
        case .streamRead:
            return CommandTable.streamReadBlocks(r.args) ? leased(.none) : forward()
        case .blocking:
            return leased(.none)
        case .serverControl:
            if r.name != SmallBytes("shutdown") && (r.args.count < 2 || SmallBytes(lowercasing: r.args[1]) != SmallBytes("kill")) {
                return forward()
            }
            return control()
        case .transaction(let t):
            return transaction(t)
        case .stateful(.monitor) where context.pinning:
            if inMulti { return forward() }   // queued; redis refuses it at EXEC
            return leased(.monitor)
        case .stateful(let kind):
            if inFlight > 0 { return .wait }
            return .reply(RESPWriter.errorLine(CommandTable.refusal(command: r.name.description, kind: kind)), .refused)
        case .local(let command) where inMulti && command != .quit && command != .reset:
            // Inside MULTI, redis queues connection commands too (+QUEUED, run at EXEC): they go to the lease, whose
            // connection state they may change, so it is closed rather than returned afterwards.
            taintLease()
            return forward()
        case .local(let command):
            if command == .client {
                switch CommandTable.clientSubcommand(r.args.count > 1 ? SmallBytes(lowercasing: r.args[1]) : SmallBytes()) {
                case .forward, .unblock: return forward()
                case .tracking where context.pinning: return tracking(r.args, context: context)
                case .tracking:
                    // RESPOOL_PINNING=deny.
                    if inFlight > 0 { return .wait }
                    return .reply(RESPWriter.errorLine(CommandTable.refusal(command: "client|tracking", kind: .connectionState)), .refused)
                default: break
                }
            }
            if inFlight > 0 { return .wait }
            return local(command, args: r.args, context: context)
        }
    }

    /// SCRIPT KILL, FUNCTION KILL, SHUTDOWN: to the control connection (after the client's own replies are in), never
    /// queued behind a script on a shared one; inside a transaction they are queued on the lease as sent.
    mutating func control() -> Decision {
        if case .leased = mode { return forward() }
        if inFlight > 0 { return .wait }
        guard upstream != nil else { return .acquire(.control(user: user)) }
        inFlight += 1
        onControl = true
        return .forward(silent: false)
    }

    /// Sends on `upstream`, acquiring a shared connection first when the client has none.
    mutating func forward() -> Decision {
        guard upstream != nil else { return .acquire(.shared(proto: proto, db: db, user: user)) }
        inFlight += 1
        return .forward(silent: false)
    }

    mutating func taintLease() {
        if case .leased(var l) = mode {
            l.tainted = true
            mode = .leased(l)
        }
    }

    // MARK: replies and events

    /// What the driver does after a reply.
    public enum AfterReply: Equatable, Sendable {
        case nothing
        /// Nothing is in flight any more and a request waits for that: decide on it again.
        case resume
        /// Nothing is in flight any more and the client is closing: write what is left, then close.
        case finishClosing
    }

    /// One reply has been handed over (or dropped, the client being gone).
    @inlinable
    public mutating func replied() -> AfterReply {
        inFlight -= 1
        return inFlight == 0 ? allReplied() : .nothing
    }

    /// Every reply due is in. The common case (a multiplexed client, open, nothing else to do) stays inline in the
    /// driver's reply loop; the rest is `allRepliedSlowly`.
    @inlinable
    mutating func allReplied() -> AfterReply {
        if case .normal = mode, case .open = lifecycle, !onControl {
            upstream = nil
            if case .replies = stall { return .resume }
            return .nothing
        }
        return allRepliedSlowly()
    }

    @usableFromInline
    mutating func allRepliedSlowly() -> AfterReply {
        switch mode {
        case .normal:
            upstream = nil
            onControl = false
        case .leased(let l):
            // A blocking command answered, or a transaction ended: the lease goes back. A closed client's lease was
            // given back when it closed.
            if !l.keepsLease && !isClosed { endLease() }
        case .scanning, .refusedTransaction:
            break
        }
        switch lifecycle {
        case .open:
            updateFastPath()
            return stall == .replies ? .resume : .nothing
        case .closing:
            return .finishClosing
        case .closed:
            return .nothing
        }
    }

    /// Stops reading and closes once the replies due are out (QUIT, CLIENT KILL of itself, a lost transaction, a
    /// malformed request: `lastReply` is its error, sent after everything in flight).
    public mutating func closeAfterReplies(_ reason: String, lastReply: [UInt8]? = nil) {
        guard lifecycle == .open else { return }
        lifecycle = .closing(reason: reason, lastReply: lastReply)
        stall = .none
        updateFastPath()
    }

    /// The reply that goes out after all others before closing (a protocol error's), taken once.
    public mutating func takeLastReply() -> [UInt8]? {
        guard case .closing(let reason, let last?) = lifecycle else { return nil }
        lifecycle = .closing(reason: reason, lastReply: nil)
        return last
    }

    /// The client is gone (or closed by respool): its lease is given back (closed if it held state or replies are
    /// due), its subscriptions end. The driver also removes it from the pool's waiters and drops its replies due.
    public mutating func close(reason: String) {
        if isClosed { return }
        if case .leased = mode { endLease() }
        if case .scanning = mode { mode = .normal }
        if isSubscribed { forgetSubscriptions() }
        stall = .none
        lifecycle = .closed(reason: reason)
        fastPath = false
    }

    // MARK: local state set by local commands (ClientSession+Local.swift)

    mutating func setProto(_ p: Int) {
        if p != proto, case .leased = mode, let h = upstream {
            // Holding a lease (WATCH): its connection switches too, as a direct connection would; it goes back to
            // the pool as a connection of the new protocol.
            outbox.append(.retargetLease(h, proto: p))
        }
        proto = p
    }

    mutating func setName(_ n: [UInt8]?) {
        name = n
        if case .leased = mode, let h = upstream { outbox.append(.nameLease(h)) }
    }

    mutating func setLibrary(name: [UInt8]? = nil, version: [UInt8]? = nil) {
        if let name { libName = name }
        if let version { libVersion = version }
    }

    mutating func setAuthenticated(_ a: Bool) { authenticated = a }
    mutating func setUser(_ u: Int) {
        user = u
        updateFastPath()
    }

    /// The driver has the server's answer to the credential of the stalled AUTH or HELLO (decide it again).
    public mutating func authChecked(_ outcome: AuthOutcome) {
        authOutcome = outcome
    }
    mutating func setReplyMode(_ m: ReplyMode) { replyMode = m }

    /// SELECT: a client holding a lease switches the leased connection itself (which is closed afterwards).
    mutating func select(_ n: Int) -> Bool {
        if n != db, case .leased = mode {
            db = n
            taintLease()
            inFlight += 1
            return true
        }
        db = n
        return false
    }

    /// RESET: back to a new connection's state.
    mutating func reset(context: SessionContext) {
        if case .leased = mode { endLease() }
        if case .refusedTransaction = mode { mode = .normal }
        if isSubscribed { forgetSubscriptions() }
        authenticated = context.clientPassword == nil
        user = 0
        proto = 2
        name = nil
        db = context.defaultDB
        replyMode = .on
    }
}
