// Waiting for events instead of guessing delays: one polling helper with a generous deadline, and the observations
// tests poll on (respool's stats endpoint, the server's CLIENT LIST, respool's log, a reply that proves nothing else
// was queued before it).
import Foundation
import RESP
import XCTest

/// Polls `condition` (every `interval` seconds) until it is true or `timeout` seconds have passed; returns whether it
/// became true. The deadline is a safety net for a broken build, never the expected duration: a test using it must
/// pass as soon as the condition holds, however slow the machine.
@discardableResult
func waitUntil(timeout: Double = 20, interval: Double = 0.02, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Deadline(timeout)
    while true {
        if try condition() { return true }
        if deadline.expired { return false }
        usleep(UInt32(max(0.001, min(interval, deadline.remaining)) * 1_000_000))
    }
}

// MARK: respool's stats endpoint

extension Respool {
    private func json(_ path: String) throws -> Any {
        guard let port = statsPort else { throw SpawnError(description: "no stats= in respool's start-up line") }
        let (status, body) = try httpGet(port, path)
        guard status == 200 else { throw SpawnError(description: "GET \(path): HTTP \(status): \(body.prefix(300))") }
        return try JSONSerialization.jsonObject(with: Data(body.utf8))
    }

    /// The `metrics` object of /stats: unlabelled metrics are numbers, labelled ones objects by label, histograms
    /// objects with count, sum, p50 and p99.
    func metrics() throws -> [String: Any] {
        guard let doc = try json("/stats") as? [String: Any], let m = doc["metrics"] as? [String: Any] else {
            throw SpawnError(description: "/stats has no metrics object")
        }
        return m
    }

    /// One value of /stats: `metric("respool_upstream_connects_total")`,
    /// `metric("respool_upstream_connections", "leased")`, `metric("respool_wait_duration_seconds", "count")`.
    func metric(_ name: String, _ key: String? = nil) throws -> Double {
        let m = try metrics()
        let v: Any?
        if let key { v = (m[name] as? [String: Any])?[key] } else { v = m[name] }
        guard let n = v as? NSNumber else { throw SpawnError(description: "/stats has no \(name)\(key.map { "[\($0)]" } ?? "")") }
        return n.doubleValue
    }

    /// /clients: one object per open client (id, state, in_flight, output_bytes, ...).
    func clientsInfo() throws -> [[String: Any]] {
        guard let list = try json("/clients") as? [[String: Any]] else { throw SpawnError(description: "/clients is not a list") }
        return list
    }

    /// The /clients entry of the client with this CLIENT ID (nil once it is closed).
    func clientInfo(id: Int64) throws -> [String: Any]? {
        try clientsInfo().first { ($0["id"] as? NSNumber)?.int64Value == id }
    }

    /// /upstreams: one object per upstream connection (id, state, pending, ...).
    func upstreamsInfo() throws -> [[String: Any]] {
        guard let list = try json("/upstreams") as? [[String: Any]] else { throw SpawnError(description: "/upstreams is not a list") }
        return list
    }

    /// Requests sent upstream and not answered yet, over every upstream connection (respool's own PINGs included).
    func upstreamPending() throws -> Int {
        try upstreamsInfo().reduce(0) { $0 + (($1["pending"] as? NSNumber)?.intValue ?? 0) }
    }

    // MARK: respool's log

    /// Waits until respool's stdout has a complete line containing `text` (lines are written with one write(2) each,
    /// in order: once a line is seen, every line logged before it has been captured too).
    @discardableResult
    func waitForLog(_ text: String, timeout: Double = 20) -> Bool {
        guard let out = stdout else { return false }
        return out.waitForLine(timeout: timeout) { $0.contains(text) } != nil
    }

    /// Logs a fresh SIGUSR1 stats line and waits for it: afterwards every line respool logged before the signal was
    /// handled is in `stdoutText` (a later line anchors checks that some line was *not* logged).
    @discardableResult
    func logMarker() -> String { statsLine() }
}

// MARK: the server's view

extension RedisServer {
    /// CLIENT LIST, one dictionary of fields per client (the listing connection itself included).
    func clientList() throws -> [[String: String]] {
        parseClientList(try client().command("CLIENT", "LIST")) ?? []
    }

    /// Connections blocked in `command` (CLIENT LIST shows cmd=<command> with flags containing b).
    func blockedClients(in command: String) throws -> [[String: String]] {
        try clientList().filter { $0["cmd"] == command && ($0["flags"] ?? "").contains("b") }
    }
}

// MARK: "nothing else arrived"

/// Proves that nothing is queued on `c` ahead of a fresh request: sends PING <token> and requires the very next reply
/// to be its answer (the token, or ["pong", token] in RESP2 subscribed mode). A stray reply or message produced
/// before it would be read first, however late it was sent, so no guessed quiet period is needed.
func assertNoStrayReplies(_ c: TestClient, _ context: @autoclosure () -> String = "",
                          file: StaticString = #filePath, line: UInt = #line) {
    let token = "anchor-\(UInt32.random(in: 0...UInt32.max))"
    do {
        let r = try c.command("PING", token)
        if r != Reply.bulk(token) && r != Reply.bulks(["pong", token]) {
            XCTFail("\(context()): a stray reply arrived before PING \(token)'s: \(show(r))", file: file, line: line)
        }
    } catch {
        XCTFail("\(context()): PING \(token) after the expected replies failed: \(error)", file: file, line: line)
    }
}
