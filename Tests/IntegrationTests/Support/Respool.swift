// Fixture: the respool binary as a child process, configured by environment (PATH is the only inherited variable),
// stdout/stderr captured, listen port parsed from the `msg="respool started"` log line.
import Foundation
#if canImport(Glibc)
import Glibc
#endif

final class Respool: @unchecked Sendable {
    /// `RESPOOL_BIN`, else `respool` next to the test executable (the .xctest bundle lives in .build/debug/).
    static var binary: String {
        if let bin = ProcessInfo.processInfo.environment["RESPOOL_BIN"], !bin.isEmpty { return bin }
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        let exe = n > 0 ? String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : CommandLine.arguments[0]
        return (exe as NSString).deletingLastPathComponent + "/respool"
    }

    /// nil only in the debug mode RESPOOL_IT_DIRECT_REDIS=1 (clients talk to redis-server directly).
    let process: ChildProcess?
    let stdout: OutputCapture?
    let stderr: OutputCapture?
    let environment: [String: String]
    let arguments: [String]
    /// From the started line (0 until started).
    private(set) var port = 0
    private(set) var socketPath: String?
    private(set) var startedLine = ""
    /// Set by terminate()/kill()/signal(): the test stopped it on purpose (the fixture then skips its crash check).
    private(set) var stoppedOnPurpose = false

    var endpoint: Endpoint { .loopback(port) }
    var isRunning: Bool { process?.isRunning ?? true }
    var stdoutText: String { stdout?.text ?? "" }
    var stderrText: String { stderr?.text ?? "" }
    var output: String { "--- stdout ---\n\(stdoutText)--- stderr ---\n\(stderrText)" }
    var isDirectRedis: Bool { process == nil }

    /// DEBUG MODE ONLY (RESPOOL_IT_DIRECT_REDIS=1): a stand-in that points clients at redis-server itself, to check
    /// the harness and the tests' expectations without the proxy.
    static func directRedis(port: Int) -> Respool {
        let r = Respool(process: nil, stdout: nil, stderr: nil, environment: [:], arguments: [])
        r.port = port
        return r
    }

    private init(process: ChildProcess?, stdout: OutputCapture?, stderr: OutputCapture?,
                 environment: [String: String], arguments: [String]) {
        self.process = process
        self.stdout = stdout
        self.stderr = stderr
        self.environment = environment
        self.arguments = arguments
    }

    /// Spawns the binary without waiting for anything. `fileLimit` runs it under `ulimit -n` (through /bin/sh, which
    /// execs it: the pid is respool's).
    static func spawn(env: [String: String], arguments: [String] = [], fileLimit: Int? = nil, softFileLimit: Int? = nil) throws -> Respool {
        var environment = ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"]
        // A sanitizer pass (scripts/test-asan) configures the respool it builds through these.
        for k in ["ASAN_OPTIONS", "LSAN_OPTIONS", "UBSAN_OPTIONS", "TSAN_OPTIONS"] { environment[k] = ProcessInfo.processInfo.environment[k] }
        for (k, v) in env { environment[k] = v }
        let out = try makePipe()
        let err = try makePipe()
        let child: ChildProcess
        do {
            if fileLimit != nil || softFileLimit != nil {
                // `ulimit -n` sets the hard limit too (respool cannot raise it); `-S` only the soft one.
                let limit = fileLimit.map { "ulimit -n \($0)" } ?? "ulimit -S -n \(softFileLimit!)"
                child = try ChildProcess.spawn(path: "/bin/sh", arguments: ["-c", "\(limit) && exec \"$0\" \"$@\"", binary] + arguments,
                                               environment: environment, stdoutFD: out.write, stderrFD: err.write)
            } else {
                child = try ChildProcess.spawn(path: binary, arguments: arguments, environment: environment,
                                               stdoutFD: out.write, stderrFD: err.write)
            }
        } catch {
            for fd in [out.read, out.write, err.read, err.write] { close(fd) }
            throw SpawnError(description: "cannot start respool at \(binary) (set RESPOOL_BIN?): \(error)")
        }
        close(out.write)
        close(err.write)
        return Respool(process: child, stdout: OutputCapture(fd: out.read, name: "respool-stdout"),
                       stderr: OutputCapture(fd: err.read, name: "respool-stderr"),
                       environment: environment, arguments: arguments)
    }

