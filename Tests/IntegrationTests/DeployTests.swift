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
    for k in ["ASAN_OPTIONS", "LSAN_OPTIONS", "UBSAN_OPTIONS", "TSAN_OPTIONS"] { env[k] = ProcessInfo.processInfo.environment[k] }
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

    /// A checker installed by scripts/setup (PyPI, in .build-tools/venv).
    func tool(_ name: String) throws -> String {
        let path = "\(repositoryRoot)/.build-tools/venv/bin/\(name)"
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw SpawnError(description: "\(path) is missing: run scripts/setup (it installs the deployment checkers)")
        }
        return path
    }

    /// deploy/docker/Dockerfile passes hadolint, and hadolint does fail a Dockerfile with a known mistake.
    func testDockerfileLints() throws {
        let hadolint = try tool("hadolint")
        let r = try runTool(hadolint, ["\(repositoryRoot)/deploy/docker/Dockerfile"])
        XCTAssertEqual(r.status, .exited(0), r.stdout + r.stderr)
        let dir = try makeTempDir("hadolint")
        defer { removeTree(dir) }
        let bad = try String(contentsOfFile: "\(repositoryRoot)/deploy/docker/Dockerfile", encoding: .utf8)
            .replacingOccurrences(of: "USER 10001:10001\n", with: "")
            .replacingOccurrences(of: "WORKDIR /src", with: "RUN cd /src")
        try bad.write(toFile: "\(dir)/Dockerfile", atomically: true, encoding: .utf8)
        let failing = try runTool(hadolint, ["\(dir)/Dockerfile"])
        XCTAssertNotEqual(failing.status, .exited(0), "hadolint catches cd in RUN: \(failing.stdout)")
        XCTAssertTrue(failing.stdout.contains("DL3003"), failing.stdout)
    }

    /// deploy/kubernetes validates against the Kubernetes schema (1.29, the first with native sidecars, and the
    /// checker's newest), strictly; a misspelled field does not.
    func testKubernetesManifestValidates() throws {
        let validate = try tool("kubernetes-validate")
        let file = "\(repositoryRoot)/deploy/kubernetes/respool-sidecar.yaml"
        for version in ["1.29", "1.37"] {
            let r = try runTool(validate, ["--strict", "-k", version, file])
            XCTAssertEqual(r.status, .exited(0), r.stdout + r.stderr)
            let out = r.stdout + r.stderr
            XCTAssertEqual(out.components(separatedBy: " passed for resource ").count - 1, 2, out)
            XCTAssertFalse(out.contains("ERROR") || out.contains("did not validate"), out)
        }
        let dir = try makeTempDir("k8s")
        defer { removeTree(dir) }
        let bad = try String(contentsOfFile: file, encoding: .utf8).replacingOccurrences(of: "restartPolicy: Always", with: "restartPolicie: Always")
        try bad.write(toFile: "\(dir)/bad.yaml", atomically: true, encoding: .utf8)
        let r = try runTool(validate, ["--strict", "\(dir)/bad.yaml"])
        XCTAssertTrue((r.stdout + r.stderr).contains("did not validate"), r.stdout + r.stderr)
    }

    /// deploy/respool.service passes `systemd-analyze verify` (with ExecStart pointing at this build's binary, as
    /// the unit's install steps put it at /usr/local/bin/respool); a unit with a bad directive does not.
    func testSystemdUnitVerifies() throws {
        let dir = try makeTempDir("systemd")
        defer { removeTree(dir) }
        let unit = try String(contentsOfFile: "\(repositoryRoot)/deploy/respool.service", encoding: .utf8)
            .replacingOccurrences(of: "/usr/local/bin/respool", with: Respool.binary)
            .replacingOccurrences(of: "EnvironmentFile=/etc/respool/respool.env", with: "EnvironmentFile=-/etc/respool/respool.env")
        try unit.write(toFile: "\(dir)/respool.service", atomically: true, encoding: .utf8)
        let r = try runTool("/usr/bin/systemd-analyze", ["verify", "\(dir)/respool.service"])
        XCTAssertEqual(r.status, .exited(0), r.stdout + r.stderr)
        XCTAssertFalse((r.stdout + r.stderr).contains("respool.service:"), "no complaint about the unit: \(r.stdout + r.stderr)")
        try unit.replacingOccurrences(of: "Restart=on-failure", with: "Restart=sometimes").write(toFile: "\(dir)/respool.service", atomically: true, encoding: .utf8)
        let bad = try runTool("/usr/bin/systemd-analyze", ["verify", "\(dir)/respool.service"])
        XCTAssertTrue((bad.stdout + bad.stderr).contains("Failed to parse") && (bad.stdout + bad.stderr).contains("sometimes"), "a bad value is reported: \(bad.stdout + bad.stderr)")
    }

    /// The Heroku buildpack: bin/detect applies, bin/release names no process type, bin/compile (with a prebuilt
    /// binary, as RESPOOL_BINARY) puts respool in the slug with libevent vendored and a .profile.d script; in a dyno's
    /// environment (HOME the slug, nothing else) `respool` is on PATH, loads the vendored libevent, and runs.
    func testHerokuBuildpackCompile() throws {
        let bp = "\(repositoryRoot)/deploy/heroku/buildpack"
        let root = try makeTempDir("buildpack")
        defer { removeTree(root) }
        let build = "\(root)/build", cache = "\(root)/cache", envDir = "\(root)/env"
        for d in [build, cache, envDir] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
        try Respool.binary.write(toFile: "\(envDir)/RESPOOL_BINARY", atomically: true, encoding: .utf8)
        XCTAssertEqual(try runTool("\(bp)/bin/detect", [build]).stdout, "respool\n")
        XCTAssertEqual(try runTool("\(bp)/bin/release", [build]).stdout, "--- {}\n")
        let r = try runTool("\(bp)/bin/compile", [build, cache, envDir], environment: ["RESPOOL_VENDOR_LIBEVENT": "1"])
        XCTAssertEqual(r.status, .exited(0), r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("-----> Installing respool from"), r.stdout)
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: "\(build)/bin/respool"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(build)/.respool/lib/libevent-2.1.so.7"), r.stdout)
        let dyno = try runTool("/usr/bin/env", ["-i", "HOME=\(build)", "/bin/bash", "-c",
                                                ". \"$HOME/.profile.d/respool.sh\" && command -v respool && ldd \"$(command -v respool)\" && respool --help"])
        XCTAssertEqual(dyno.status, .exited(0), dyno.stdout + dyno.stderr)
        XCTAssertTrue(dyno.stdout.hasPrefix("\(build)/bin/respool\n"), dyno.stdout)
        XCTAssertTrue(dyno.stdout.contains("libevent-2.1.so.7 => \(build)/.respool/lib/libevent-2.1.so.7"), dyno.stdout)
        XCTAssertTrue(dyno.stdout.contains("respool exec"), "respool ran: \(dyno.stdout)")
    }
}
