// The libFuzzer entry point. scripts/fuzz compiles it with RESP's sources and Tests/FuzzOracle as one module
// (-sanitize=fuzzer,address); RESP_FUZZ_TARGET picks what each input goes through: requests (RequestFramer),
// replies (ReplyFramer) or decoder (RESPDecoder). A disagreement with the oracle aborts, and libFuzzer keeps the
// input as a crash file: copy it to Tests/Fuzz/regressions/<target>/ so the ordinary tests replay it.

#if canImport(Glibc)
import Glibc
#endif

let fuzzTarget: String = getenv("RESP_FUZZ_TARGET").map { String(cString: $0) } ?? "requests"

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    let failure: String?
    switch fuzzTarget {
    case "requests": failure = FuzzOracle.checkRequests(input)
    case "replies": failure = FuzzOracle.checkReplies(input)
    case "decoder": failure = FuzzOracle.checkDecoder(input)
    default:
        fputs("RESP_FUZZ_TARGET must be requests, replies or decoder, not \(fuzzTarget)\n", stderr)
        exit(2)
    }
    if let failure {
        fputs("\nFUZZ ORACLE: \(failure)\n", stderr)
        abort()
    }
    return 0
}
