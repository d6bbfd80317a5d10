// Running many blocking clients at once on plain threads, and collecting their failures for the test thread.
import Foundation

/// Failures from worker threads, reported by the test thread (XCTFail is not called off the test thread).
final class FailureLog: @unchecked Sendable {
    private let lock = NSLock()
    private var messages: [String] = []
    private var total = 0
    let keep: Int

    init(keep: Int = 25) { self.keep = keep }

    func record(_ message: String) {
        lock.lock()
        defer { lock.unlock() }
        total += 1
        if messages.count < keep { messages.append(message) }
    }

    var count: Int {
        lock.lock()
        defer { lock.unlock() }
        return total
    }

    var summary: String {
        lock.lock()
        defer { lock.unlock() }
        return "\(total) failure(s); first \(messages.count):\n" + messages.joined(separator: "\n")
    }
}

/// All parties wait until `parties` have arrived.
final class Barrier: @unchecked Sendable {
    private let cond = NSCondition()
    private let parties: Int
    private var arrived = 0

    init(parties: Int) { self.parties = parties }

    /// False on timeout.
    @discardableResult
    func arriveAndWait(timeout: Double = 60) -> Bool {
        cond.lock()
        defer { cond.unlock() }
        arrived += 1
        if arrived >= parties {
            cond.broadcast()
            return true
        }
        let deadline = Date(timeIntervalSinceNow: timeout)
        while arrived < parties {
            if !cond.wait(until: deadline) { return arrived >= parties }
        }
        return true
    }

    /// Arrives without waiting (a party that failed and leaves, so the others are not held up).
    func arrive() {
        cond.lock()
        defer { cond.unlock() }
        arrived += 1
        if arrived >= parties { cond.broadcast() }
    }

    /// Waits (without arriving) until every party arrived.
    @discardableResult
    func waitAll(timeout: Double = 60) -> Bool {
        cond.lock()
        defer { cond.unlock() }
        let deadline = Date(timeIntervalSinceNow: timeout)
        while arrived < parties {
            if !cond.wait(until: deadline) { return arrived >= parties }
        }
        return true
    }
}

/// A flag worker loops poll.
final class StopFlag: @unchecked Sendable {
    private let state = Locked(false)
    var isSet: Bool { state.current }
    func set() { state.withLock { $0 = true } }
}

/// Runs `body(i)` for i in 0..<count, each on its own thread, and waits for all (up to `timeout`). An error thrown
/// by a body is recorded in `failures`. Returns false when some thread was still running at the timeout.
@discardableResult
func runThreads(_ count: Int, timeout: Double = 120, failures: FailureLog,
                _ body: @escaping @Sendable (Int) throws -> Void) -> Bool {
    let group = DispatchGroup()
    for i in 0..<count {
        group.enter()
        let t = Thread {
            defer { group.leave() }
            do {
                try body(i)
            } catch {
                failures.record("thread \(i): \(error)")
            }
        }
        t.stackSize = 512 << 10
        t.start()
    }
    return group.wait(timeout: .now() + timeout) == .success
}

/// Starts `body` on a thread; `join()` waits for it.
final class Worker: @unchecked Sendable {
    private let group = DispatchGroup()

    init(_ body: @escaping @Sendable () -> Void) {
        group.enter()
        let t = Thread { [group] in
            body()
            group.leave()
        }
        t.stackSize = 512 << 10
        t.start()
    }

    @discardableResult
    func join(timeout: Double = 120) -> Bool { group.wait(timeout: .now() + timeout) == .success }
}
