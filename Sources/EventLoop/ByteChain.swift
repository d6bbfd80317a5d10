// ByteChain: an evbuffer (a chain of byte blocks) that bytes are appended to, moved between and written from
// without copying them out.
internal import CLibevent
import Glibc

public struct ByteChain {
    public let raw: OpaquePointer

    public init() {
        guard let b = evbuffer_new() else { fatalError("evbuffer_new failed: out of memory") }
        raw = b
    }

    public func free() { evbuffer_free(raw) }

    @inline(__always) public var count: Int { evbuffer_get_length(raw) }
    @inline(__always) public var isEmpty: Bool { evbuffer_get_length(raw) == 0 }

    @inline(__always)
    public func append(_ p: UnsafeRawPointer, count: Int) {
        if count > 0 { evbuffer_add(raw, p, count) }
    }

    public func append(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { append($0.baseAddress!, count: $0.count) }
    }

    public func append(_ s: StaticString) {
        append(UnsafeRawPointer(s.utf8Start), count: s.utf8CodeUnitCount)
    }

    /// Moves every byte of `other` to the end of this chain (blocks are relinked, not copied).
    @inline(__always)
    public func appendAll(of other: ByteChain) { evbuffer_add_buffer(raw, other.raw) }

    /// Moves the first `count` bytes of `other` to the end of this chain.
    public func append(first count: Int, of other: ByteChain) {
        _ = evbuffer_remove_buffer(other.raw, raw, count)
    }

    /// The first byte (0 when empty).
    public var firstByte: UInt8 {
        var b: UInt8 = 0
        _ = evbuffer_copyout(raw, &b, 1)
        return b
    }

    /// The byte at `i` (which must be below `count`), copied out of the chain.
    public func byte(at i: Int) -> UInt8 {
        var bytes = [UInt8](repeating: 0, count: i + 1)
        _ = evbuffer_copyout(raw, &bytes, i + 1)
        return bytes[i]
    }

    public func drain(_ count: Int) { evbuffer_drain(raw, count) }
    public func removeAll() { evbuffer_drain(raw, evbuffer_get_length(raw)) }

    /// Copies the content out (rare paths only).
    public func copyBytes() -> [UInt8] {
        let n = count
        if n == 0 { return [] }
        return [UInt8](unsafeUninitializedCapacity: n) { buf, initialized in
            initialized = Int(evbuffer_copyout(raw, buf.baseAddress, n))
        }
    }

    /// Writes as much as the socket takes. Returns bytes written, 0 when the socket is full, or a SystemError.
    @inline(__always)
    public func write(to fd: Int32) -> Result<Int, SystemError> {
        let n = evbuffer_write(raw, fd)
        if n >= 0 { return .success(Int(n)) }
        let e = respool_errno()
        if respool_is_again(e) != 0 { return .success(0) }
        return .failure(SystemError("write", errno: e))
    }
}

/// A ByteChain created on first use: most client connections never hold a partial request.
public struct LazyByteChain {
    public private(set) var chain: ByteChain?

    public init() {}

    @inline(__always) public var count: Int { chain?.count ?? 0 }

    @inline(__always)
    public mutating func append(_ p: UnsafeRawPointer, count: Int) {
        if count <= 0 { return }
        if chain == nil { chain = ByteChain() }
        chain!.append(p, count: count)
    }

    public func copyBytes() -> [UInt8] { chain?.copyBytes() ?? [] }
    public func removeAll() { chain?.removeAll() }

    /// Frees the chain (when the owner goes away).
    public mutating func free() {
        chain?.free()
        chain = nil
    }
}

extension ByteChain {
    /// Moves every byte of a lazily created chain here.
    @inline(__always)
    public func appendAll(of other: LazyByteChain) {
        if let c = other.chain { appendAll(of: c) }
    }
}
