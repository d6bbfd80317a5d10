// ClientSession+Transactions: leases (a transaction, WATCH, a blocking command hold an exclusive connection) and the
// transaction state tracked from the requests, as redis tracks it; a MULTI that cannot start refuses its transaction.
import RESP

extension ClientSession {
    // MARK: leases and transactions

    /// How a request sent on the lease changes its transaction state.
    enum LeaseChange { case none, multi, watch, endTransaction, unwatch, monitor, trackingOn, trackingOff }

    /// Sends over the client's exclusive connection, leasing one first (after its shared commands are answered),
    /// and applies `change` once the request is on its way.
    mutating func leased(_ change: LeaseChange) -> Decision {
        guard case .leased(var l) = mode else {
            if inFlight > 0 { return .wait }
            return .acquire(.lease(proto: proto, db: db, user: user))
        }
        switch change {
        case .none: break
        case .multi:
            if !l.multi { multiQueued = -1 }   // MULTI itself is not queued
            l.multi = true
        case .watch:
            if !l.multi { l.watching = true }  // WATCH inside MULTI is an error and changes nothing
        case .endTransaction:
            if l.multi {
                l.multi = false
                l.denied = false
                l.watching = false             // EXEC and DISCARD unwatch everything
                multiQueued = -1
            }
        case .unwatch:
            if !l.multi { l.watching = false } // inside MULTI, UNWATCH is only queued
        case .monitor:
            if !l.monitor, let h = upstream { outbox.append(.pinned(h, command: "MONITOR")) }
            l.monitor = true
        case .trackingOn:
            if !l.tracking, let h = upstream { outbox.append(.pinned(h, command: "CLIENT TRACKING")) }
            l.tracking = true
        case .trackingOff:
            if l.tracking { outbox.append(.trackingEnded) }
            l.tracking = false
            trackingRedirect = nil
        }
        mode = .leased(l)
        inFlight += 1
        return .forward(silent: false)
    }

    /// MULTI and WATCH take a lease; EXEC and DISCARD end MULTI and WATCH, UNWATCH ends WATCH; the lease goes back to
    /// the pool once the state has ended and every reply is in. Without a lease, EXEC/DISCARD/UNWATCH go to a shared
    /// connection, where redis answers them as it would this client ("EXEC without MULTI", +OK).
    mutating func transaction(_ t: TransactionCommand) -> Decision {
        switch t {
        case .multi: return leased(.multi)
        case .watch: return leased(.watch)
        case .exec where leaseState?.denied == true:
            return abortDeniedTransaction(RESPWriter.errorLine("EXECABORT Transaction discarded because of previous errors."))
        case .exec, .discard: return lease == nil ? forward() : leased(.endTransaction)
        case .unwatch: return lease == nil ? forward() : leased(.unwatch)
        }
    }

    /// CLIENT TRACKING ON pins the client's connection (RESP3 invalidations come on it as pushes; with REDIRECT the
    /// driver translates the target) until OFF or RESET; OFF on a client that is not tracking is the server's to
    /// answer; inside MULTI it is queued on the lease, which is then reset rather than reused.
    mutating func tracking(_ args: [[UInt8]], context: SessionContext) -> Decision {
        if inMulti {
            taintLease()
            return forward()
        }
        let on = args.count > 2 && SmallBytes(lowercasing: args[2]) == SmallBytes("on")
        let off = args.count > 2 && SmallBytes(lowercasing: args[2]) == SmallBytes("off")
        guard on || off else { return forward() }   // the server's syntax error
        if off { return leaseState?.tracking == true ? leased(.trackingOff) : forward() }
        var redirect: Int?
        var i = 3
        while i < args.count {
            if SmallBytes(lowercasing: args[i]) == SmallBytes("redirect"), i + 1 < args.count {
                redirect = Int(String(decoding: args[i + 1], as: UTF8.self))
                i += 1
            }
            i += 1
        }
        // The lease first (a lease is assigned at its grant, so it is taken before anything else is asked for).
        guard case .leased = mode else { return leased(.trackingOn) }
        if let redirect, redirect != Int(id), !context.subscriberConnected.contains(SessionContext.hubKey(proto: 2, user: user)) {
            // Invalidations for another client arrive on the RESP2 subscriber connection and are fanned out to
            // subscribers of __redis__:invalidate: it must exist (and have its server id) before the command goes.
            // Asked for with nothing in flight, so a failure's error is this command's reply in its place.
            if inFlight > 0 { return .wait }
            return .acquire(.subscriber(proto: 2, user: user))
        }
        let d = leased(.trackingOn)
        if case .forward = d { trackingRedirect = redirect }
        return d
    }

