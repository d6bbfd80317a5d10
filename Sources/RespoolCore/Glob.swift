// Glob: redis-server's pattern matching for PSUBSCRIBE patterns (its stringmatchlen, case-sensitive): `*` any run,
// `?` one byte, `[abc]`, `[^abc]`, `[a-z]` (ends either way round), `\x` the byte x. respool uses it to count, as the
// server does, the pattern subscriptions a PUBLISH reaches.

public enum Glob {
    public static func match(_ pattern: [UInt8], _ string: [UInt8]) -> Bool {
        // redis-server skips trailing stars only once a byte of the string was matched: "*" does not match "".
        if string.isEmpty { return pattern.isEmpty }
        return pattern.withUnsafeBufferPointer { p in string.withUnsafeBufferPointer { s in match(p[...], s[...]) } }
    }

    static func match(_ pattern: Slice<UnsafeBufferPointer<UInt8>>, _ string: Slice<UnsafeBufferPointer<UInt8>>) -> Bool {
        var p = pattern.startIndex, s = string.startIndex
        let pe = pattern.endIndex, se = string.endIndex
        while p < pe && s < se {
            switch pattern[p] {
            case UInt8(ascii: "*"):
                while p + 1 < pe && pattern[p + 1] == UInt8(ascii: "*") { p += 1 }
                if p + 1 == pe { return true }
                var k = s
                while k < se {
                    if match(pattern[(p + 1)...], string[k...]) { return true }
                    k += 1
                }
                return false
            case UInt8(ascii: "?"):
                s += 1
            case UInt8(ascii: "["):
                p += 1
                let not = p < pe && pattern[p] == UInt8(ascii: "^")
                if not { p += 1 }
                var found = false
                while p < pe && pattern[p] != UInt8(ascii: "]") {
                    if pattern[p] == UInt8(ascii: "\\") && p + 1 < pe {
                        p += 1
                        if pattern[p] == string[s] { found = true }
                    } else if p + 2 < pe && pattern[p + 1] == UInt8(ascii: "-") {
                        var lo = pattern[p], hi = pattern[p + 2]
                        if lo > hi { swap(&lo, &hi) }
                        p += 2
                        if string[s] >= lo && string[s] <= hi { found = true }
                    } else if pattern[p] == string[s] {
                        found = true
                    }
                    p += 1
                }
                if p == pe { p -= 1 }   // an unterminated class ends at the pattern's end, as in redis
                if found == not { return false }
                s += 1
            case UInt8(ascii: "\\") where p + 1 < pe:
                p += 1
                if pattern[p] != string[s] { return false }
                s += 1
            default:
                if pattern[p] != string[s] { return false }
                s += 1
            }
            p += 1
        }
        while p < pe && pattern[p] == UInt8(ascii: "*") { p += 1 }
        return p == pe && s == se
    }
}
