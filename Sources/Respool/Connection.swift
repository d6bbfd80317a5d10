// Connection: what client and upstream connections share: the socket, its read/write events, the output chain and
// the once-per-iteration flush (a written-to connection is marked dirty and written once after the loop iteration;
// EV_WRITE is armed only after a short write).
import EventLoop
import Glibc

class Connection: EventHandler {
    /// The events of a connection: its socket's read and write readiness, and its timer (an upstream's connect).
    enum Event: Int { case readable, writable, timer }

    let proxy: Proxy
    var fd: Int32
    var readEvent = IOEvent()
    var writeEvent = IOEvent()
    let out = ByteChain()
    var isDirty = false
    var writeArmed = false
    var isClosed = false
    var readEnabled = false
    /// Set on a TLS upstream connection once its TCP connect is done: reads and writes go through it.
    var tls: TLSSession?
    /// Set by upstream connections (for the byte counters' direction).
    var isUpstream: Bool { false }

    init(proxy: Proxy, fd: Int32) {
        self.proxy = proxy
        self.fd = fd
        super.init()
    }

    deinit { out.free() }

    /// Creates the persistent read event. The write event is created on the first short write (most client
    /// connections never need one: memory per idle client matters with thousands of them).
    func setUpEvents(read: Bool) throws(SystemError) {
        readEvent = try IOEvent(base: proxy.base, fd: fd, what: IOEvent.read | IOEvent.persist, handler: self, tag: Event.readable)
        if read { enableReading() }
    }

    /// Arms EV_WRITE (creating the event the first time).
    final func armWrite() {
        if writeArmed || isClosed { return }
        if !writeEvent.isValid {
            do {
                writeEvent = try IOEvent(base: proxy.base, fd: fd, what: IOEvent.write | IOEvent.persist, handler: self, tag: Event.writable)
            } catch {
                writeFailed(error)
                return
            }
        }
        writeArmed = true
        writeEvent.add()
    }

    /// Stops waiting for writability (if it was armed).
    final func disarmWrite() {
        if writeArmed {
            writeArmed = false
            writeEvent.remove()
        }
    }

    @inline(__always)
    final func enableReading() {
        if !readEnabled && !isClosed {
            readEnabled = true
            readEvent.add()
        }
    }

    @inline(__always)
    final func disableReading() {
        if readEnabled {
            readEnabled = false
            readEvent.remove()
        }
    }

    @inline(__always)
    final func markDirty() {
        if !isDirty {
            isDirty = true
            proxy.dirty.append(Unmanaged.passUnretained(self))
        }
    }

    override func handleEvent(_ what: Int16, tag: Int) {
        if isClosed { return }
        switch Event(rawValue: tag) {
        case .readable?: readable()
        case .writable?: writable()
        case .timer?, nil: timerFired()
        }
    }

    func readable() {}
    func timerFired() {}

    func writable() {
        flush()
    }

    /// Whether output may be written now (an upstream still connecting may not).
    var canWrite: Bool { true }

    /// Writes pending output; arms EV_WRITE after a short write, disarms it once drained.
    final func flush() {
        isDirty = false
        if isClosed || !canWrite { return }
        if !out.isEmpty {
            switch tls == nil ? out.write(to: fd) : tls!.write(out) {
            case .success(let n):
                proxy.noteWritten(self, n)
            case .failure(let e):
                writeFailed(e)
                return
            }
        }
        if out.isEmpty {
            disarmWrite()
            drained()
        } else if tls?.writeWantsRead != true {
            // (A TLS write waiting for a read is retried after the next read, not on writability.)
            armWrite()
        }
    }

    /// All output was written.
    func drained() {}
    func writeFailed(_ error: SystemError) {}

    /// Frees the events and closes the socket (once).
    final func closeSocket() {
        tls?.free()
        tls = nil
        readEvent.free()
        writeEvent.free()
        readEnabled = false
        writeArmed = false
        if fd >= 0 {
            Socket.close(fd)
            fd = -1
        }
    }
}
