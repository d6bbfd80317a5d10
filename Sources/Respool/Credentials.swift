// Credentials: the users clients authenticated as, when RESPOOL_CLIENT_PASSWORD is unset and the server checks
// every AUTH. Id 0 is the URL's credential; every other credential the server accepted gets an id, and connections
// of that id's pool authenticate with it (so a client's commands never run with more rights than it has). A
// credential is found again by a salted hash of user and password (the salt random per process), then compared in
// constant time; it skips the server's check for `ttl` seconds after the server accepted it, and is forgotten once
// that has passed and no client or connection uses it (the password is kept only while connections may need it).
import RespoolCore

final class Credentials {
    struct Entry {
        let user: String
        let password: [UInt8]
        let key: Int
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
        guard user != nil || url.password != nil else { return nil }
        for id in byKey[key(name, password)] ?? [] {
            guard let e = entries[id], e.user == name, ConstantTime.equal(e.password, password) else { continue }
            return now - e.verifiedAt < Self.ttl ? id : nil
        }
        return nil
    }

    /// The server accepted this credential: its id (the same one again for the same credential).
    func accepted(user: [UInt8]?, password: [UInt8], now: Double) -> Int {
        let name = user.map { String(decoding: $0, as: UTF8.self) } ?? "default"
        if let urlPassword = url.password, name == (url.username ?? "default"), ConstantTime.equal(password, Array(urlPassword.utf8)) {
            return 0
        }
        let k = key(name, password)
        for id in byKey[k] ?? [] where entries[id].map({ $0.user == name && ConstantTime.equal($0.password, password) }) == true {
            entries[id]?.verifiedAt = now
            return id
        }
        let id = nextID
        nextID += 1
        entries[id] = Entry(user: name, password: password, key: k, verifiedAt: now)
        byKey[k, default: []].append(id)
        return id
    }

    /// The server refused a connection's handshake with this credential: checked again next time.
    func refused(_ id: Int) {
        entries[id]?.verifiedAt = -Self.ttl
    }

    /// User and password a connection of pool `id` authenticates with (nil password: the URL has none).
    func credential(_ id: Int) -> (user: String?, password: String?) {
        guard id != 0, let e = entries[id] else { return (url.username, url.password) }
        return (e.user, String(decoding: e.password, as: UTF8.self))
    }

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
