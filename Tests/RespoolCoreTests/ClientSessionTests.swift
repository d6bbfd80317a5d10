// ClientSession's decisions one by one, without sockets: the fast path, the order rule (a command respool answers
// itself waits for the replies in flight), leases through a transaction, WATCH and a blocking call, a MULTI that
// cannot start, HELLO and SELECT on a lease, KEYS by SCAN, CLIENT REPLY, and closing with a lease.
import RESP
@testable import RespoolCore
import XCTest

final class ClientSessionTests: XCTestCase {
    let context = SessionContext(clientPassword: nil, databases: 16, defaultDB: 0, keysMode: .scan)
    let shared = ConnHandle(UnsafeMutableRawPointer(bitPattern: 0x10)!)
    let lease = ConnHandle(UnsafeMutableRawPointer(bitPattern: 0x20)!)

    func request(_ args: String...) -> Request { Request(args: args.map { Array($0.utf8) }) }

    func effects(_ s: inout ClientSession) -> [ClientSession.Effect] {
        var out: [ClientSession.Effect] = []
        while let e = s.nextEffect() { out.append(e) }
        return out
    }

    func testForwardNeedsAConnectionThenPins() {
        var s = ClientSession(id: 1, context: context)
        XCTAssertTrue(s.fastPath)
        XCTAssertEqual(s.decide(request("GET", "k"), context: context), .acquire(.shared(proto: 2, db: 0)))
        XCTAssertEqual(s.stall, .pool(.shared(proto: 2, db: 0)))
        s.pinned(shared)
        XCTAssertEqual(s.decide(request("GET", "k"), context: context), .forward(silent: false))
        s.forwardedFast()
        XCTAssertEqual(s.inFlight, 2)
        XCTAssertEqual(s.replied(), .nothing)
        XCTAssertEqual(s.replied(), .nothing)
        XCTAssertNil(s.upstream, "with nothing in flight the client is unpinned (it may go elsewhere next time)")
    }

    /// A command answered locally while replies are due waits for them, then is answered in its place.
    func testLocalRepliesKeepTheOrder() {
        var s = ClientSession(id: 7, context: context)
        s.pinned(shared)
        s.forwardedFast()
        XCTAssertEqual(s.decide(request("CLIENT", "ID"), context: context), .wait)
        XCTAssertEqual(s.replied(), .resume)
        guard case .reply(let bytes, .local) = s.decide(request("CLIENT", "ID"), context: context) else { return XCTFail() }
        XCTAssertEqual(bytes, Array(":7\r\n".utf8))
    }

    /// MULTI takes a lease after the shared commands are answered; the commands of the transaction go there; EXEC's
    /// reply gives it back clean.
    func testTransactionOnALease() {
        var s = ClientSession(id: 1, context: context)
        s.pinned(shared)
        s.forwardedFast()
        XCTAssertEqual(s.decide(request("MULTI"), context: context), .wait, "its shared command first")
        _ = s.replied()
        XCTAssertEqual(s.decide(request("MULTI"), context: context), .acquire(.lease(proto: 2, db: 0)))
        s.leased(lease)
        XCTAssertEqual(effects(&s), [.nameLease(lease)])
        XCTAssertEqual(s.decide(request("MULTI"), context: context), .forward(silent: false))
        XCTAssertTrue(s.inMulti)
        XCTAssertTrue(s.fastPath, "the transaction's commands take the fast path, to the lease")
        s.forwardedFast()
        XCTAssertEqual(s.multiQueued, 1)
        XCTAssertEqual(s.decide(request("EXEC"), context: context), .forward(silent: false))
        XCTAssertFalse(s.holdsState)
        XCTAssertEqual(s.replied(), .nothing)
        XCTAssertEqual(s.replied(), .nothing)
        XCTAssertEqual(s.replied(), .nothing)
        XCTAssertEqual(effects(&s), [.endLease(lease, .clean)])
        XCTAssertNil(s.lease)
        XCTAssertEqual(s.mode, .normal)
    }