    /// Spawns and waits for the started line; on timeout or early exit, kills it and throws with the output.
    static func launch(env: [String: String], arguments: [String] = [], fileLimit: Int? = nil, softFileLimit: Int? = nil,
                       startTimeout: Double = 15) throws -> Respool {
        let r = try spawn(env: env, arguments: arguments, fileLimit: fileLimit, softFileLimit: softFileLimit)
        let line = r.stdout!.waitForLine(timeout: startTimeout, stop: { !r.isRunning }) {
            $0.contains("msg=\"respool started\"")
        }
        guard let started = line else {
            let status = r.process!.exitStatus
            if status == nil { r.process!.killAndWait() }
            r.stdout!.waitForEOF(timeout: 2)
            r.stderr!.waitForEOF(timeout: 2)
            throw SpawnError(description: "respool did not log msg=\"respool started\" within \(startTimeout)s"
                + " (\(status.map { "\($0)" } ?? "still running, killed")); env \(env) args \(arguments)\n\(r.output)")
        }
        r.startedLine = started
        guard let listen = logfmtValue(started, key: "listen"),
              let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]), port > 0 else {
            r.process!.killAndWait()
            throw SpawnError(description: "started line has no listen=HOST:PORT: \(started)")
        }
        r.port = port
        r.socketPath = logfmtValue(started, key: "socket")
        return r
    }

    /// Runs the binary to completion (for configuration errors): exit status and both outputs.
    static func runToExit(env: [String: String], arguments: [String] = [], timeout: Double = 10) throws
        -> (status: ExitStatus?, stdout: String, stderr: String) {
        let r = try spawn(env: env, arguments: arguments)
        // Stop waiting as soon as it exits, or as soon as it reports that it started (a value it should refuse).
        _ = r.stdout!.waitForLine(timeout: timeout, stop: { !r.isRunning }) { $0.contains("msg=\"respool started\"") }
        let status = r.process!.wait(timeout: 1)
        if status == nil { r.process!.killAndWait() }
        r.stdout!.waitForEOF(timeout: 2)
        r.stderr!.waitForEOF(timeout: 2)
        return (status, r.stdoutText, r.stderrText)
    }

    /// SIGTERM, wait up to `timeout`; nil when it had to be SIGKILLed.
    @discardableResult
    func terminate(timeout: Double = 10) -> ExitStatus? {
        stoppedOnPurpose = true
        guard let process else { return .exited(0) }
        if let s = process.exitStatus { return s }
        process.signal(SIGTERM)
        let status = process.wait(timeout: timeout)
        if status == nil { process.killAndWait() }
        stdout?.waitForEOF(timeout: 2)
        stderr?.waitForEOF(timeout: 2)
        return status
    }

    func signal(_ sig: Int32) {
        stoppedOnPurpose = true
        process?.signal(sig)
    }

    func kill() {
        stoppedOnPurpose = true
        process?.killAndWait()
        stdout?.waitForEOF(timeout: 2)
        stderr?.waitForEOF(timeout: 2)
    }

    /// The exit status once it ended (nil while running, or in direct-redis mode).
    var exitStatus: ExitStatus? { process?.exitStatus }

    func waitForExit(timeout: Double) -> ExitStatus? { process?.wait(timeout: timeout) }

    /// Sends SIGUSR1 and returns the `msg=stats` line respool logs in answer (empty if none came within 20 s). Only a
    /// line logged after the signal counts: the counters' line (it has upstream_connects=, the periodic one does not)
    /// beyond those already in the output.
    func statsLine() -> String {
        guard let pid = process?.pid, let out = stdout else { return "" }
        func isCounters(_ line: String) -> Bool { line.contains("msg=stats") && line.contains(" upstream_connects=") }
        let seen = out.lines.filter(isCounters).count
        _ = Glibc.kill(pid, SIGUSR1)
        var index = 0
        return out.waitForLine(timeout: 20) { line in
            guard isCounters(line) else { return false }
            index += 1
            return index > seen
        } ?? ""
    }

    func client(timeout: Double = 10) throws -> TestClient { try TestClient(endpoint, timeout: timeout) }

    /// The stats endpoint's port, from the start-up line (stats=HOST:PORT).
    var statsPort: Int? {
        guard let line = stdoutText.split(separator: "\n").first(where: { $0.contains("msg=\"respool started\"") }),
              let addr = logfmtValue(String(line), key: "stats"), let colon = addr.lastIndex(of: ":") else { return nil }
        return Int(addr[addr.index(after: colon)...])
    }
}

