// A command name or argument prefix kept inline (no heap): what the router needs to classify a request.

/// Up to 32 bytes kept inline (no heap), lowercased ASCII when captured as a command name/argument.
public struct SmallBytes: Hashable, Sendable, CustomStringConvertible {
    public static let capacity = 32

    // Four words of inline storage; bytes past `count` are always zero so equality and hashing can use the words.
    @usableFromInline var storage: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
    @usableFromInline var length: UInt8 = 0
    @usableFromInline var wasTruncated = false

    /// Captured bytes (<= capacity).
    @inlinable public var count: Int { Int(length) }
    /// The source was longer than capacity.
    @inlinable public var truncated: Bool { wasTruncated }

    @inlinable
    public init() {}

    /// For tables, e.g. `SmallBytes("get")`. ASCII letters are lowercased, like captured names.
    public init(_ s: StaticString) {
        self.init()
        s.withUTF8Buffer { append(lowercasing: UnsafeRawBufferPointer($0)) }
        if s.utf8CodeUnitCount > Self.capacity { wasTruncated = true }
    }

    /// Lowercases ASCII letters; truncates at capacity (and sets `truncated`).
    public init<C: Collection>(lowercasing source: C) where C.Element == UInt8 {
        self.init()
        for b in source {
            if length == Self.capacity {
                wasTruncated = true
                break
            }
            appendByte(asciiLower(b))
        }
    }

    public var bytes: [UInt8] {
        withUnsafeBytes(of: storage) { Array($0.prefix(Int(length))) }
    }

    public var description: String {
        String(decoding: bytes, as: UTF8.self) + (wasTruncated ? "..." : "")
    }

    /// True when the captured bytes equal `other` exactly (no lowercasing of `other`).
    public func equals<C: Collection>(_ other: C) -> Bool where C.Element == UInt8 {
        if wasTruncated || other.count != count { return false }
        return withUnsafeBytes(of: storage) { raw in
            var i = 0
            for b in other {
                if raw[i] != b { return false }
                i += 1
            }
            return true
        }
    }

    @inlinable
    mutating func appendByte(_ b: UInt8) {
        let i = Int(length)
        withUnsafeMutableBytes(of: &storage) { $0[i] = b }
        length &+= 1
    }

    /// Appends as many of `source`'s bytes as fit, lowercased (does not set `truncated`).
    @inlinable
    mutating func append(lowercasing source: UnsafeRawBufferPointer) {
        let start = Int(length)
        let n = min(source.count, Self.capacity - start)
        if n <= 0 { return }
        withUnsafeMutableBytes(of: &storage) { dst in
            for k in 0..<n {
                dst[start &+ k] = asciiLower(source[k])
            }
        }
        length &+= UInt8(truncatingIfNeeded: n)
    }

    @inlinable
    public static func == (a: SmallBytes, b: SmallBytes) -> Bool {
        a.length == b.length && a.wasTruncated == b.wasTruncated && a.storage.0 == b.storage.0
            && a.storage.1 == b.storage.1 && a.storage.2 == b.storage.2 && a.storage.3 == b.storage.3
    }

    /// A cheap, deterministic hash for fixed lookup tables on the hot path (Hasher is seeded and slower).
    @inlinable
    public var tableHash: UInt64 {
        var h = storage.0 &* 0x9E37_79B9_7F4A_7C15
        h ^= (storage.1 ^ (storage.2 &* 31) ^ (storage.3 &* 131) ^ UInt64(length)) &* 0xC2B2_AE3D_27D4_EB4F
        return h ^ (h >> 29)
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(length)
        hasher.combine(wasTruncated)
        hasher.combine(storage.0)
        hasher.combine(storage.1)
        hasher.combine(storage.2)
        hasher.combine(storage.3)
    }
}
