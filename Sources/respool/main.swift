// respool (or `respool exec ... -- COMMAND`): environment and flags → Config (a bad value: one line naming it, exit 2) → logging → Proxy.run().
import ArgumentParser
import Glibc
import Logging
import Respool
import RespoolCore

var arguments = Array(CommandLine.arguments.dropFirst())
// `respool exec [--flag value ...] -- COMMAND [ARGS...]`: the settings before `--`, the app's command after it.
var execCommand: [String]?
if arguments.first == "exec" {
    guard let dash = arguments.firstIndex(of: "--"), dash + 1 < arguments.count else {
        writeStderr("respool: usage: respool exec [--flag value ...] -- COMMAND [ARGS...]")
        exit(2)
    }
    execCommand = Array(arguments[(dash + 1)...])
    arguments = Array(arguments[1..<dash])
}
let command: RespoolCommand
do {
    command = try RespoolCommand.parse(arguments)
} catch {
    let code = RespoolCommand.exitCode(for: error)
    if code == .success {
        print(RespoolCommand.fullMessage(for: error))
        exit(0)
    }
    writeStderr("respool: \(RespoolCommand.message(for: error).split(separator: "\n").first ?? "invalid arguments")")
    exit(2)
}
exit(command.start(exec: execCommand))
