// Callbacks: the only place where C callbacks meet Swift objects (Unmanaged rules live here).
//
// Persistent events pass their handler unretained: the owner (a registry in the proxy) keeps the handler alive until
// the event is freed, and every handler checks "already closed?" first. Nothing else in the project uses Unmanaged
// for libevent callbacks.
internal import CLibevent

/// Receives libevent events. Subclassed by the proxy's connections, timers and signal handlers.
open class EventHandler {
    public init() {}
    /// `what` holds EV_READ / EV_WRITE / EV_TIMEOUT / EV_SIGNAL bits; `tag` is the raw value of the tag the event was
    /// made with (each handler names its events with an enum of Int raw values 0, 1 and 2).
    open func handleEvent(_ what: Int16, tag: Int) {}
}

/// One libevent `event`. Value type; the owner frees it exactly once.
public struct IOEvent {
    public private(set) var raw: OpaquePointer?

    /// Events allocated and not yet freed, process-wide (the loop is single-threaded). A gauge for leaks: with no
    /// clients it returns to the same value however many came and went.
    nonisolated(unsafe) public private(set) static var live = 0

    public static let read: Int16 = respool_ev_read()
    public static let write: Int16 = respool_ev_write()
    public static let persist: Int16 = respool_ev_persist()
    public static let signal: Int16 = respool_ev_signal()
    public static let timeout: Int16 = respool_ev_timeout()

    public init() { raw = nil }

    /// A new event on `fd` (-1 for pure timers) calling `handler.handleEvent(what, tag:)` with `tag.rawValue`
    /// (0, 1 or 2: it is packed into the callback by using one C trampoline per value).
    public init<Tag: RawRepresentable>(base: EventBase, fd: Int32, what: Int16, handler: EventHandler, tag: Tag) throws(SystemError)
        where Tag.RawValue == Int {
        let arg = Unmanaged.passUnretained(handler).toOpaque()
        let ev: OpaquePointer?
        switch tag.rawValue {
        case 0:
            ev = event_new(base.raw, fd, what, { _, what, arg in
                Unmanaged<EventHandler>.fromOpaque(arg!)._withUnsafeGuaranteedRef { $0.handleEvent(what, tag: 0) }
            }, arg)
        case 1:
            ev = event_new(base.raw, fd, what, { _, what, arg in
                Unmanaged<EventHandler>.fromOpaque(arg!)._withUnsafeGuaranteedRef { $0.handleEvent(what, tag: 1) }
            }, arg)
        case 2:
            ev = event_new(base.raw, fd, what, { _, what, arg in
                Unmanaged<EventHandler>.fromOpaque(arg!)._withUnsafeGuaranteedRef { $0.handleEvent(what, tag: 2) }
            }, arg)
        default:
            preconditionFailure("event tag \(tag.rawValue) is not 0, 1 or 2")
        }
        guard let ev else { throw SystemError("event_new", errno: 0) }
        raw = ev
        IOEvent.live += 1
    }

    public var isValid: Bool { raw != nil }

    @inline(__always)
    public func add() { if let raw { event_add(raw, nil) } }

    public func add(timeout seconds: Double) {
        guard let raw else { return }
        var tv = timevalFrom(seconds: seconds)
        event_add(raw, &tv)
    }

    @inline(__always)
    public func remove() { if let raw { event_del(raw) } }

    public var isPending: Bool {
        guard let raw else { return false }
        return event_pending(raw, IOEvent.read | IOEvent.write | IOEvent.timeout | IOEvent.signal, nil) != 0
    }

    /// Frees the event (deleting it first). Safe to call twice.
    public mutating func free() {
        if let raw {
            event_free(raw)
            IOEvent.live -= 1
        }
        raw = nil
    }
}

/// The tag of a handler that has one kind of event.
public enum SingleEvent: Int { case fired }

/// A timer calling a handler once or repeatedly.
public struct Timer {
    public private(set) var event: IOEvent

    public init<Tag: RawRepresentable>(base: EventBase, handler: EventHandler, tag: Tag, repeating: Bool = false) throws(SystemError)
        where Tag.RawValue == Int {
        event = try IOEvent(base: base, fd: -1, what: repeating ? IOEvent.persist : 0, handler: handler, tag: tag)
    }

    /// A timer of a handler that has no other events (its tag is `SingleEvent.fired`).
    public init(base: EventBase, handler: EventHandler, repeating: Bool = false) throws(SystemError) {
        try self.init(base: base, handler: handler, tag: SingleEvent.fired, repeating: repeating)
    }

    public func schedule(after seconds: Double) { event.add(timeout: seconds) }
    public func cancel() { event.remove() }
    public var isScheduled: Bool { event.isPending }
    public mutating func free() { event.free() }
}

/// A persistent signal event.
public struct SignalWatch {
    public private(set) var event: IOEvent
    public init<Tag: RawRepresentable>(base: EventBase, signal: Int32, handler: EventHandler, tag: Tag) throws(SystemError)
        where Tag.RawValue == Int {
        event = try IOEvent(base: base, fd: signal, what: IOEvent.signal | IOEvent.persist, handler: handler, tag: tag)
        event.add()
    }
    public mutating func free() { event.free() }
}
