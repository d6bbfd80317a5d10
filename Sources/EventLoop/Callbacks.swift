// Callbacks: the only place where C callbacks meet Swift objects (Unmanaged rules live here).
//
// Persistent events pass their handler unretained: the owner (a registry in the proxy) keeps the handler alive until
// the event is freed, and every handler checks "already closed?" first. Nothing else in the project uses Unmanaged
// for libevent callbacks.
internal import CLibevent

/// Receives libevent events. Subclassed by the proxy's connections, timers and signal handlers.
open class EventHandler {
    public init() {}
    /// `what` holds EV_READ / EV_WRITE / EV_TIMEOUT / EV_SIGNAL bits; `tag` distinguishes several events of one handler.
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

    /// A new event on `fd` (-1 for pure timers) calling `handler.handleEvent(what, tag:)`.
    /// `tag` is packed into the callback by using one C trampoline per tag.
    public init(base: EventBase, fd: Int32, what: Int16, handler: EventHandler, tag: EventTag) throws(SystemError) {
        let arg = Unmanaged.passUnretained(handler).toOpaque()
        let ev: OpaquePointer?
        switch tag {
        case .primary:
            ev = event_new(base.raw, fd, what, { _, what, arg in
                Unmanaged<EventHandler>.fromOpaque(arg!)._withUnsafeGuaranteedRef { $0.handleEvent(what, tag: 0) }
            }, arg)
        case .secondary:
            ev = event_new(base.raw, fd, what, { _, what, arg in
                Unmanaged<EventHandler>.fromOpaque(arg!)._withUnsafeGuaranteedRef { $0.handleEvent(what, tag: 1) }
            }, arg)
        case .tertiary:
            ev = event_new(base.raw, fd, what, { _, what, arg in
                Unmanaged<EventHandler>.fromOpaque(arg!)._withUnsafeGuaranteedRef { $0.handleEvent(what, tag: 2) }
            }, arg)
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

public enum EventTag: Int {
    case primary = 0, secondary = 1, tertiary = 2
}

/// A timer calling a handler once or repeatedly.
public struct Timer {
    public private(set) var event: IOEvent

    public init(base: EventBase, handler: EventHandler, tag: EventTag = .primary, repeating: Bool = false) throws(SystemError) {
        event = try IOEvent(base: base, fd: -1, what: repeating ? IOEvent.persist : 0, handler: handler, tag: tag)
    }

    public func schedule(after seconds: Double) { event.add(timeout: seconds) }
    public func cancel() { event.remove() }
    public var isScheduled: Bool { event.isPending }
    public mutating func free() { event.free() }
}

/// A persistent signal event.
public struct SignalWatch {
    public private(set) var event: IOEvent
    public init(base: EventBase, signal: Int32, handler: EventHandler, tag: EventTag) throws(SystemError) {
        event = try IOEvent(base: base, fd: signal, what: IOEvent.signal | IOEvent.persist, handler: handler, tag: tag)
        event.add()
    }
    public mutating func free() { event.free() }
}
