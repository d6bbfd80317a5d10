// ChildProcess: the app that `respool exec` runs (fork and exec in the C shim, which also makes the child die with
// respool and keeps respool's descriptors out of it); signals to it and its exit status.
internal import CLibevent
import Glibc

public struct ChildProcess: Sendable {
    public let pid: Int32

    /// Starts `argv[0]` (looked up on PATH) with `argv` and exactly `environment`. Throws when it cannot run (not
    /// found, not executable): the errno of exec itself.
    public static func spawn(_ argv: [String], environment: [String: String]) throws(SystemError) -> ChildProcess {
        precondition(!argv.isEmpty, "spawn without a command")
        var cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        var cEnv: [UnsafeMutablePointer<CChar>?] = environment.sorted { $0.key < $1.key }.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for p in cArgs { free(p) }
            for p in cEnv { free(p) }
        }
        var err: Int32 = 0
        let pid = cArgs.withUnsafeMutableBufferPointer { a in
            cEnv.withUnsafeMutableBufferPointer { e in respool_spawn(a[0], a.baseAddress, e.baseAddress, &err) }
        }
        guard pid > 0 else { throw SystemError("exec \(argv[0])", errno: err) }
        return ChildProcess(pid: pid)
    }

    public func send(_ signal: Int32) { _ = kill(pid, signal) }

    /// The exit code once the child has exited (128 + the signal when a signal ended it), nil while it runs.
    /// Reaps it: call again only while it returned nil.
    public func exitCode() -> Int32? {
        var code: Int32 = 0
        return respool_reap(pid, &code) == 1 ? code : nil
    }
}
