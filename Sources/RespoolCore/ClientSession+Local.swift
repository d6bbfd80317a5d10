// ClientSession+Local: connection-level commands respool answers itself, in redis-server's formats and error texts
// (HELLO, AUTH, SELECT, CLIENT SETNAME/GETNAME/ID/SETINFO/REPLY/NO-EVICT/NO-TOUCH/GETREDIR, RESET, QUIT). CLIENT LIST,
// KILL and INFO are the driver's: they need every client's sockets.
import RESP

extension ClientSession {
    /// A local command (nothing of this client is in flight).
    mutating func local(_ command: LocalCommand, args: [[UInt8]], context: SessionContext) -> Decision {
        switch command {
        case .quit:
            closeAfterReplies("quit")
            return .reply(Self.ok, .local)
        case .hello:
            return hello(args, context: context)
        case .client:
            return client(args)
        case .select:
            return select(args, context: context)
        case .auth:
            if args.count < 2 { return wrongArity("auth") }
            if args.count > 3 { return error("ERR syntax error") }
            if context.clientPassword == nil {
                switch checkedCredential(user: args.count == 3 ? args[1] : nil, password: args[args.count - 1]) {
                case .verified(let u)?:
                    setAuthenticated(true)
                    setUser(u)
                    return .reply(Self.ok, .local)
                case .refused(let bytes)?:
                    return .reply(bytes, .error)
                case nil:
                    return .verify(user: args.count == 3 ? args[1] : nil, password: args[args.count - 1])
                }
            }
            if let e = authError(user: args.count == 3 ? args[1] : nil, password: args[args.count - 1], context: context) {
                return error(e)
            }
            setAuthenticated(true)
            return .reply(Self.ok, .local)
        case .reset:
            reset(context: context)
            return .reply(Array("+RESET\r\n".utf8), .local)
        }
    }

    static let ok = Array("+OK\r\n".utf8)

    private func error(_ text: String) -> Decision { .reply(RESPWriter.errorLine(text), .local) }
    private func wrongArity(_ command: String) -> Decision { error("ERR wrong number of arguments for '\(command)' command") }
    private static func text(_ b: [UInt8]) -> String { String(decoding: b, as: UTF8.self) }

    /// Redis's rule for client names and library info: printable ASCII without spaces.
    static func validName(_ b: [UInt8]) -> Bool { b.allSatisfy { $0 > 32 && $0 < 127 } }

    /// With RESPOOL_CLIENT_PASSWORD set, the default user with that password is accepted (as redis's requirepass).
    /// nil: the credentials are good.
    private func authError(user: [UInt8]?, password: [UInt8], context: SessionContext) -> String? {
        let wrong = "WRONGPASS invalid username-password pair or user is disabled."
        if let user, Self.text(user) != "default" { return wrong }
        return context.clientPassword.map { ConstantTime.equal(password, $0) } == true ? nil : wrong
    }

    /// With RESPOOL_CLIENT_PASSWORD unset, the server's answer to this credential once the driver has it (taken:
    /// it answers this one request); nil: ask (`Decision.verify`).
    private mutating func checkedCredential(user: [UInt8]?, password: [UInt8]) -> AuthOutcome? {
        defer { authOutcome = nil }
        return authOutcome
    }

    private mutating func hello(_ args: [[UInt8]], context: SessionContext) -> Decision {
        var version = proto
        if args.count >= 2 {
            guard let v = Int(Self.text(args[1])) else { return error("ERR Protocol version is not an integer or out of range") }
            guard v == 2 || v == 3 else { return error("NOPROTO unsupported protocol version") }
            version = v
        }
        var newName: [UInt8]? = nil
        var authenticates = false
        var credential: (user: [UInt8], password: [UInt8])? = nil
        var j = 2
        while j < args.count {
            let more = args.count - 1 - j
            let opt = SmallBytes(lowercasing: args[j])
            if opt == SmallBytes("auth") && more >= 2 {
                credential = (args[j + 1], args[j + 2])
                j += 3
            } else if opt == SmallBytes("setname") && more >= 1 {
                newName = args[j + 1]
                j += 2
            } else {
                return error("ERR Syntax error in HELLO option '\(Self.text(args[j]))'")
            }
        }
        // The reply repeats what the server said about itself: wait for the first handshake if none has completed.
        guard let info = context.serverInfo else { return .acquire(.handshake) }
        var newUser: Int? = nil
        if let credential {
            if context.clientPassword != nil {
                if let e = authError(user: credential.user, password: credential.password, context: context) { return error(e) }
            } else {
                switch checkedCredential(user: credential.user, password: credential.password) {
                case .verified(let u)?: newUser = u
                case .refused(let bytes)?: return .reply(bytes, .error)
                case nil: return .verify(user: credential.user, password: credential.password)
                }
            }
            authenticates = true
        }
        if !authenticated && !authenticates {
            return error("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time")
        }
        if authenticates { setAuthenticated(true) }
        if let newUser { setUser(newUser) }
        if version != proto && isSubscribed {
            return error("ERR respool: cannot switch protocol while subscribed; UNSUBSCRIBE first")
        }
        if let newName {
            guard Self.validName(newName) else { return error("ERR Client names cannot contain spaces, newlines or special characters.") }
            setName(newName.isEmpty ? nil : newName)
        }
        setProto(version)
        var w = RESPWriter(proto: proto)
        w.mapHeader(7)
        w.bulk("server"); w.bulk(info.server)
        w.bulk("version"); w.bulk(info.version)
        w.bulk("proto"); w.integer(proto)
        w.bulk("id"); w.integer(id)
        w.bulk("mode"); w.bulk(info.mode)
        w.bulk("role"); w.bulk(info.role)
        w.bulk("modules"); w.value(info.modules)
        return .reply(w.bytes, .local)
    }