/// Value of `key=` in a logfmt line (quoted or bare).
func logfmtValue(_ line: String, key: String) -> String? {
    let chars = Array(line)
    let needle = Array(key + "=")
    var i = 0
    while i + needle.count <= chars.count {
        let atBoundary = i == 0 || chars[i - 1] == " "
        if atBoundary && Array(chars[i..<(i + needle.count)]) == needle {
            var j = i + needle.count
            if j < chars.count && chars[j] == "\"" {
                j += 1
                var value = ""
                while j < chars.count && chars[j] != "\"" {
                    if chars[j] == "\\" && j + 1 < chars.count { j += 1 }
                    value.append(chars[j])
                    j += 1
                }
                return value
            }
            var value = ""
            while j < chars.count && chars[j] != " " {
                value.append(chars[j])
                j += 1
            }
            return value
        }
        i += 1
    }
    return nil
}

/// Parses a whole logfmt line: `key=value` pairs separated by single spaces; a value is bare (no space, quote or
/// '=') or double-quoted with backslash escapes. nil when the line is not logfmt.
func parseLogfmt(_ line: String) -> [(key: String, value: String)]? {
    let chars = Array(line)
    var i = 0
    var out: [(key: String, value: String)] = []
    while i < chars.count {
        var key = ""
        while i < chars.count, chars[i] != "=", chars[i] != " ", chars[i] != "\"" {
            key.append(chars[i])
            i += 1
        }
        guard !key.isEmpty, i < chars.count, chars[i] == "=" else { return nil }
        i += 1
        var value = ""
        if i < chars.count, chars[i] == "\"" {
            i += 1
            var closed = false
            while i < chars.count {
                if chars[i] == "\\", i + 1 < chars.count {
                    value.append(chars[i + 1])
                    i += 2
                } else if chars[i] == "\"" {
                    closed = true
                    i += 1
                    break
                } else {
                    value.append(chars[i])
                    i += 1
                }
            }
            guard closed else { return nil }
        } else {
            while i < chars.count, chars[i] != " " {
                guard chars[i] != "\"" else { return nil }
                value.append(chars[i])
                i += 1
            }
        }
        out.append((key, value))
        if i < chars.count {
            guard chars[i] == " ", i + 1 < chars.count else { return nil }
            i += 1
        }
    }
    return out.isEmpty ? nil : out
}

/// A plain HTTP/1.0 GET on loopback: (status, body).
func httpGet(_ port: Int, _ path: String) throws -> (Int, String) {
    let c = try TestClient(.loopback(port), timeout: 5)
    try c.send("GET \(path) HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    let raw = c.readToEnd()
    let text = String(decoding: raw, as: UTF8.self)
    guard let headerEnd = text.range(of: "\r\n\r\n") else { return (0, text) }
    let status = Int(text.split(separator: " ").dropFirst().first ?? "") ?? 0
    return (status, String(text[headerEnd.upperBound...]))
}
