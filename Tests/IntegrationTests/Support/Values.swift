// Building expected replies and printing actual ones readably in failure messages.
import Foundation
import RESP
import TestKit
import XCTest

/// Expected-reply builders (a namespace, so nothing collides with members the RESP module may add to RESPValue).
enum Reply {
    static let ok = RESPValue.simpleString(Array("OK".utf8))
    static let pong = RESPValue.simpleString(Array("PONG".utf8))
    static let nilBulk = RESPValue.bulkString(nil)
    static let emptyArray = RESPValue.array([])
    static func simple(_ s: String) -> RESPValue { .simpleString(Array(s.utf8)) }
    static func bulk(_ s: String) -> RESPValue { .bulkString(Array(s.utf8)) }
    static func bulk(_ b: [UInt8]) -> RESPValue { .bulkString(b) }
    static func bulk(_ s: String?) -> RESPValue { s.map { bulk($0) } ?? nilBulk }
    static func int(_ n: Int) -> RESPValue { .integer(Int64(n)) }
    static func array(_ items: [RESPValue]) -> RESPValue { .array(items) }
    static func bulks(_ items: [String]) -> RESPValue { .array(items.map { bulk($0) }) }
    static func error(_ s: String) -> RESPValue { .error(Array(s.utf8)) }
}

extension RESPValue {
    /// The error text (simple or bulk error), nil for any other value.
    var errorText: String? {
        switch self {
        case .error(let b), .bulkError(let b): return String(decoding: b, as: UTF8.self)
        default: return nil
        }
    }

    func isError(prefix: String) -> Bool { errorText?.hasPrefix(prefix) ?? false }
}

/// Readable rendering of a reply, truncating long strings.
func show(_ v: RESPValue, limit: Int = 120) -> String {
    func str(_ b: [UInt8]) -> String { preview(b, limit: limit) }
    switch v {
    case .simpleString(let b): return "+\(String(decoding: b, as: UTF8.self))"
    case .error(let b): return "-\(String(decoding: b, as: UTF8.self))"
    case .integer(let n): return ":\(n)"
    case .bulkString(nil): return "$-1(nil)"
    case .bulkString(let b?): return str(b)
    case .array(nil): return "*-1(nil array)"
    case .array(let items?): return "[" + items.map { show($0, limit: limit) }.joined(separator: ", ") + "]"
    case .null: return "_(null)"
    case .boolean(let b): return b ? "#t" : "#f"
    case .double(let b): return ",\(String(decoding: b, as: UTF8.self))"
    case .bigNumber(let b): return "(\(String(decoding: b, as: UTF8.self))"
    case .bulkError(let b): return "!\(String(decoding: b, as: UTF8.self))"
    case .verbatim(let f, let t): return "=\(String(decoding: f, as: UTF8.self)):\(str(t))"
    case .map(let items):
        var parts: [String] = []
        var i = 0
        while i + 1 < items.count {
            parts.append("\(show(items[i], limit: limit)): \(show(items[i + 1], limit: limit))")
            i += 2
        }
        return "%{" + parts.joined(separator: ", ") + "}"
    case .set(let items): return "~{" + items.map { show($0, limit: limit) }.joined(separator: ", ") + "}"
    case .push(let items): return ">[" + items.map { show($0, limit: limit) }.joined(separator: ", ") + "]"
    case .attribute(let attrs, let value):
        return "|\(show(.map(attrs), limit: limit)) \(show(value, limit: limit))"
    }
}

/// Asserts `got == expected`, printing both readably plus what was sent.
func assertReply(_ got: RESPValue, _ expected: RESPValue, _ context: @autoclosure () -> String = "",
                 file: StaticString = #filePath, line: UInt = #line) {
    if got != expected {
        XCTFail("\(context()): expected \(show(expected)), got \(show(got))", file: file, line: line)
    }
}

func assertErrorReply(_ got: RESPValue, prefix: String, _ context: @autoclosure () -> String = "",
                      file: StaticString = #filePath, line: UInt = #line) {
    if !got.isError(prefix: prefix) {
        XCTFail("\(context()): expected an error starting \"\(prefix)\", got \(show(got))", file: file, line: line)
    }
}

/// Pairs of a RESP2 flat array or RESP3 map as [key: value] (keys rendered as strings).
func keyValuePairs(_ v: RESPValue) -> [String: RESPValue]? {
    let items: [RESPValue]
    switch v {
    case .map(let m): items = m
    case .array(let a?) where a.count % 2 == 0: items = a
    default: return nil
    }
    var out: [String: RESPValue] = [:]
    var i = 0
    while i + 1 < items.count {
        guard let k = items[i].string else { return nil }
        out[k] = items[i + 1]
        i += 2
    }
    return out
}

