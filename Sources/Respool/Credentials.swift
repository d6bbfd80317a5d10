// Credentials: the users clients authenticated as, when RESPOOL_CLIENT_PASSWORD is unset and the server checks
// every AUTH. Id 0 is the URL's credential; every other credential gets an id when first seen (a candidate), is
// checked by opening a connection with it, and connections of that id's pool authenticate with it as the client did
// (AUTH with or without the user name: the server's answers to the two differ), so a client's commands never run with
// more rights than it has. A
// credential is found again by a salted hash of user and password (the salt random per process), then compared in
// constant time; it skips the server's check for `ttl` seconds after the server accepted it, and is forgotten once
// that has passed and no client or connection uses it (the password is kept only while connections may need it).
import RespoolCore

final class Credentials {
    struct Entry {
        let user: String
        let password: [UInt8]
        /// AUTH with the password only (the default user).
        let passwordOnly: Bool
        let key: Int
        /// When the server last accepted it (-infinity: a candidate, or refused since).
        var verifiedAt: Double
    }

    /// How long a credential the server accepted is accepted again without asking it.
    static let ttl = 300.0
    private let salt = UInt64.random(in: .min ... .max)
    private var entries: [Int: Entry] = [:]
    private var byKey: [Int: [Int]] = [:]
    private var nextID = 1
    let url: RedisURL

    init(url: RedisURL) {
        self.url = url
    }

    private func key(_ user: String, _ password: [UInt8]) -> Int {
        var h = Hasher()
        h.combine(salt)
        h.combine(user)
        h.combine(password)
        return h.finalize()
    }

    /// The id of a credential that needs no check now: the URL's (0), or one the server accepted less than `ttl`
    /// seconds ago. `user` nil is AUTH with the password only (the default user; but the server's answer to that
    /// form can differ, so only the URL's own password skips the check then).
    func known(user: [UInt8]?, password: [UInt8], now: Double) -> Int? {
        let name = user.map { String(decoding: $0, as: UTF8.self) } ?? "default"
        if let urlPassword = url.password, name == (url.username ?? "default"),
           ConstantTime.equal(password, Array(urlPassword.utf8)) {
            return 0
        }
        guard let id = find(name, password, passwordOnly: user == nil), let e = entries[id] else { return nil }
        return now - e.verifiedAt < Self.ttl ? id : nil
    }

    private func find(_ name: String, _ password: [UInt8], passwordOnly: Bool) -> Int? {
        (byKey[key(name, password)] ?? []).first { id in
            entries[id].map { $0.user == name && $0.passwordOnly == passwordOnly && ConstantTime.equal($0.password, password) } == true
        }
    }

    /// The id of a credential about to be checked (the same one again for the same credential).
    func candidate(user: [UInt8]?, password: [UInt8]) -> Int {
        let name = user.map { String(decoding: $0, as: UTF8.self) } ?? "default"
        if let id = find(name, password, passwordOnly: user == nil) { return id }
        let id = nextID
        nextID += 1
        let k = key(name, password)
        entries[id] = Entry(user: name, password: password, passwordOnly: user == nil, key: k, verifiedAt: -.infinity)
        byKey[k, default: []].append(id)
        return id
    }

    /// The server accepted credential `id` (a client may use it from now on).
    func accepted(_ id: Int, now: Double) {
        entries[id]?.verifiedAt = now
    }

    /// Users or passwords may have changed (an ACL SETUSER, DELUSER or LOAD, a CONFIG SET requirepass went through):
    /// every credential is checked with the server again before it is accepted.
    func forgetVerdicts() {
        for id in entries.keys { entries[id]?.verifiedAt = -.infinity }
    }

    /// The server refused credential `id`: checked again next time.
    func refused(_ id: Int) {
        entries[id]?.verifiedAt = -.infinity
    }

    /// The AUTH a connection of pool `id` sends first (nil for the URL's, whose credentials go in the HELLO).
    func auth(_ id: Int) -> [[UInt8]]? {
        guard id != 0, let e = entries[id] else { return nil }
        return e.passwordOnly ? [Array("AUTH".utf8), e.password] : [Array("AUTH".utf8), Array(e.user.utf8), e.password]
    }

    /// The URL's user and password (nil password: the URL has none).
    var urlCredential: (user: String?, password: String?) { (url.username, url.password) }

    /// The user name of pool `id`, for logs (never the password).
    func userName(_ id: Int) -> String {
        id == 0 ? (url.username ?? "default") : (entries[id]?.user ?? "?")
    }

    /// Forgets credentials past `ttl` that no client or connection uses (`inUse`).
    func sweep(inUse: Set<Int>, now: Double) {
        for (id, e) in entries where !inUse.contains(id) && now - e.verifiedAt >= Self.ttl {
            entries[id] = nil
            byKey[e.key]?.removeAll { $0 == id }
            if byKey[e.key]?.isEmpty == true { byKey[e.key] = nil }
        }
    }

    var count: Int { entries.count }
}
