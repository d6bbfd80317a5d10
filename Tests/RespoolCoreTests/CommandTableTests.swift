import RESP
import RespoolCore
import XCTest

final class CommandTableTests: XCTestCase {
    func testRoutes() {
        XCTAssertEqual(CommandTable.route(SmallBytes("get")), .forward)
        XCTAssertEqual(CommandTable.route(SmallBytes("info")), .forward)
        XCTAssertEqual(CommandTable.route(SmallBytes("flushall")), .forward)
        XCTAssertEqual(CommandTable.route(SmallBytes("nosuchcommand")), .forward)
        XCTAssertEqual(CommandTable.route(SmallBytes("multi")), .transaction(.multi))
        XCTAssertEqual(CommandTable.route(SmallBytes("unwatch")), .transaction(.unwatch))
        XCTAssertEqual(CommandTable.route(SmallBytes("blpop")), .blocking)
        XCTAssertEqual(CommandTable.route(SmallBytes("bzmpop")), .blocking)
        XCTAssertEqual(CommandTable.route(SmallBytes("psubscribe")), .pubsub(.psubscribe))
        XCTAssertEqual(CommandTable.route(SmallBytes("ping")), .ping)
        XCTAssertEqual(CommandTable.route(SmallBytes("monitor")), .stateful(.monitor))
        XCTAssertEqual(CommandTable.route(SmallBytes("xread")), .streamRead)
        XCTAssertEqual(CommandTable.route(SmallBytes("hello")), .local(.hello))
        XCTAssertEqual(CommandTable.route(SmallBytes("select")), .local(.select))
    }

    func testClientSubcommands() {
        XCTAssertEqual(CommandTable.clientSubcommand(SmallBytes("setname")), .setname)
        XCTAssertEqual(CommandTable.clientSubcommand(SmallBytes("setinfo")), .setinfo)
        XCTAssertEqual(CommandTable.clientSubcommand(SmallBytes("tracking")), .tracking)
        XCTAssertEqual(CommandTable.clientSubcommand(SmallBytes("unblock")), .unblock)
        XCTAssertEqual(CommandTable.clientSubcommand(SmallBytes("caching")), .forward)
        XCTAssertEqual(CommandTable.clientSubcommand(SmallBytes("kill")), .kill)
        XCTAssertEqual(CommandTable.clientSubcommand(SmallBytes("list")), .list)
        XCTAssertEqual(CommandTable.clientSubcommand(SmallBytes("reply")), .reply)
        XCTAssertEqual(CommandTable.clientSubcommand(SmallBytes("pause")), .forward)
    }

    /// What the server's COMMAND reply says is blocking (a module command here) runs on a lease; the built-in table
    /// wins where it knows better (XREAD blocks only with BLOCK).
    func testLearnsBlockingCommandsFromTheServer() {
        defer { CommandTable.resetLearned() }
        func entry(_ name: String, _ flags: [String]) -> RESPValue {
            .array([.bulkString(Array(name.utf8)), .integer(-2), .array(flags.map { .simpleString(Array($0.utf8)) }),
                    .integer(1), .integer(1), .integer(1)])
        }
        let reply = RESPValue.array([entry("get", ["readonly", "fast"]), entry("xread", ["readonly", "blocking"]),
                                     entry("mymod.bpop", ["write", "blocking"]), entry("blpop", ["write", "blocking"])])
        XCTAssertEqual(CommandTable.route(SmallBytes("mymod.bpop")), .forward)
        XCTAssertEqual(CommandTable.learn(fromCommandReply: reply), ["mymod.bpop"])
        XCTAssertEqual(CommandTable.route(SmallBytes("mymod.bpop")), .blocking)
        XCTAssertEqual(CommandTable.route(SmallBytes("xread")), .streamRead)
        XCTAssertEqual(CommandTable.route(SmallBytes("get")), .forward)
        XCTAssertEqual(CommandTable.route(SmallBytes("multi")), .transaction(.multi))
    }

    func testRefusalNamesTheCommand() {
        let e = CommandTable.refusal(command: "monitor", kind: .monitor)
        XCTAssertEqual(e, "ERR respool: 'monitor' is not available through the pool (RESPOOL_PINNING=deny: it would hold an "
                       + "upstream connection for as long as it runs); send it to Redis directly")
    }

    private func args(_ words: String...) -> [[UInt8]] { words.map { Array($0.utf8) } }

    /// XREAD/XREADGROUP block only with a BLOCK option before STREAMS; a stream named "block" is a key.
    func testStreamReadBlocksOnlyWithTheOption() {
        XCTAssertTrue(CommandTable.streamReadBlocks(args("XREAD", "BLOCK", "0", "STREAMS", "s", "$")))
        XCTAssertTrue(CommandTable.streamReadBlocks(args("xread", "COUNT", "5", "block", "100", "STREAMS", "s", "0")))
        XCTAssertTrue(CommandTable.streamReadBlocks(args("XREADGROUP", "GROUP", "block", "c", "NOACK", "BLOCK", "5", "STREAMS", "s", ">")))
        XCTAssertFalse(CommandTable.streamReadBlocks(args("XREAD", "STREAMS", "block", "0")))
        XCTAssertFalse(CommandTable.streamReadBlocks(args("XREAD", "COUNT", "1", "STREAMS", "count", "block", "0", "0")))
        XCTAssertFalse(CommandTable.streamReadBlocks(args("XREADGROUP", "GROUP", "block", "block", "STREAMS", "block", ">")))
        XCTAssertFalse(CommandTable.streamReadBlocks(args("XREAD", "BLOCK")), "no value: the server answers the syntax error")
        XCTAssertFalse(CommandTable.streamReadBlocks(args("XREAD", "NOACK", "BLOCK", "1", "STREAMS", "s", "0")), "XREAD has no NOACK")
    }