    /// WATCH holds the lease until UNWATCH; a blocking command's lease ends with its reply.
    func testWatchAndBlockingLeases() {
        var s = ClientSession(id: 1, context: context)
        XCTAssertEqual(s.decide(request("BLPOP", "l", "0"), context: context), .acquire(.lease(proto: 2, db: 0)))
        s.leased(lease)
        _ = effects(&s)
        XCTAssertEqual(s.decide(request("BLPOP", "l", "0"), context: context), .forward(silent: false))
        XCTAssertTrue(s.isBlocked)
        XCTAssertTrue(s.isIdleTimeoutExempt)
        _ = s.replied()
        XCTAssertEqual(effects(&s), [.endLease(lease, .clean)])

        XCTAssertEqual(s.decide(request("WATCH", "k"), context: context), .acquire(.lease(proto: 2, db: 0)))
        s.leased(lease)
        _ = effects(&s)
        _ = s.decide(request("WATCH", "k"), context: context)
        _ = s.replied()
        XCTAssertTrue(effects(&s).isEmpty, "WATCH state holds the lease")
        XCTAssertEqual(s.decide(request("XREAD", "STREAMS", "block", "0"), context: context), .forward(silent: false), "on the lease")
        _ = s.replied()
        XCTAssertEqual(s.decide(request("UNWATCH"), context: context), .forward(silent: false))
        _ = s.replied()
        XCTAssertEqual(effects(&s), [.endLease(lease, .clean)])
    }

    /// HELLO while holding a lease switches the leased connection too; SELECT is sent there and taints it.
    func testHelloAndSelectOnALease() {
        var ctx = context
        ctx.serverInfo = ServerInfo()
        var s = ClientSession(id: 1, context: ctx)
        _ = s.decide(request("WATCH", "k"), context: ctx)
        s.leased(lease)
        _ = s.decide(request("WATCH", "k"), context: ctx)
        _ = s.replied()
        _ = effects(&s)
        guard case .reply(_, .local) = s.decide(request("HELLO", "3"), context: ctx) else { return XCTFail() }
        XCTAssertEqual(effects(&s), [.retargetLease(lease, proto: 3)])
        XCTAssertEqual(s.decide(request("SELECT", "2"), context: ctx), .forward(silent: false), "SELECT goes to the lease")
        _ = s.replied()
        _ = s.decide(request("UNWATCH"), context: ctx)
        _ = s.replied()
        XCTAssertEqual(effects(&s), [.endLease(lease, .reset)], "a lease whose database was switched is reset before reuse")
        XCTAssertEqual(s.db, 2)
    }

    /// A MULTI that cannot get a connection: the queued commands are answered with errors, EXEC with EXECABORT.
    func testRefusedTransaction() {
        var s = ClientSession(id: 1, context: context)
        XCTAssertEqual(s.decide(request("MULTI"), context: context), .acquire(.lease(proto: 2, db: 0)))
        let e = s.couldNotAcquire(.lease(proto: 2, db: 0), message: "ERR respool: no upstream connection free", command: SmallBytes("multi"))
        XCTAssertEqual(e, Array("-ERR respool: no upstream connection free\r\n".utf8))
        XCTAssertEqual(s.mode, .refusedTransaction(reason: "respool: no upstream connection free"))
        XCTAssertFalse(s.fastPath, "nothing of the transaction may run outside it")
        guard case .reply(let queued, .error) = s.decide(request("SET", "k", "v"), context: context) else { return XCTFail() }
        XCTAssertTrue(String(decoding: queued, as: UTF8.self).hasPrefix("-ERR respool: command not queued"))
        guard case .reply(let abort, .error) = s.decide(request("EXEC"), context: context) else { return XCTFail() }
        XCTAssertEqual(abort, Array("-EXECABORT Transaction discarded because of previous errors.\r\n".utf8))
        XCTAssertEqual(s.mode, .normal)
        XCTAssertTrue(s.fastPath)
    }

