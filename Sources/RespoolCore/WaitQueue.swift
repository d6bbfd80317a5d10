// WaitQueue: a FIFO of waiting clients keyed by client id, with O(1) append, removal from anywhere and lookup.
// The pool's waiters live here: a client that goes away while waiting is removed without a scan, and the others keep
// their order.

public struct WaitQueue<Value> {
    private struct Node {
        var value: Value
        var prev: Int?
        var next: Int?
    }

    private var nodes: [Int: Node] = [:]
    public private(set) var first: Int?
    private var last: Int?

    public init() {}

    public var count: Int { nodes.count }
    public var isEmpty: Bool { nodes.isEmpty }

    public func contains(_ id: Int) -> Bool { nodes[id] != nil }

    public subscript(id: Int) -> Value? { nodes[id]?.value }

    /// Appends `id` at the tail (an id already waiting keeps its place and takes the new value).
    public mutating func append(_ id: Int, _ value: Value) {
        if nodes[id] != nil {
            nodes[id]!.value = value
            return
        }
        nodes[id] = Node(value: value, prev: last, next: nil)
        if let l = last { nodes[l]!.next = id } else { first = id }
        last = id
    }

    /// Removes `id` wherever it is; returns its value, nil when it was not waiting.
    @discardableResult
    public mutating func remove(_ id: Int) -> Value? {
        guard let node = nodes.removeValue(forKey: id) else { return nil }
        if let p = node.prev { nodes[p]!.next = node.next } else { first = node.next }
        if let n = node.next { nodes[n]!.prev = node.prev } else { last = node.prev }
        return node.value
    }

    /// The id after `id` in the queue.
    public func next(after id: Int) -> Int? { nodes[id]?.next }

    /// Ids and values in queue order (a copy: safe to change the queue while iterating it).
    public var ordered: [(id: Int, value: Value)] {
        var out: [(id: Int, value: Value)] = []
        out.reserveCapacity(nodes.count)
        var cursor = first
        while let id = cursor, let node = nodes[id] {
            out.append((id, node.value))
            cursor = node.next
        }
        return out
    }
}

extension WaitQueue: @unchecked Sendable where Value: Sendable {}