    /// SELECT is answered here: the client's later commands go to shared connections of that database (opened
    /// lazily within the cap, or an idle one switched). A client holding a lease (WATCH) switches the leased
    /// connection itself: the SELECT is sent there, and the lease is closed afterwards.
    private mutating func select(_ args: [[UInt8]], context: SessionContext) -> Decision {
        guard args.count == 2 else { return wrongArity("select") }
        guard let n = Int(Self.text(args[1])) else { return error("ERR value is not an integer or out of range") }
        guard n >= 0 && n < context.databases else { return error("ERR DB index is out of range") }
        return select(n) ? .forward(silent: false) : .reply(Self.ok, .local)
    }

    private mutating func client(_ args: [[UInt8]]) -> Decision {
        guard args.count >= 2 else { return wrongArity("client") }
        let sub = SmallBytes(lowercasing: args[1])
        switch CommandTable.clientSubcommand(sub) {
        case .setname:
            guard args.count == 3 else { return wrongArity("client|setname") }
            guard Self.validName(args[2]) else { return error("ERR Client names cannot contain spaces, newlines or special characters.") }
            setName(args[2].isEmpty ? nil : args[2])
            return .reply(Self.ok, .local)
        case .getname:
            guard args.count == 2 else { return wrongArity("client|getname") }
            var w = RESPWriter(proto: proto)
            if let name { w.bulk(name) } else { w.null() }
            return .reply(w.bytes, .local)
        case .id:
            guard args.count == 2 else { return wrongArity("client|id") }
            var w = RESPWriter(proto: proto)
            w.integer(id)
            return .reply(w.bytes, .local)
        case .setinfo:
            guard args.count == 4 else { return wrongArity("client|setinfo") }
            let attr = SmallBytes(lowercasing: args[2])
            guard attr == SmallBytes("lib-name") || attr == SmallBytes("lib-ver") else {
                return error("ERR Unrecognized option '\(Self.text(args[2]))'")
            }
            guard Self.validName(args[3]) else { return error("ERR \(attr) cannot contain spaces, newlines or special characters.") }
            if attr == SmallBytes("lib-name") { setLibrary(name: args[3]) } else { setLibrary(version: args[3]) }
            return .reply(Self.ok, .local)
        case .info, .list, .kill:
            return .clientCommand(silent: false)
        case .reply:
            guard args.count == 3 else { return wrongArity("client|reply") }
            switch SmallBytes(lowercasing: args[2]) {
            case SmallBytes("on"):
                setReplyMode(.on)
                return .reply(Self.ok, .local)
            case SmallBytes("off"):
                setReplyMode(.off)          // no reply, not even to this command
                return .reply([], .local)
            case SmallBytes("skip"):
                // This command and the next get no reply; while replies are off, SKIP changes nothing (as in redis).
                if replyMode == .on { setReplyMode(.skipNext) }
                return .reply([], .local)
            default:
                return error("ERR syntax error")
            }
        case .noEvict, .noTouch:
            // Accepted for this client's bookkeeping; shared upstream connections keep redis's defaults.
            guard args.count == 3 else { return wrongArity("client|\(sub)") }
            let v = SmallBytes(lowercasing: args[2])
            guard v == SmallBytes("on") || v == SmallBytes("off") else { return error("ERR syntax error") }
            return .reply(Self.ok, .local)
        case .getredir:
            guard args.count == 2 else { return wrongArity("client|getredir") }
            var w = RESPWriter(proto: proto)
            // As redis: -1 when not tracking, 0 without REDIRECT, else the client the invalidations go to.
            w.integer(leaseState?.tracking == true ? (trackingRedirect ?? 0) : -1)
            return .reply(w.bytes, .local)
        case .forward, .tracking, .unblock:
            // Routed before reaching here; kept total for safety.
            return error(CommandTable.refusal(command: "client|\(sub)", kind: .connectionState))
        }
    }
}
