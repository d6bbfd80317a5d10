// Glob against redis-server's own answers: each case was checked with PSUBSCRIBE <pattern> then PUBLISH <channel>
// on redis-server 7.0.15 (the PUBLISH count is 1 exactly when the pattern matches).
@testable import RespoolCore
import XCTest

final class GlobTests: XCTestCase {
    static let cases: [(String, String, Bool)] = [
        ("*", "", false), ("", "", true), ("*", "anything", true), ("news.*", "news.art", true), ("news.*", "news", false),
        ("h?llo", "hello", true), ("h?llo", "hllo", false), ("h[ae]llo", "hallo", true), ("h[ae]llo", "hillo", false),
        ("h[^e]llo", "hallo", true), ("h[^e]llo", "hello", false), ("h[a-b]llo", "hbllo", true), ("h[b-a]llo", "hallo", true),
        ("h[a-b]llo", "hcllo", false), ("h\\*llo", "h*llo", true), ("h\\*llo", "hello", false), ("a*b*c", "aXbYc", true),
        ("a*b*c", "aXbY", false), ("**x", "abx", true), ("[\\]]", "]", true), ("abc", "abc", true), ("abc", "abcd", false),
        ("a*", "a", true), ("*a", "a", true),
    ]

    func testMatchesLikeRedis() {
        for (pattern, string, expected) in Self.cases {
            XCTAssertEqual(Glob.match(Array(pattern.utf8), Array(string.utf8)), expected, "\(pattern) ~ \(string)")
        }
    }
}
