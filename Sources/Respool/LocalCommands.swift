// LocalCommands: connection-level commands that respool answers itself, in Redis's own formats and error texts
// (HELLO, CLIENT SETNAME/GETNAME/SETINFO/ID/INFO, SELECT, AUTH, RESET, QUIT).
import EventLoop
import RESP
import RespoolCore

extension ClientConnection {
    /// Runs a local command (nothing of this client is in flight). Returns false when it must wait for the pool.
    func runLocal(_ command: LocalCommand, args: [[UInt8]]) -> Bool {
        proxy.stats.commandsLocal &+= 1
        switch command {
        case .quit:
            reply(Array("+OK\r\n".utf8))
            closeAfterFlush = true
            closeReason = "quit"
            disableReading()
            return true
        case .hello:
            return hello(args)
        case .client:
            client(args)
            return true
        case .select:
            if !select(args) {
                let frame = RESPWriter.command(args)
                return frame.withUnsafeBytes { forwardToLease($0) }
            }
            return true
        case .auth:
            auth(args)
            return true
        case .reset:
            multiRefused = nil
            if lease != nil { endLease() }
            unsubscribeAll()
            authenticated = proxy.clientPassword == nil
            proto = 2
            name = nil
            db = proxy.config.upstream.db
            reply(Array("+RESET\r\n".utf8))
            return true
        }
    }

    private func wrongArity(_ command: String) {
        replyError("ERR wrong number of arguments for '\(command)' command")
    }

    private static func text(_ b: [UInt8]) -> String { String(decoding: b, as: UTF8.self) }

    /// Redis's rule for client names and library info: printable ASCII without spaces.
    private static func validName(_ b: [UInt8]) -> Bool {
        b.allSatisfy { $0 > 32 && $0 < 127 }
    }

    private func hello(_ args: [[UInt8]]) -> Bool {
        var version = proto
        if args.count >= 2 {
            guard let v = Int(Self.text(args[1])) else {
                replyError("ERR Protocol version is not an integer or out of range")
                return true
            }
            guard v == 2 || v == 3 else {
                replyError("NOPROTO unsupported protocol version")
                return true
            }
            version = v
        }
        var newName: [UInt8]? = nil
        var j = 2
        while j < args.count {
            let more = args.count - 1 - j
            let opt = SmallBytes(lowercasing: args[j])
            if opt == SmallBytes("auth") && more >= 2 {
                if let e = authError(user: args[j + 1], password: args[j + 2]) {
                    replyError(e)
                    return true
                }
                j += 3
            } else if opt == SmallBytes("setname") && more >= 1 {
                newName = args[j + 1]
                j += 2
            } else {
                replyError("ERR Syntax error in HELLO option '\(Self.text(args[j]))'")
                return true
            }
        }
        if !authenticated {
            replyError("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time")
            return true
        }
        // The reply repeats what the server said about itself: wait for the first handshake if none has completed.
        guard let info = proxy.pool.serverInfo else {
            if proxy.pool.count > 0 {
                stall = .pool
                return false
            }
            switch proxy.pool.acquire(proto: 2, db: db) {
            case .ready: stall = .pool; return false
            case .wait: stall = .pool; return false
            case .unavailable(let why):
                replyError("ERR upstream unavailable: \(why)")
                return true
            }
        }
        if version != proto && isSubscribed {
            replyError("ERR respool: cannot switch protocol while subscribed; UNSUBSCRIBE first")
            return true
        }
        if let newName {
            guard Self.validName(newName) else {
                replyError("ERR Client names cannot contain spaces, newlines or special characters.")
                return true
            }
            name = newName.isEmpty ? nil : newName
            if let lease { proxy.pool.nameLease(lease.takeUnretainedValue(), for: self) }
        }
        if version != proto, let lease {
            // Holding a lease (WATCH): its connection switches too, as a direct connection would (the HELLO's reply
            // is checked and swallowed); it goes back to the pool as a connection of the new protocol.
            lease._withUnsafeGuaranteedRef { $0.retarget(proto: version, db: $0.db) }
        }
        proto = version
        var w = RESPWriter(proto: proto)
        w.mapHeader(7)
        w.bulk("server"); w.bulk(info.server)
        w.bulk("version"); w.bulk(info.version)
        w.bulk("proto"); w.integer(proto)
        w.bulk("id"); w.integer(id)
        w.bulk("mode"); w.bulk(info.mode)
        w.bulk("role"); w.bulk(info.role)
        w.bulk("modules"); w.value(info.modules)
        reply(w.bytes)
        return true
    }

