// Fixture: a real redis-server on an ephemeral loopback port, in its own temp dir, no persistence.
import Foundation
import RESP
#if canImport(Glibc)
import Glibc
#endif

/// A port that was free a moment ago (bind 127.0.0.1:0, read it, close). Callers retry if someone else takes it.
func freeLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw SpawnError(description: "socket: \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = 0
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard rc == 0 else { throw SpawnError(description: "bind: \(String(cString: strerror(errno)))") }
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
    }
    return Int(UInt16(bigEndian: addr.sin_port))
}

final class RedisServer: @unchecked Sendable {
    static let binary = ProcessInfo.processInfo.environment["REDIS_SERVER_BIN"]
        ?? findExecutable("redis-server", fallback: "/usr/bin/redis-server")

    private(set) var port: Int
    let dir: String
    let password: String?
    let extraArgs: [String]
    private var process: ChildProcess?
    private var generation = 0

    var endpoint: Endpoint { .loopback(port) }
    /// redis://[:password@]127.0.0.1:port
    var url: String {
        if let pw = password { return "redis://:\(pw)@127.0.0.1:\(port)" }
        return "redis://127.0.0.1:\(port)"
    }
    var isRunning: Bool { process?.isRunning ?? false }
    var logPath: String { "\(dir)/redis-\(generation).log" }

    /// Starts redis-server; `port` nil = pick a free one (retried on bind races).
    static func start(port: Int? = nil, password: String? = nil, extraArgs: [String] = []) throws -> RedisServer {
        let dir = try makeTempDir("redis")
        var lastError: (any Error)?
        for _ in 0..<8 {
            let p = try port ?? freeLoopbackPort()
            let server = RedisServer(port: p, dir: dir, password: password, extraArgs: extraArgs)
            do {
                try server.launch()
                return server
            } catch {
                lastError = error
                if port != nil { break }
            }
        }
        removeTree(dir)
        throw lastError ?? SpawnError(description: "redis-server did not start")
    }

    private init(port: Int, dir: String, password: String?, extraArgs: [String]) {
        self.port = port
        self.dir = dir
        self.password = password
        self.extraArgs = extraArgs
    }

    private func launch(readyTimeout: Double = 10) throws {
        generation += 1
        let log = logPath
        var args = ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                    "--dir", dir, "--logfile", log, "--daemonize", "no", "--protected-mode", "no"]
        if let pw = password { args += ["--requirepass", pw] }
        args += extraArgs
        let env = ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"]
        let child = try ChildProcess.spawn(path: Self.binary, arguments: args, environment: env, stdoutFD: nil, stderrFD: nil)
        process = child
        let deadline = Deadline(readyTimeout)
        while !deadline.expired {
            if let status = child.exitStatus {
                throw SpawnError(description: "redis-server on port \(port) exited (\(status)) before answering PING; log:\n\(logText)")
            }
            if (try? ping()) == true { return }
            usleep(10_000)
        }
        child.killAndWait()
        throw SpawnError(description: "redis-server on port \(port) did not answer PING within \(readyTimeout)s; log:\n\(logText)")
    }

    private func ping() throws -> Bool {
        let c = try TestClient(endpoint, timeout: 1)
        if let pw = password {
            guard try c.command("AUTH", pw) == .simpleString(Array("OK".utf8)) else { return false }
        }
        return try c.command("PING") == .simpleString(Array("PONG".utf8))
    }

    var logText: String {
        (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "<no log at \(logPath)>"
    }

    /// A direct connection (authenticated when the server has a password).
    func client(timeout: Double = 10) throws -> TestClient {
        let c = try TestClient(endpoint, timeout: timeout)
        if let pw = password {
            let r = try c.command("AUTH", pw)
            guard r == .simpleString(Array("OK".utf8)) else {
                throw SpawnError(description: "AUTH on direct connection failed: \(show(r))")
            }
        }
        return c
    }

    /// SIGTERM and wait (SIGKILL after `timeout`).
    func stop(timeout: Double = 10) {
        guard let p = process else { return }
        p.signal(SIGTERM)
        if p.wait(timeout: timeout) == nil { p.killAndWait() }
        process = nil
    }

    /// SIGSTOP / SIGCONT: the server hangs with its connections open (as behind a network partition).
    func pause() { process?.signal(SIGSTOP) }
    func resume() { process?.signal(SIGCONT) }

    /// SIGKILL: the upstream vanishes without closing anything gracefully.
    func kill() {
        process?.killAndWait()
        process = nil
    }

    /// Starts again on the same port (after stop() or kill()); retries while the port is still held.
    func restart(timeout: Double = 10) throws {
        if process != nil { stop() }
        let deadline = Deadline(timeout)
        while true {
            do {
                try launch()
                return
            } catch {
                if deadline.expired { throw error }
                usleep(50_000)
            }
        }
    }

    /// Stop and remove the temp dir.
    func cleanup() {
        stop()
        removeTree(dir)
    }
}

extension RedisServer {
    /// The server's CLIENT LIST lines of respool's shared connections named `<name>:pool`.
    func poolConnections(_ name: String) throws -> [String] {
        let list = try client().command("CLIENT", "LIST").string ?? ""
        return list.split(separator: "\n").map(String.init).filter { $0.contains("name=\(name):pool") }
    }
}
