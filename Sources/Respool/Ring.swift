// Ring: a growable FIFO in raw pointer storage (no uniqueness checks, no ARC traffic for its elements): the reply FIFO
// of each upstream connection and the proxy's per-iteration work lists.

struct Ring<Element> {
    private var storage: UnsafeMutablePointer<Element>
    private var capacity: Int
    private var head = 0
    private(set) var count = 0

    init(capacity: Int = 16) {
        self.capacity = max(4, capacity)
        storage = .allocate(capacity: self.capacity)
    }

    /// Must be called once by the owner (deinit of the owning class).
    mutating func deallocate() {
        removeAll()
        storage.deallocate()
        capacity = 0
    }

    @inline(__always) var isEmpty: Bool { count == 0 }

    @inline(__always)
    mutating func append(_ e: Element) {
        if count == capacity { grow() }
        var i = head + count
        if i >= capacity { i -= capacity }
        (storage + i).initialize(to: e)
        count += 1
    }

    @inline(__always)
    mutating func popFirst() -> Element? {
        guard count > 0 else { return nil }
        let e = (storage + head).move()
        head += 1
        if head == capacity { head = 0 }
        count -= 1
        return e
    }

    @inline(__always)
    var first: Element? { count > 0 ? storage[head] : nil }

    mutating func removeAll() {
        while popFirst() != nil {}
        head = 0
    }

    private mutating func grow() {
        let newCap = capacity * 2
        let new = UnsafeMutablePointer<Element>.allocate(capacity: newCap)
        for k in 0..<count {
            var i = head + k
            if i >= capacity { i -= capacity }
            (new + k).moveInitialize(from: storage + i, count: 1)
        }
        storage.deallocate()
        storage = new
        capacity = newCap
        head = 0
    }
}
