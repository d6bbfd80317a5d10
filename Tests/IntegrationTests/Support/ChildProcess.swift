// Child processes for the fixtures: posix_spawn with explicit environment, stdio redirection and a registry that
// kills every still-running child when the test process exits (so a crashed test leaves no redis-server behind).
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// How a child ended.
enum ExitStatus: Equatable, CustomStringConvertible, Sendable {
    case exited(Int32)
    case signaled(Int32)

    init(waitStatus s: Int32) {
        // WIFEXITED / WEXITSTATUS / WTERMSIG are C macros and do not import.
        if s & 0x7f == 0 {
            self = .exited((s >> 8) & 0xff)
        } else {
            self = .signaled(s & 0x7f)
        }
    }

    var description: String {
        switch self {
        case .exited(let code): return "exit code \(code)"
        case .signaled(let sig): return "killed by signal \(sig)"
        }
    }
}

struct SpawnError: Error, CustomStringConvertible {
    let description: String
}

/// Lock-protected mutable state shared between threads.
final class Locked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value
    init(_ value: Value) { self.value = value }
    func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
    var current: Value { withLock { $0 } }
}

/// Every child still running; killed with SIGKILL at process exit.
private let liveChildren = Locked<Set<pid_t>>([])
private let atexitInstalled = Locked(false)

private func installAtexitOnce() {
    let first = atexitInstalled.withLock { installed -> Bool in
        if installed { return false }
        installed = true
        return true
    }
    guard first else { return }
    // Writing to a socket the peer closed must return EPIPE, not kill the test process.
    signal(SIGPIPE, SIG_IGN)
    atexit {
        for pid in liveChildren.current {
            _ = Glibc.kill(pid, SIGKILL)
        }
    }
}

final class ChildProcess: @unchecked Sendable {
    let pid: pid_t
    let path: String
    private let state = Locked<ExitStatus?>(nil)

    private init(pid: pid_t, path: String) {
        self.pid = pid
        self.path = path
    }

    /// Spawns `path` with exactly `environment` (nothing inherited), stdin from /dev/null, stdout/stderr to the given
    /// fds (or /dev/null). Signal mask cleared and SIGPIPE/SIGTERM/SIGINT reset to default in the child, so the child
    /// behaves as it would when started by a supervisor.
    static func spawn(path: String, arguments: [String], environment: [String: String],
                      stdoutFD: Int32?, stderrFD: Int32?) throws -> ChildProcess {
        installAtexitOnce()
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        if let fd = stdoutFD {
            posix_spawn_file_actions_adddup2(&actions, fd, 1)
        } else {
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        }
        if let fd = stderrFD {
            posix_spawn_file_actions_adddup2(&actions, fd, 2)
        } else {
            posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        }

        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var emptyMask = sigset_t()
        sigemptyset(&emptyMask)
        posix_spawnattr_setsigmask(&attr, &emptyMask)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for sig in [SIGPIPE, SIGTERM, SIGINT, SIGHUP] { sigaddset(&defaults, sig) }
        posix_spawnattr_setsigdefault(&attr, &defaults)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?] = environment.sorted { $0.key < $1.key }
            .map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for p in argv { free(p) }
            for p in envp { free(p) }
        }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, &attr, argv, envp)
        guard rc == 0 else {
            throw SpawnError(description: "posix_spawn \(path): \(String(cString: strerror(rc)))")
        }
        liveChildren.withLock { _ = $0.insert(pid) }
        return ChildProcess(pid: pid, path: path)
    }

    /// Reaps the child if it has ended (non-blocking).
    var exitStatus: ExitStatus? {
        state.withLock { st -> ExitStatus? in
            if let s = st { return s }
            var raw: Int32 = 0
            let r = waitpid(pid, &raw, WNOHANG)
            if r == pid {
                st = ExitStatus(waitStatus: raw)
                liveChildren.withLock { _ = $0.remove(pid) }
            }
            return st
        }
    }

    var isRunning: Bool { exitStatus == nil }

    func signal(_ sig: Int32) {
        if isRunning { _ = Glibc.kill(pid, sig) }
    }

    /// Waits up to `timeout` seconds; nil when still running.
    func wait(timeout: Double) -> ExitStatus? {
        let deadline = Deadline(timeout)
        while true {
            if let s = exitStatus { return s }
            if deadline.expired { return nil }
            usleep(5_000)
        }
    }

    /// SIGKILL and reap.
    @discardableResult
    func killAndWait() -> ExitStatus? {
        signal(SIGKILL)
        return wait(timeout: 10)
    }
}

