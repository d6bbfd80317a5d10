// EventBase: the one libevent event_base that the whole proxy runs on, and typed errors for libevent/POSIX calls.
internal import CLibevent
import Glibc

/// A failed system or libevent call, naming the call and the errno text.
public struct SystemError: Error, CustomStringConvertible, Sendable {
    public let call: String
    public let errno: Int32
    public init(_ call: String, errno: Int32) {
        self.call = call
        self.errno = errno
    }

    /// The failure of `call` with the current errno.
    public init(_ call: String) {
        self.call = call
        self.errno = respool_errno()
    }
    public var description: String {
        errno == 0 ? "\(call) failed" : "\(call): \(String(cString: strerror(errno)))"
    }
    /// Human text of the errno alone (for logs: "connection refused").
    public var reason: String { errno == 0 ? "\(call) failed" : String(cString: strerror(errno)).lowercased() }
}

/// Owns the libevent `event_base`. Single-threaded: every callback runs on the thread that calls `runOnce`.
public final class EventBase {
    public let raw: OpaquePointer

    public init() throws(SystemError) {
        guard let cfg = event_config_new() else { throw SystemError("event_config_new", errno: 0) }
        defer { event_config_free(cfg) }
        // No locking: one thread owns the loop.
        event_config_set_flag(cfg, Int32(EVENT_BASE_FLAG_NOLOCK.rawValue))
        guard let base = event_base_new_with_config(cfg) else { throw SystemError("event_base_new_with_config", errno: 0) }
        raw = base
    }

    deinit { event_base_free(raw) }

    /// Waits for at least one event and runs every active callback once (EVLOOP_ONCE).
    @inline(__always)
    public func runOnce() {
        _ = event_base_loop(raw, EVLOOP_ONCE)
    }

    /// Runs active callbacks without blocking.
    public func runNonBlocking() {
        _ = event_base_loop(raw, EVLOOP_NONBLOCK)
    }

    /// "Now" for every deadline, age and back-off: the monotonic clock (CLOCK_MONOTONIC, a vDSO read of ~20 ns).
    /// Not libevent's cached time, which is wall-clock time: an NTP step forward made every client look idle for
    /// as long as the step, and a step back suspended every timeout.
    @inline(__always)
    public func now() -> Double { monotonicNow() }

    public var backendName: String { String(cString: event_base_get_method(raw)) }
}

/// Monotonic clock in seconds (CLOCK_MONOTONIC), for deadlines and ages.
@inline(__always)
public func monotonicNow() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1_000_000_000
}

/// Wall-clock seconds since the epoch.
public func wallClockNow() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1_000_000_000
}

@inline(__always)
func timevalFrom(seconds: Double) -> timeval {
    let s = max(0, seconds)
    let whole = s.rounded(.down)
    return timeval(tv_sec: Int(whole), tv_usec: Int((s - whole) * 1_000_000))
}

/// Sets the glibc malloc trim and mmap thresholds together (docs/ARCHITECTURE.md, "Measured facts": setting only the
/// trim threshold makes every large evbuffer chain an mmap/munmap pair; leaving both dynamic makes the heap trim every
/// few requests).
public func tuneMalloc(trimThreshold: Int32 = 64 << 20, mmapThreshold: Int32 = 32 << 20) {
    _ = respool_mallopt_thresholds(trimThreshold, mmapThreshold)
}

public func ignoreSIGPIPE() {
    signal(SIGPIPE, SIG_IGN)
}