    /// Once the server's commands are known, unknown commands, subcommands and argument counts get redis-server's
    /// own errors, one line each.
    func testServerRejectionsInRedisWords() {
        defer { CommandTable.resetLearned() }
        XCTAssertNil(CommandTable.serverRejection(args("NOSUCH")), "nothing is known before COMMAND was answered")
        func entry(_ name: String, _ arity: Int, subcommands: [RESPValue] = []) -> RESPValue {
            .array([.bulkString(Array(name.utf8)), .integer(Int64(arity)), .array([]), .integer(0), .integer(0), .integer(0),
                    .array([]), .array([]), .array([]), .array(subcommands)])
        }
        CommandTable.learn(fromCommandReply: .array([entry("get", 2), entry("ping", -1),
                                                     entry("client", -2, subcommands: [entry("client|kill", -3), entry("client|list", -2)])]))
        XCTAssertNil(CommandTable.serverRejection(args("GET", "k")))
        XCTAssertNil(CommandTable.serverRejection(args("ping")))
        XCTAssertNil(CommandTable.serverRejection(args("CLIENT", "LIST")))
        XCTAssertEqual(CommandTable.serverRejection(args("GET")), "ERR wrong number of arguments for 'get' command")
        XCTAssertEqual(CommandTable.serverRejection(args("client")), "ERR wrong number of arguments for 'client' command")
        XCTAssertEqual(CommandTable.serverRejection(args("client", "kill")), "ERR wrong number of arguments for 'client|kill' command")
        XCTAssertEqual(CommandTable.serverRejection(args("client", "no\r\nsuch")), "ERR unknown subcommand 'no\r\nsuch'. Try CLIENT HELP.")
        XCTAssertEqual(CommandTable.serverRejection(args("GE\r\n+OK")), "ERR unknown command 'GE\r\n+OK', with args beginning with: ")
        XCTAssertEqual(CommandTable.serverRejection(args("x", "a", "b\u{0}c")), "ERR unknown command 'x', with args beginning with: 'a' 'b' ")
        let long = String(repeating: "y", count: 100)
        XCTAssertEqual(CommandTable.serverRejection(args("x", long, long, long)),
                       "ERR unknown command 'x', with args beginning with: '\(long)' '\(String(repeating: "y", count: 25))' ")
        XCTAssertEqual(CommandTable.fullName(args("CLIENT", "LIST")), "client|list")
        XCTAssertEqual(CommandTable.fullName(args("GET", "k")), "get")
    }
}

final class ConstantTimeTests: XCTestCase {
    func testEqualOnlyForTheSameBytes() {
        let secret = Array("secret".utf8)
        XCTAssertTrue(ConstantTime.equal(secret, secret))
        XCTAssertFalse(ConstantTime.equal(secret + [0], secret))
        XCTAssertFalse(ConstantTime.equal(secret + [UInt8](repeating: 0, count: 256), secret), "a length compared in 8 bits once passed this")
        XCTAssertFalse(ConstantTime.equal(secret + [UInt8](repeating: 0, count: 512), secret))
        XCTAssertFalse(ConstantTime.equal(Array(secret.dropLast()), secret))
        XCTAssertFalse(ConstantTime.equal(secret + secret, secret), "the secret repeated is not the secret")
        XCTAssertFalse(ConstantTime.equal([], secret))
        XCTAssertFalse(ConstantTime.equal(Array("secreT".utf8), secret))
        XCTAssertTrue(ConstantTime.equal([], []))
        XCTAssertFalse(ConstantTime.equal([0], []))
    }

    /// Bytes that count how often they are read.
    final class Counter: @unchecked Sendable { var reads = 0 }
    struct Counted: RandomAccessCollection {
        let bytes: [UInt8]
        let counter: Counter
        var startIndex: Int { 0 }
        var endIndex: Int { bytes.count }
        subscript(i: Int) -> UInt8 {
            counter.reads += 1
            return bytes[i]
        }
    }

    /// The timing of a password check: the work (bytes read of the guess and of the secret) is the same for every
    /// guess of a given length, however much of it matches: no early exit tells how much of a guess was right.
    func testWorkDependsOnlyOnTheGuessLength() {
        let secret = Array("correct horse battery staple".utf8)
        for length in [0, 1, 5, secret.count - 1, secret.count, secret.count + 1, 100] {
            var work: Set<[Int]> = []
            let guesses: [[UInt8]] = [
                [UInt8](repeating: 0, count: length),
                Array((secret + secret + secret + secret).prefix(length)),                 // right as far as it goes
                Array((secret + secret + secret + secret).prefix(length)).map { $0 ^ 1 },  // wrong from the first byte
                (0..<length).map { i in i == length - 1 ? 0 : secret[i % secret.count] },  // wrong at the last byte only
            ]
            for guess in guesses {
                let g = Counter(), s = Counter()
                _ = ConstantTime.equal(Counted(bytes: guess, counter: g), Counted(bytes: secret, counter: s))
                work.insert([g.reads, s.reads])
            }
            XCTAssertEqual(work.count, 1, "length \(length): reads \(work)")
        }
    }
}