    /// With RESPOOL_CLIENT_PASSWORD set, the default user with that password is accepted (as redis's requirepass);
    /// unset, respool answers as a Redis without a password does: the default user takes any password, others do not
    /// exist. A success authenticates the client.
    private func authError(user: [UInt8]?, password: [UInt8]) -> String? {
        let wrong = "WRONGPASS invalid username-password pair or user is disabled."
        if let required = proxy.clientPassword {
            if let user, Self.text(user) != "default" { return wrong }
            guard ConstantTime.equal(password, required) else { return wrong }
            authenticated = true
            return nil
        }
        if let user, Self.text(user) == "default" { return nil }
        if user == nil {
            return "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"
        }
        return wrong
    }

    private func auth(_ args: [[UInt8]]) {
        if args.count < 2 { return wrongArity("auth") }
        if args.count > 3 { return replyError("ERR syntax error") }
        if let e = authError(user: args.count == 3 ? args[1] : nil, password: args[args.count - 1]) {
            replyError(e)
        } else {
            reply(Array("+OK\r\n".utf8))
        }
    }

    /// SELECT is answered here: the client's later commands go to shared connections of that database (opened
    /// lazily within the cap, or an idle one switched with SELECT). Returns false when it must be sent to the lease.
    private func select(_ args: [[UInt8]]) -> Bool {
        guard args.count == 2 else { wrongArity("select"); return true }
        guard let n = Int(Self.text(args[1])) else { replyError("ERR value is not an integer or out of range"); return true }
        guard n >= 0 && n < proxy.config.databases else { replyError("ERR DB index is out of range"); return true }
        if lease != nil && n != db {
            // A client holding a lease (WATCH) switches the leased connection itself; it is closed afterwards.
            db = n
            leaseTainted = true
            return false
        }
        db = n
        reply(Array("+OK\r\n".utf8))
        return true
    }

