// respool: environment and flags → Config (a bad value: one line naming it, exit 2) → logging → Proxy.run().
import ArgumentParser
import Glibc
import Logging
import Respool
import RespoolCore

let arguments = Array(CommandLine.arguments.dropFirst())
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
exit(command.start())
