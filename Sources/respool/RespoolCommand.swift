// RespoolCommand: the command line. Every setting is an environment variable (12-factor) and also a flag; flags win.
import ArgumentParser
import Glibc
import Logging
import Respool
import RespoolCore

func writeStderr(_ line: String) {
    var bytes = Array((line + "\n").utf8)
    _ = bytes.withUnsafeMutableBytes { Glibc.write(2, $0.baseAddress, $0.count) }
}

/// Every setting of `Config.options` as it appears in `--help`: the flag, then its help, variable and default,
/// wrapped to 80 columns here (lines that fit are printed as they are).
private let settingsHelp: String = Config.options.map { o in
    "  --\(o.flag) <value>\n" + wrap("\(o.help) [env: \(o.variable)] (default: \(o.defaultText))", indent: 6, width: 79)
}.joined(separator: "\n")

private func wrap(_ text: String, indent: Int, width: Int) -> String {
    let pad = String(repeating: " ", count: indent)
    var lines: [String] = []
    var line = pad
    var length = indent   // of `line`, in bytes (the help is ASCII)
    for word in text.split(separator: " ") {
        let n = word.utf8.count
        if length > indent && length + 1 + n > width {
            lines.append(line)
            line = pad
            length = indent
        }
        if length > indent {
            line += " "
            length += 1
        }
        line += word
        length += n
    }
    lines.append(line)
    return lines.joined(separator: "\n")
}

struct RespoolCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "respool",
        abstract: "A connection-pooling sidecar proxy for Redis.",
        discussion: """
            Point any Redis client at respool; it multiplexes all client connections onto a small, bounded pool of \
            upstream connections. Every setting is read from its environment variable; the flag of the same name \
            overrides it (--flag value or --flag=value).

            respool exec [--flag value ...] -- COMMAND [ARGS...] runs COMMAND beside respool once it listens, with \
            REDIS_URL (and the variable the upstream came from) set to respool's local URL and RESPOOL_URL removed; \
            SIGTERM, SIGINT, SIGHUP, SIGQUIT and SIGUSR2 go to COMMAND, respool keeps serving it and exits once it \
            has, with its exit code (Procfile: web: respool exec -- bundle exec puma).

            SETTINGS:
            \(settingsHelp)
            """
    )

    /// The settings given as flags: `--flag value` or `--flag=value`, each the flag of an entry of `Config.options`
    /// (the one table the flags, their help and the environment variables come from).
    @Argument(parsing: .allUnrecognized, help: .hidden) var settings: [String] = []

    func validate() throws {
        _ = try flags()
    }

    /// The flags given, by environment variable name.
    func flags() throws -> [String: String] {
        var out: [String: String] = [:]
        var i = 0
        while i < settings.count {
            let word = settings[i]
            guard word.hasPrefix("--"), word.count > 2 else {
                throw ValidationError("unexpected argument '\(word)' (settings are --flag value; see respool --help)")
            }
            var name = String(word.dropFirst(2))
            var value: String?
            if let eq = name.firstIndex(of: "=") {
                value = String(name[name.index(after: eq)...])
                name = String(name[..<eq])
            }
            guard let option = Config.options.first(where: { $0.flag == name }) else {
                throw ValidationError("unknown option '--\(name)' (see respool --help)")
            }
            if value == nil {
                guard i + 1 < settings.count else { throw ValidationError("missing value for '--\(name)'") }
                i += 1
                value = settings[i]
            }
            out[option.variable] = value
            i += 1
        }
        return out
    }

    /// The process environment.
    static func processEnvironment() -> [String: String] {
        var env: [String: String] = [:]
        var p = environ
        while let entry = p.pointee {
            let s = String(cString: entry)
            if let eq = s.firstIndex(of: "=") { env[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
            p += 1
        }
        return env
    }

    /// The process environment with the flags merged over it.
    func environment() -> [String: String] {
        var env = Self.processEnvironment()
        for (variable, value) in (try? flags()) ?? [:] { env[variable] = value }
        return env
    }

    /// Runs respool (with `exec`, `respool exec`'s command beside it). Returns the exit code.
    func start(exec: [String]? = nil) -> Int32 {
        var host = [CChar](repeating: 0, count: 256)
        gethostname(&host, host.count - 1)
        let hostName = String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let configs: [Config]
        do {
            configs = try Config.all(environment: environment(), hostName: hostName.isEmpty ? "respool" : hostName)
        } catch {
            writeStderr("respool: \(error)")
            return 2
        }
        let level = Logger.Level(rawValue: configs[0].logLevel.rawValue) ?? .info
        let logger = Logger(label: "respool") { label in LogfmtHandler(label: label, level: level) }
        do {
            let runtime = try Runtime(configs: configs, logger: logger)
            return try runtime.run(exec: exec.map { ExecSpec(argv: $0, environment: Self.processEnvironment()) })
        } catch let error as ConfigError {
            // A setting that parsed but cannot be used (a TLS file that does not load): as any bad value, exit 2.
            writeStderr("respool: \(error)")
            return 2
        } catch {
            logger.critical("cannot start", metadata: ["error": "\(error)"])
            writeStderr("respool: \(error)")
            return 1
        }
    }
}