    private func client(_ args: [[UInt8]]) {
        guard args.count >= 2 else { return wrongArity("client") }
        let sub = SmallBytes(lowercasing: args[1])
        switch CommandTable.clientSubcommand(sub) {
        case .setname:
            guard args.count == 3 else { return wrongArity("client|setname") }
            guard Self.validName(args[2]) else {
                return replyError("ERR Client names cannot contain spaces, newlines or special characters.")
            }
            name = args[2].isEmpty ? nil : args[2]
            if let lease { proxy.pool.nameLease(lease.takeUnretainedValue(), for: self) }
            reply(Array("+OK\r\n".utf8))
        case .getname:
            guard args.count == 2 else { return wrongArity("client|getname") }
            var w = RESPWriter(proto: proto)
            if let name { w.bulk(name) } else { w.null() }
            reply(w.bytes)
        case .id:
            guard args.count == 2 else { return wrongArity("client|id") }
            var w = RESPWriter(proto: proto)
            w.integer(id)
            reply(w.bytes)
        case .setinfo:
            guard args.count == 4 else { return wrongArity("client|setinfo") }
            let attr = SmallBytes(lowercasing: args[2])
            guard attr == SmallBytes("lib-name") || attr == SmallBytes("lib-ver") else {
                return replyError("ERR Unrecognized option '\(Self.text(args[2]))'")
            }
            guard Self.validName(args[3]) else {
                return replyError("ERR \(attr) cannot contain spaces, newlines or special characters.")
            }
            if attr == SmallBytes("lib-name") { libName = args[3] } else { libVersion = args[3] }
            reply(Array("+OK\r\n".utf8))
        case .info:
            guard args.count == 2 else { return wrongArity("client|info") }
            replyText(infoLine())
        case .list:
            clientList(args)
        case .kill:
            clientKill(args)
        case .reply:
            guard args.count == 3 else { return wrongArity("client|reply") }
            switch SmallBytes(lowercasing: args[2]) {
            case SmallBytes("on"):
                replyMode = .on
                reply(Array("+OK\r\n".utf8))
            case SmallBytes("off"): replyMode = .off        // no reply, not even to this command
            case SmallBytes("skip"): replyMode = .skipNext   // this command and the next get no reply
            default: replyError("ERR syntax error")
            }
        case .noEvict, .noTouch:
            // Accepted for this client's bookkeeping; shared upstream connections keep redis's defaults.
            guard args.count == 3 else { return wrongArity("client|\(sub)") }
            let v = SmallBytes(lowercasing: args[2])
            guard v == SmallBytes("on") || v == SmallBytes("off") else { return replyError("ERR syntax error") }
            reply(Array("+OK\r\n".utf8))
        case .getredir:
            guard args.count == 2 else { return wrongArity("client|getredir") }
            var w = RESPWriter(proto: proto)
            w.integer(-1)     // tracking is not enabled through respool
            reply(w.bytes)
        case .stateful, .forward:
            // Routed before reaching here; kept total for safety.
            replyError(CommandTable.refusal(command: "client|\(sub)", kind: .connectionState))
        }
    }

    /// A bulk text reply, verbatim ("txt") for RESP3 as redis sends CLIENT LIST and CLIENT INFO.
    private func replyText(_ text: String) {
        var w = RESPWriter(proto: proto)
        if proto == 3 {
            let body = Array("txt:\(text)".utf8)
            w.bytes += Array("=\(body.count)\r\n".utf8) + body + [13, 10]
        } else {
            w.bulk(text)
        }
        reply(w.bytes)
    }

    /// CLIENT LIST [TYPE normal|master|replica|pubsub] [ID id ...]: respool's own clients, in redis's format.
    private func clientList(_ args: [[UInt8]]) {
        var ids: Set<Int>? = nil
        var type: String? = nil
        var j = 2
        while j < args.count {
            let opt = SmallBytes(lowercasing: args[j])
            if opt == SmallBytes("type") && j + 1 < args.count {
                let t = Self.text(args[j + 1]).lowercased()
                guard ["normal", "master", "replica", "slave", "pubsub"].contains(t) else {
                    return replyError("ERR Unknown client type '\(Self.text(args[j + 1]))'")
                }
                type = t
                j += 2
            } else if opt == SmallBytes("id") && j + 1 < args.count {
                var set = Set<Int>()
                j += 1
                while j < args.count {
                    guard let n = Int(Self.text(args[j])), n > 0 else { return replyError("ERR Invalid client ID") }
                    set.insert(n)
                    j += 1
                }
                ids = set
            } else {
                return replyError("ERR syntax error")
            }
        }
        var text = ""
        for c in proxy.clientsByID where !c.isClosed {
            if let ids, !ids.contains(c.id) { continue }
            if let type, type != (c.isSubscribed ? "pubsub" : "normal") { continue }
            text += c.infoLine()
        }
        replyText(text)
    }

