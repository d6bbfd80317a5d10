// ClientCommands: CLIENT LIST, CLIENT KILL and CLIENT INFO, which respool answers about its own clients (it knows
// their sockets), in redis-server's formats.
import EventLoop
import RESP
import RespoolCore

extension ClientConnection {
    private static func text(_ b: [UInt8]) -> String { String(decoding: b, as: UTF8.self) }
    private func replyError(_ message: String) { reply(RESPWriter.errorLine(message)) }
    private func wrongArity(_ command: String) { replyError("ERR wrong number of arguments for '\(command)' command") }

    /// CLIENT LIST, KILL or INFO (`args` with CLIENT first; the session routed it here). `silent`: it runs (KILL
    /// kills) but its reply is dropped (CLIENT REPLY OFF/SKIP).
    func clientCommand(_ args: [[UInt8]], silent: Bool) {
        replySilenced = silent
        proxy.clientCommandRunning = (id, args)
        defer {
            replySilenced = false
            proxy.clientCommandRunning = nil
        }
        switch CommandTable.clientSubcommand(SmallBytes(lowercasing: args[1])) {
        case .info:
            guard args.count == 2 else { return wrongArity("client|info") }
            replyText(infoLine())
        case .list: clientList(args)
        case .kill: clientKill(args)
        default: preconditionFailure("clientCommand for \(SmallBytes(lowercasing: args[1]))")
        }
    }

    private func replyText(_ text: String) {
        var w = RESPWriter(proto: session.proto)
        if session.proto == 3 {
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
                    guard let n = Int(Self.text(args[j])) else { return replyError("ERR Invalid client ID") }
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
            if let type, type != (c.session.isSubscribed ? "pubsub" : "normal") { continue }
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
                guard let n = Int(value), n > 0 else { return replyError("ERR client-id should be greater than 0") }
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
            case SmallBytes("maxage") where !proxy.serverIsAtLeast(7, 4):
                return replyError("ERR syntax error")   // a filter of Redis 7.4
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
                case SmallBytes("user"): return value == proxy.credentials.userName(c.session.user)
                case SmallBytes("type"): return value.lowercased() == (c.session.isSubscribed ? "pubsub" : "normal")
                case SmallBytes("maxage"): return Int(value).map { Int(now - c.createdAt) >= $0 } ?? false
                default: return false
                }
            }
            if match { victims.append(c) }
        }
        var w = RESPWriter(proto: session.proto)
        w.integer(victims.count)
        reply(w.bytes)
        for v in victims { kill(v) }
    }

    private func kill(_ victim: ClientConnection) {
        if victim === self {
            session.closeAfterReplies("killed")
            disableReading()
        } else {
            victim.close(reason: "killed")
        }
    }

    /// This client as a CLIENT INFO / CLIENT LIST line, with the fields Redis prints.
    var peerAddress: String { isUnix ? "/unix" : (fd < 0 ? "?" : Socket.peerName(fd)) }
    var localAddress: String { fd < 0 ? "?" : Socket.localName(fd) }

    /// The line in redis-server's CLIENT LIST format, with respool's figures for this client: qbuf is its unprocessed
    /// input (and, for the client asking, the CLIENT command itself, as redis counts it), argv-mem the asking
    /// command's arguments, omem its unsent replies, tot-mem those plus the per-client cost measured for an idle
    /// client (1 KiB); lib-name and lib-ver only when the server is Redis 7.2 or later, whose format has them.
    func infoLine() -> String {
        let now = proxy.base.now()
        let currentArgs = proxy.clientCommandRunning.flatMap { $0.client == id ? $0.args : nil }
        let current = currentArgs.map { RESPWriter.command($0).count } ?? 0
        let argvMem = currentArgs.map { $0.reduce(0) { $0 + $1.count } } ?? 0
        let qbuf = partial.count + current
        let library = proxy.serverIsAtLeast(7, 2)
            ? " lib-name=\(session.libName.map { Self.text($0) } ?? "") lib-ver=\(session.libVersion.map { Self.text($0) } ?? "")" : ""
        let redir = session.leaseState?.tracking == true ? (session.trackingRedirect ?? 0) : -1
        let n = session.name.map { Self.text($0) } ?? ""
        // In redis-server's order (O monitor, P pub/sub, x MULTI, b blocked, t tracking, U unix socket).
        var flags = ""
        if session.leaseState?.monitor == true { flags += "O" }
        if session.isSubscribed { flags += "P" }
        if session.inMulti { flags += "x" }
        if session.isBlocked { flags += "b" }
        if session.leaseState?.tracking == true { flags += "t" }
        if isUnix { flags += "U" }
        if flags.isEmpty { flags = "N" }
        return "id=\(id) addr=\(peerAddress) laddr=\(localAddress) fd=\(fd) name=\(n) age=\(Int(now - createdAt)) "
            + "idle=\(Int(now - lastActive)) flags=\(flags) db=\(session.db) sub=\(session.subscriptions[0].count) psub=\(session.subscriptions[1].count) ssub=\(session.subscriptions[2].count) multi=\(session.inMulti ? session.multiQueued : -1) "
            + "qbuf=\(qbuf) qbuf-free=0 argv-mem=\(argvMem) multi-mem=0 rbs=\(partial.count) rbp=\(partial.count) obl=0 oll=0 omem=\(out.count) "
            + "tot-mem=\(1024 + qbuf + argvMem + out.count) events=\(out.isEmpty ? "r" : "rw") cmd=\(session.lastCommand) user=\(proxy.credentials.userName(session.user)) "
            + "redir=\(redir) resp=\(session.proto)\(library)\n"
    }
}
