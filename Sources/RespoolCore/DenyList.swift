// RESPOOL_DENY_COMMANDS: commands (or one subcommand of a command) respool answers with an error instead of passing
// them to the server, as an ACL would; inside MULTI the error flags the transaction, so EXEC fails as redis fails it.
import RESP

public struct DenyList: Sendable, Equatable {
    /// Whole commands ("flushall").
    public private(set) var commands: Set<SmallBytes> = []
    /// One subcommand of a command ("config" + "set").
    public private(set) var subcommands: Set<[SmallBytes]> = []
    /// The entries as given, lowercased, for /stats and the start-up line.
    public private(set) var entries: [String] = []

    public var isEmpty: Bool { entries.isEmpty }

    public init() {}

    /// `text`: names separated by commas or spaces, each NAME or NAME|SUBCOMMAND (case-insensitive); throws when
    /// an entry is not of that form (the error names it).
    public init(parsing text: String) throws(ConfigError) {
        for raw in text.split(whereSeparator: { $0 == "," || $0 == " " }) {
            let entry = raw.lowercased()
            let parts = entry.split(separator: "|", omittingEmptySubsequences: false)
            let valid = (1...2).contains(parts.count) && parts.allSatisfy { part in
                !part.isEmpty && part.utf8.count <= SmallBytes.capacity
                    && part.unicodeScalars.allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || $0 == "_" || $0 == "-") }
            }
            guard valid else {
                throw ConfigError(variable: "RESPOOL_DENY_COMMANDS",
                                  message: "\"\(raw.prefix(40))\" is not a command name (NAME or NAME|SUBCOMMAND, separated by commas)")
            }
            if entries.contains(entry) { continue }
            entries.append(entry)
            if parts.count == 1 {
                commands.insert(SmallBytes(lowercasing: Array(parts[0].utf8)))
            } else {
                subcommands.insert([SmallBytes(lowercasing: Array(parts[0].utf8)), SmallBytes(lowercasing: Array(parts[1].utf8))])
            }
        }
    }

    /// The entry that `name` (the lowercased command) with its first argument matches, as CLIENT LIST names
    /// commands ("flushall", "config|set"), or nil.
    public func denied(name: SmallBytes, arg1: SmallBytes?) -> String? {
        if commands.contains(name) { return name.description }
        if let arg1, !subcommands.isEmpty, subcommands.contains([name, arg1]) { return name.description + "|" + arg1.description }
        return nil
    }

    /// The error a denied command gets (the NOPERM code, as an ACL denial has).
    public static func message(_ command: String) -> String {
        "NOPERM respool denies the '\(command)' command here (RESPOOL_DENY_COMMANDS)"
    }
}