    /// CLIENT KILL addr:port, or CLIENT KILL <ID|ADDR|LADDR|USER|TYPE|SKIPME value>...: closes respool's own clients.
    private func clientKill(_ args: [[UInt8]]) {
        guard args.count >= 3 else { return wrongArity("client|kill") }
        if args.count == 3 {
            let addr = Self.text(args[2])
            guard let victim = proxy.clientsByID.first(where: { !$0.isClosed && $0.peerAddress == addr }) else {
                return replyError("ERR No such client")
            }
            reply(Array("+OK\r\n".utf8))
            kill(victim)
            return
        }
        guard args.count % 2 == 0 else { return replyError("ERR syntax error") }
        var filters: [(SmallBytes, String)] = []
        var skipMe = true
        for j in stride(from: 2, to: args.count, by: 2) {
            let key = SmallBytes(lowercasing: args[j])
            let value = Self.text(args[j + 1])
            switch key {
            case SmallBytes("id"):
                guard Int(value) != nil else { return replyError("ERR client-id should be greater than 0") }
            case SmallBytes("type"):
                guard ["normal", "master", "replica", "slave", "pubsub"].contains(value.lowercased()) else {
                    return replyError("ERR Unknown client type '\(value)'")
                }
            case SmallBytes("skipme"):
                switch value.lowercased() {
                case "yes": skipMe = true
                case "no": skipMe = false
                default: return replyError("ERR syntax error")
                }
                continue
            case SmallBytes("addr"), SmallBytes("laddr"), SmallBytes("user"), SmallBytes("maxage"):
                break
            default:
                return replyError("ERR syntax error")
            }
            filters.append((key, value))
        }
        let now = proxy.base.now()
        var victims: [ClientConnection] = []
        for c in proxy.clientsByID where !c.isClosed {
            if skipMe && c === self { continue }
            let match = filters.allSatisfy { key, value in
                switch key {
                case SmallBytes("id"): return String(c.id) == value
                case SmallBytes("addr"): return c.peerAddress == value
                case SmallBytes("laddr"): return c.localAddress == value
                case SmallBytes("user"): return value == "default"
                case SmallBytes("type"): return value.lowercased() == (c.isSubscribed ? "pubsub" : "normal")
                case SmallBytes("maxage"): return Int(value).map { Int(now - c.createdAt) >= $0 } ?? false
                default: return false
                }
            }
            if match { victims.append(c) }
        }
        var w = RESPWriter(proto: proto)
        w.integer(victims.count)
        reply(w.bytes)
        for v in victims { kill(v) }
    }

    private func kill(_ victim: ClientConnection) {
        if victim === self {
            closeAfterFlush = true
            closeReason = "killed"
            disableReading()
        } else {
            victim.close(reason: "killed")
        }
    }

    /// This client as a CLIENT INFO / CLIENT LIST line, with the fields Redis prints.
    var peerAddress: String { isUnix ? "/unix" : (fd < 0 ? "?" : Socket.peerName(fd)) }
    var localAddress: String { fd < 0 ? "?" : Socket.localName(fd) }

    func infoLine() -> String {
        let now = proxy.base.now()
        let n = name.map { Self.text($0) } ?? ""
        var flags = ""
        if inMulti { flags += "x" }
        if isSubscribed { flags += "P" }
        if lease != nil && !holdsState && inFlight > 0 { flags += "b" }
        if isUnix { flags += "U" }
        if flags.isEmpty { flags = "N" }
        return "id=\(id) addr=\(peerAddress) laddr=\(localAddress) fd=\(fd) name=\(n) age=\(Int(now - createdAt)) "
            + "idle=\(Int(now - lastActive)) flags=\(flags) db=\(db) sub=\(subscriptions[0].count) psub=\(subscriptions[1].count) ssub=\(subscriptions[2].count) multi=\(inMulti ? multiQueued : -1) "
            + "qbuf=\(partial.count) qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=\(out.count) tot-mem=0 "
            + "events=r cmd=\(lastCommand) user=default "
            + "redir=-1 resp=\(proto) lib-name=\(libName.map { Self.text($0) } ?? "") lib-ver=\(libVersion.map { Self.text($0) } ?? "")\n"
    }
}
