// The deployment recipes and the demo, checked as far as this machine allows.
import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// The repository's root (this file is Tests/IntegrationTests/DeployTests.swift).
let repositoryRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.path
}()

/// Runs `path` with `arguments` (in the repository's root), waits up to `timeout`: exit status, stdout and stderr.
func runTool(_ path: String, _ arguments: [String], environment: [String: String] = [:], timeout: Double = 120) throws
    -> (status: ExitStatus?, stdout: String, stderr: String) {
    var env = ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin", "HOME": NSTemporaryDirectory()]
    for (k, v) in environment { env[k] = v }
    let out = try makePipe(), err = try makePipe()
    let child = try ChildProcess.spawn(path: path, arguments: arguments, environment: env, stdoutFD: out.write, stderrFD: err.write)
    close(out.write)
    close(err.write)
    let stdout = OutputCapture(fd: out.read, name: "tool-stdout"), stderr = OutputCapture(fd: err.read, name: "tool-stderr")
    let status = child.wait(timeout: timeout)
    if status == nil { child.killAndWait() }
    stdout.waitForEOF(timeout: 5)
    stderr.waitForEOF(timeout: 5)
    return (status, stdout.text, stderr.text)
}

final class DeployTests: IntegrationTestCase {
    /// scripts/demo (with this build's binary): the server sees respool's few connections instead of the app's 300,
    /// no reply goes astray, KEYS never reaches the server, the idle client is closed and the subscriber is not.
    func testDemo() throws {
        try requireRealRespool()
        raiseFileLimit()
        let r = try runTool("/bin/bash", ["\(repositoryRoot)/scripts/demo"], environment: ["RESPOOL_BIN": Respool.binary])
        XCTAssertEqual(r.status, .exited(0), r.stdout + r.stderr)
        func row(_ label: String) -> [String] {
            guard let line = r.stdout.split(separator: "\n").first(where: { $0.hasPrefix(label) }) else { return [] }
            return line.dropFirst(label.count).split(separator: " ").map(String.init)
        }
        XCTAssertEqual(row("replies to the wrong connection"), ["0", "0"], r.stdout)
        let seen = row("connections the server sees").compactMap { Int($0) }
        XCTAssertEqual(seen.count, 2, r.stdout)
        XCTAssertGreaterThanOrEqual(seen.first ?? 0, 300, "directly: one per app connection")
        XCTAssertLessThanOrEqual(seen.last ?? 99, 4, "through respool: at most its cap")
        XCTAssertTrue(r.stdout.contains("the server ran KEYS 0 times"), r.stdout)
        XCTAssertTrue(r.stdout.contains("the idle client was closed by respool: True; the subscriber is left alone (a PUBLISH reaches it: True)"), r.stdout)
    }
}
