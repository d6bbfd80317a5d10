// KeysGuard: KEYS is O(N) and stalls a production Redis. RESPOOL_KEYS decides: allow; warn (forward, log a
// rate-limited line, count it); deny (an error that suggests SCAN); scan (answer KEYS with the keys of an incremental
// SCAN ... MATCH <pattern>, deduplicated, so the server never blocks on it).
import EventLoop
import Logging
import RESP
import RespoolCore

/// A KEYS being answered by SCAN steps on the client's pinned upstream connection.
final class ScanJob {
    let pattern: [UInt8]
    var seen = Set<[UInt8]>()
    var keys: [[UInt8]] = []
    var steps = 0

    init(pattern: [UInt8]) { self.pattern = pattern }
}

extension ClientConnection {
    static let scanCount = "1000"

    /// Handles KEYS according to RESPOOL_KEYS. Returns false when it must wait (for in-flight replies or the pool).
    func keys(frame: UnsafeRawBufferPointer, args knownArgs: [[UInt8]]?) -> Bool {
        let mode = proxy.config.keysMode
        if mode != .allow {
            proxy.stats.keysSeen &+= 1
        }
        switch mode {
        case .allow:
            return forwardFrame(frame)
        case .warn:
            proxy.warnAboutKeys(client: self)
            return forwardFrame(frame)
        case .deny:
            if inFlight > 0 { stall = .barrier; return false }
            proxy.stats.keysDenied &+= 1
            replyError("ERR respool: KEYS is disabled (RESPOOL_KEYS=deny): it blocks the server for every key it holds; use SCAN 0 MATCH <pattern> COUNT 1000 and follow the cursor")
            return true
        case .scan:
            let args = knownArgs ?? RESPDecoder.arguments(ofRequest: frame)
            // Redis answers the arity error; inside a transaction KEYS is queued on the lease as sent.
            guard args.count == 2, lease == nil else { return forwardFrame(frame) }
            if inFlight > 0 { stall = .barrier; return false }
            switch proxy.pool.acquire(proto: proto, db: db) {
            case .ready(let u):
                upstream = u
                let job = ScanJob(pattern: args[1])
                scanJob = job
                inFlight += 1
                u._withUnsafeGuaranteedRef { sendScan(cursor: "0", job: job, on: $0) }
                return true
            case .wait:
                stall = .pool
                return false
            case .unavailable(let why):
                replyError("ERR upstream unavailable: \(why)")
                return true
            }
        }
    }

    private func sendScan(cursor: String, job: ScanJob, on u: UpstreamConnection) {
        job.steps += 1
        u.out.append(RESPWriter.command([Array("SCAN".utf8), Array(cursor.utf8), Array("MATCH".utf8), job.pattern,
                                         Array("COUNT".utf8), Array(Self.scanCount.utf8)]))
        u.enqueueScan(client: self)
        u.markDirty()
    }

    /// One SCAN reply: collect its keys and go on with the cursor, or answer the KEYS when it is back at 0.
    func scanStep(_ bytes: [UInt8], on u: UpstreamConnection) {
        guard let job = scanJob, !isClosed else {
            scanJob = nil
            updateFastPath()
            replyDelivered()
            return
        }
        let decoded = (try? RESPDecoder.decode(bytes)) ?? nil
        guard case .array(let parts?)? = decoded?.value, parts.count == 2, let cursor = parts[0].string,
              case .array(let found?) = parts[1] else {
            scanJob = nil
            updateFastPath()
            // An error (or anything unexpected) from SCAN is what the client gets.
            if case .error? = decoded?.value { out.append(bytes) } else { out.append(RESPWriter.errorLine("ERR respool: unexpected SCAN reply")) }
            markDirty()
            replyDelivered()
            return
        }
        for k in found {
            if case .bulkString(let key?) = k, job.seen.insert(key).inserted { job.keys.append(key) }
        }
        if cursor != "0" {
            sendScan(cursor: cursor, job: job, on: u)
            return
        }
        scanJob = nil
        updateFastPath()
        var w = RESPWriter(proto: proto)
        w.arrayHeader(job.keys.count)
        for k in job.keys { w.bulk(k) }
        out.append(w.bytes)
        markDirty()
        proxy.stats.keysScanned &+= 1
        proxy.logger.debug("KEYS answered by SCAN", metadata: ["client.id": "\(id)", "keys": "\(job.keys.count)", "scan_steps": "\(job.steps)"])
        replyDelivered()
    }
}

extension Proxy {
    /// One warning line per minute at most, with how many KEYS were seen since the last one.
    func warnAboutKeys(client: ClientConnection) {
        keysSinceWarning += 1
        let now = base.now()
        guard now - keysWarnedAt >= 60 else { return }
        var meta: Logger.Metadata = ["client.id": "\(client.id)", "count": "\(keysSinceWarning)"]
        if let name = client.name { meta["client.name"] = "\(String(decoding: name, as: UTF8.self))" }
        logger.warning("KEYS used: it blocks redis for every key it holds; use SCAN (or set RESPOOL_KEYS=scan)", metadata: meta)
        keysWarnedAt = now
        keysSinceWarning = 0
    }
}