    /// The pool leased `h` to the client (its shared commands are all answered).
    public mutating func leased(_ h: ConnHandle) {
        precondition(inFlight == 0 && mode == .normal && lifecycle == .open,
                     "client \(id) leased \(h) in mode \(mode), \(lifecycle), with \(inFlight) in flight")
        upstream = h
        mode = .leased(Lease())
        outbox.append(.nameLease(h))
        updateFastPath()
    }

    /// EXEC of a transaction with a denied command: EXECABORT, as redis answers a transaction with a command its
    /// ACL refused. The server's MULTI is ended by the reset the lease gets on its way back; a lease that stays
    /// (CLIENT TRACKING) cannot be reset, so its client is closed after the answer (logged).
    mutating func abortDeniedTransaction(_ reply: [UInt8]) -> Decision {
        if inFlight > 0 { return .wait }
        guard case .leased(var l) = mode else { return forward() }
        l.multi = false
        l.watching = false
        l.denied = false
        l.tainted = true
        mode = .leased(l)
        multiQueued = -1
        if l.keepsLease { closeAfterReplies("denied_command_in_transaction_while_pinned") } else { endLease() }
        return .reply(reply, .error)
    }

    /// After a MULTI that could not start, the client's pipelined transaction is answered as redis answers one whose
    /// commands failed to queue: errors, then EXECABORT at EXEC. Nothing of it runs.
    mutating func refusedTransaction(_ route: CommandRoute, reason: String) -> Decision {
        if inFlight > 0 { return .wait }
        switch route {
        case .transaction(.exec):
            mode = .normal
            return .reply(RESPWriter.errorLine("EXECABORT Transaction discarded because of previous errors."), .error)
        case .transaction(.discard):
            mode = .normal
            return .reply(Array("+OK\r\n".utf8), .error)
        case .transaction(.multi):
            return .reply(RESPWriter.errorLine("ERR MULTI calls can not be nested"), .error)
        case .transaction(.watch):
            return .reply(RESPWriter.errorLine("ERR WATCH inside MULTI is not allowed"), .error)
        default:
            return .reply(RESPWriter.errorLine("ERR respool: command not queued: the transaction could not start (\(reason))"), .error)
        }
    }

    /// The connection the request waited for cannot be had (`message`: the error text, e.g. the pool's reason or
    /// the wait timeout). Returns the request's error reply; a MULTI that cannot start refuses its transaction.
    public mutating func couldNotAcquire(_ need: Need, message: String, command: SmallBytes) -> [UInt8] {
        stall = .none
        if case .lease = need, command == SmallBytes("multi") {
            let reason = message.hasPrefix("ERR ") ? String(message.dropFirst(4)) : message
            mode = .refusedTransaction(reason: reason)
        }
        lastCommand = command
        // The request is answered (with this error): under CLIENT REPLY SKIP it was the one skipped.
        let silent = replyMode != .on
        if replyMode == .skipNext { replyMode = .on }
        updateFastPath()
        return silent ? [] : RESPWriter.errorLine(message)
    }

    /// Whether the client's connection state still needs its lease.
    public var holdsState: Bool { leaseState?.holdsState ?? false }

    /// Gives the lease back: clean (it rejoins the shared set) when nothing is in flight and no state is left on it,
    /// reset when state is left but no reply is due, else its connection is closed (replies still due on it are
    /// dropped by the driver).
    mutating func endLease() {
        guard case .leased(let l) = mode, let h = upstream else { return }
        if l.tracking { outbox.append(.trackingEnded) }
        trackingRedirect = nil
        let end: LeaseEnd = inFlight > 0 ? .close : (l.tainted || l.keepsLease) ? .reset : .clean
        outbox.append(.endLease(h, end))
        mode = .normal
        upstream = nil
        multiQueued = -1
    }

    /// The leased connection is gone (its replies were answered with errors). A client that had transaction state
    /// on it is closed after those errors, as a direct connection to a failed server would be.
    public mutating func leaseLost() {
        guard case .leased(let l) = mode else { return }
        mode = .normal
        upstream = nil
        multiQueued = -1
        if l.holdsState { closeAfterReplies("upstream_lost_during_transaction") }
        // A monitor (or tracking) client would silently stop getting what it asked for: closed, as a direct
        // connection to a failed server is.
        else if l.pinned { closeAfterReplies("upstream_lost_while_pinned") }
        updateFastPath()
    }
}
