import RESP
import RespoolCore
import XCTest

final class SecretMaskTests: XCTestCase {
    func testWhichConfigGetsCanCarryASecret() {
        func applies(_ words: String...) -> Bool { SecretMask.applies(words.map { Array($0.utf8) }) }
        XCTAssertTrue(applies("CONFIG", "GET", "requirepass"))
        XCTAssertTrue(applies("config", "get", "REQUIREPASS"))
        XCTAssertTrue(applies("CONFIG", "GET", "maxmemory", "*pass*"))
        XCTAssertTrue(applies("CONFIG", "GET", "*"))
        XCTAssertTrue(applies("CONFIG", "GET", "master?uth"))
        XCTAssertTrue(applies("CONFIG", "GET", "tls-*"))
        XCTAssertFalse(applies("CONFIG", "GET", "maxmemory"))
        XCTAssertFalse(applies("CONFIG", "GET", "masteruser"))
        XCTAssertFalse(applies("CONFIG", "SET", "requirepass", "x"))
        XCTAssertFalse(applies("CONFIG", "GET"))
    }

    func testSecretValuesAreMaskedInBothProtocols() {
        let resp2 = Array("*6\r\n$11\r\nrequirepass\r\n$6\r\nsecret\r\n$9\r\nmaxmemory\r\n$1\r\n0\r\n$10\r\nmasterauth\r\n$0\r\n\r\n".utf8)
        XCTAssertEqual(String(decoding: SecretMask.masked(resp2, proto: 2), as: UTF8.self),
                       "*6\r\n$11\r\nrequirepass\r\n$19\r\n(masked by respool)\r\n$9\r\nmaxmemory\r\n$1\r\n0\r\n$10\r\nmasterauth\r\n$0\r\n\r\n",
                       "a set password masked, an empty one (none set) and other parameters as they were")
        let resp3 = Array("%1\r\n$24\r\ntls-client-key-file-pass\r\n$2\r\npw\r\n".utf8)
        XCTAssertEqual(String(decoding: SecretMask.masked(resp3, proto: 3), as: UTF8.self),
                       "%1\r\n$24\r\ntls-client-key-file-pass\r\n$19\r\n(masked by respool)\r\n")
        let untouched = Array("*2\r\n$9\r\nmaxmemory\r\n$1\r\n0\r\n".utf8)
        XCTAssertEqual(SecretMask.masked(untouched, proto: 2), untouched)
        let error = Array("-ERR unknown\r\n".utf8)
        XCTAssertEqual(SecretMask.masked(error, proto: 2), error)
    }
}