    /// KEYS by SCAN: later requests wait for its answer, and it is forgotten once answered or cut off.
    func testKeysScanHoldsLaterRequests() {
        var s = ClientSession(id: 1, context: context)
        XCTAssertEqual(s.decide(request("KEYS", "*"), context: context), .acquire(.shared(proto: 2, db: 0)))
        s.pinned(shared)
        XCTAssertEqual(s.decide(request("KEYS", "*"), context: context), .scan(pattern: Array("*".utf8), silent: false))
        XCTAssertFalse(s.fastPath)
        XCTAssertEqual(s.decide(request("GET", "k"), context: context), .wait)
        XCTAssertTrue(s.isIdleTimeoutExempt)
        s.scanFinished()
        XCTAssertEqual(s.replied(), .resume)
        XCTAssertEqual(s.mode, .normal, "a scan cut off or answered leaves nothing behind")
        XCTAssertEqual(s.decide(request("GET", "k"), context: context), .acquire(.shared(proto: 2, db: 0)), "the waiting GET goes on")
    }

    /// CLIENT REPLY OFF silences everything until ON; SKIP silences itself and the next; SKIP while OFF changes
    /// nothing (as in redis); a request that fails to get a connection is the one skipped.
    func testClientReply() {
        var s = ClientSession(id: 1, context: context)
        XCTAssertEqual(s.decide(request("CLIENT", "REPLY", "OFF"), context: context), .reply([], .local))
        XCTAssertEqual(s.decide(request("CLIENT", "ID"), context: context), .reply([], .local))
        XCTAssertEqual(s.decide(request("CLIENT", "LIST"), context: context), .clientCommand(silent: true))
        XCTAssertEqual(s.decide(request("CLIENT", "REPLY", "SKIP"), context: context), .reply([], .local))
        XCTAssertEqual(s.replyMode, .off)
        XCTAssertEqual(s.decide(request("CLIENT", "REPLY", "ON"), context: context), .reply(Array("+OK\r\n".utf8), .local))
        _ = s.decide(request("CLIENT", "REPLY", "SKIP"), context: context)
        XCTAssertEqual(s.decide(request("GET", "k"), context: context), .acquire(.shared(proto: 2, db: 0)))
        XCTAssertEqual(s.couldNotAcquire(.shared(proto: 2, db: 0), message: "ERR upstream unavailable: x", command: SmallBytes("get")), [])
        XCTAssertEqual(s.replyMode, .on)
        XCTAssertFalse(s.decide(request("CLIENT", "ID"), context: context) == .reply([], .local))
    }

    /// A client closing with a lease that holds state gives it back (closed) when it closes; its subscriptions end.
    func testClosingGivesEverythingBack() {
        var s = ClientSession(id: 1, context: context)
        _ = s.decide(request("WATCH", "k"), context: context)
        s.leased(lease)
        _ = s.decide(request("WATCH", "k"), context: context)
        _ = effects(&s)
        s.closeAfterReplies("quit")
        XCTAssertEqual(s.replied(), .finishClosing)
        XCTAssertTrue(effects(&s).isEmpty, "still holding WATCH: the lease goes when the client closes")
        s.close(reason: "quit")
        XCTAssertEqual(effects(&s), [.endLease(lease, .reset)], "WATCH is left on it, nothing in flight: reset")
        XCTAssertNil(s.lease)
        XCTAssertTrue(s.isClosed)
    }

    /// In RESP2 subscribed mode only the subscribe family, PING, QUIT and RESET run; PING answers as redis does.
    func testSubscribedMode() {
        var ctx = context
        ctx.subscriberReady.insert(SessionContext.hubKey(proto: 2, user: 0))
        var s = ClientSession(id: 1, context: ctx)
        XCTAssertEqual(s.decide(request("SUBSCRIBE", "a"), context: ctx),
                       .subscribe(.channel, added: [Array("a".utf8)], confirmation: Array("*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n".utf8)))
        XCTAssertFalse(s.fastPath)
        guard case .reply(let e, .error) = s.decide(request("GET", "k"), context: ctx) else { return XCTFail() }
        XCTAssertTrue(String(decoding: e, as: UTF8.self).hasPrefix("-ERR Can't execute 'get'"))
        XCTAssertEqual(s.decide(request("PING"), context: ctx), .reply(Array("*2\r\n$4\r\npong\r\n$0\r\n\r\n".utf8), .error))
        guard case .unsubscribe(.channel, let removed, _) = s.decide(request("UNSUBSCRIBE"), context: ctx) else { return XCTFail() }
        XCTAssertEqual(removed, [Array("a".utf8)])
        XCTAssertTrue(s.fastPath)
    }
}