/// Monotonic deadline.
struct Deadline: Sendable {
    let end: Double
    init(_ seconds: Double) { end = monotonicNow() + seconds }
    var remaining: Double { end - monotonicNow() }
    var expired: Bool { remaining <= 0 }
}

func monotonicNow() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

func sleepSeconds(_ s: Double) {
    guard s > 0 else { return }
    usleep(UInt32(s * 1_000_000))
}

/// A pipe whose both ends are close-on-exec (the spawn's dup2 clears the flag on the child's copy only).
func makePipe() throws -> (read: Int32, write: Int32) {
    var fds: [Int32] = [0, 0]
    // pipe2 does not import; children are only spawned from the test thread, so setting the flag after is safe.
    guard pipe(&fds) == 0 else {
        throw SpawnError(description: "pipe: \(String(cString: strerror(errno)))")
    }
    for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
    return (fds[0], fds[1])
}

/// Text a child wrote to one of its pipes, drained on a background thread so the child never blocks on a full pipe.
final class OutputCapture: @unchecked Sendable {
    private let cond = NSCondition()
    private var data: [UInt8] = []
    private var finished = false

    /// Starts draining `fd` (takes ownership; closed at EOF).
    init(fd: Int32, name: String) {
        let thread = Thread { [self] in
            var buf = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n > 0 {
                    cond.lock()
                    data.append(contentsOf: buf[0..<n])
                    cond.broadcast()
                    cond.unlock()
                } else if n < 0 && errno == EINTR {
                    continue
                } else {
                    break
                }
            }
            close(fd)
            cond.lock()
            finished = true
            cond.broadcast()
            cond.unlock()
        }
        thread.name = "drain-\(name)"
        thread.stackSize = 256 << 10
        thread.start()
    }

    var text: String {
        cond.lock()
        defer { cond.unlock() }
        return String(decoding: data, as: UTF8.self)
    }

    var lines: [String] {
        text.split(separator: "\n", omittingEmptySubsequences: true).map(String.init)
    }

    /// Waits until the writer side closed (the child exited and the drain thread saw EOF).
    @discardableResult
    func waitForEOF(timeout: Double) -> Bool {
        let deadline = Date(timeIntervalSinceNow: timeout)
        cond.lock()
        defer { cond.unlock() }
        while !finished {
            if !cond.wait(until: deadline) { return finished }
        }
        return true
    }

    /// Waits for a complete line satisfying `match`; returns it, or nil on timeout / EOF / `stop()` true.
    func waitForLine(timeout: Double, stop: () -> Bool = { false }, where match: (String) -> Bool) -> String? {
        let deadline = Deadline(timeout)
        cond.lock()
        defer { cond.unlock() }
        var scanned = 0
        while true {
            // Only complete lines (ending in \n) are considered.
            while let nl = data[scanned...].firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: data[scanned..<nl], as: UTF8.self)
                scanned = nl + 1
                if match(line) { return line }
            }
            if finished || deadline.expired { return nil }
            cond.unlock()
            let stopped = stop()
            cond.lock()
            if stopped { return nil }
            _ = cond.wait(until: Date(timeIntervalSinceNow: min(0.05, max(deadline.remaining, 0.001))))
        }
    }
}

/// Creates a fresh directory under $TMPDIR (or /tmp).
func makeTempDir(_ tag: String) throws -> String {
    let base = ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp"
    var template = Array("\(base)/respool-it-\(tag)-XXXXXX".utf8CString)
    guard let p = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
        throw SpawnError(description: "mkdtemp: \(String(cString: strerror(errno)))")
    }
    return String(cString: p)
}

func removeTree(_ path: String) {
    try? FileManager.default.removeItem(atPath: path)
}

/// Finds an executable in the PATH (or returns the candidate fallback).
func findExecutable(_ name: String, fallback: String) -> String {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    for dir in path.split(separator: ":") {
        let candidate = "\(dir)/\(name)"
        if access(candidate, X_OK) == 0 { return candidate }
    }
    return fallback
}
