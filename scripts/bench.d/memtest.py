#!/usr/bin/env python3
"""Memory of a proxy under many idle client connections (used by scripts/bench; stdlib only).

For one proxy process (PID, listening on 127.0.0.1:PORT) it reads VmRSS from /proc/PID/status
  start  - before anything connects
  idle   - with N client connections open and idle (connected in batches; it waits until the proxy
           has accepted them all, by counting /proc/PID/fd)
  burst  - after each of those N connections sent one GET and read its reply
  closed - after all of them were closed and the proxy let go of their descriptors
and prints one tab-separated line:
  mem TARGET start_kb idle_kb burst_kb peak_kb closed_kb connected replies errors
(peak_kb is VmHWM, the high-water mark, read right after the burst). Everything is bounded in time.
"""
import argparse
import errno
import os
import resource
import selectors
import socket
import sys
import time


def status_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def wait_fds(pid, predicate, timeout):
    deadline = time.monotonic() + timeout
    n = fd_count(pid)
    while not predicate(n) and time.monotonic() < deadline:
        time.sleep(0.05)
        n = fd_count(pid)
    return n


def reply_complete(buf):
    """True when buf holds one whole RESP reply (simple types, or a bulk string)."""
    end = buf.find(b"\r\n")
    if end < 0:
        return False
    if buf[:1] == b"$":
        n = int(buf[1:end])
        return n < 0 or len(buf) >= end + 2 + n + 2
    if buf[:1] == b"*":  # not expected for GET; accept the header as enough
        return True
    return True


def connect_all(port, n, batch, timeout, log):
    socks, errors = [], 0
    sel = selectors.DefaultSelector()
    deadline = time.monotonic() + timeout
    while len(socks) + errors < n and time.monotonic() < deadline:
        pending = []
        for _ in range(min(batch, n - len(socks) - errors)):
            try:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            except OSError as e:
                log(f"socket(): {e}")
                return socks, errors + (n - len(socks) - errors)
            s.setblocking(False)
            rc = s.connect_ex(("127.0.0.1", port))
            if rc not in (0, errno.EINPROGRESS):
                errors += 1
                s.close()
                continue
            pending.append(s)
            sel.register(s, selectors.EVENT_WRITE)
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1.0):
                s = key.fileobj
                sel.unregister(s)
                pending.remove(s)
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    socks.append(s)
                else:
                    errors += 1
                    s.close()
        for s in pending:  # timed out
            sel.unregister(s)
            s.close()
            errors += 1
    sel.close()
    return socks, errors


def burst(socks, key, timeout):
    """Each socket sends one GET and reads its reply. Returns (replies, errors)."""
    req = b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key)
    sel = selectors.DefaultSelector()
    bufs = {}
    errors = 0
    for s in socks:
        try:
            s.send(req)  # 30-odd bytes into an empty socket buffer: never partial
            bufs[s] = b""
            sel.register(s, selectors.EVENT_READ)
        except OSError:
            errors += 1
    replies = 0
    deadline = time.monotonic() + timeout
    while bufs and time.monotonic() < deadline:
        for k, _ in sel.select(timeout=1.0):
            s = k.fileobj
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                errors += 1
                sel.unregister(s)
                del bufs[s]
                continue
            bufs[s] += data
            if reply_complete(bufs[s]):
                if bufs[s][:1] == b"-":
                    errors += 1
                else:
                    replies += 1
                sel.unregister(s)
                del bufs[s]
    errors += len(bufs)  # no reply in time
    sel.close()
    return replies, errors


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--key", default="respool:bench:mem")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds for each phase")
    a = ap.parse_args()

    def log(msg):
        print(f"memtest[{a.target}]: {msg}", file=sys.stderr)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = a.conns + 64
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
        except (ValueError, OSError):
            pass
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft < want:
            log(f"open-files limit {soft} < {want}: some connections will fail")

    pid = a.pid
    start = status_kb(pid, "VmRSS")
    base_fds = fd_count(pid)

    socks, errors = connect_all(a.port, a.conns, a.batch, a.timeout, log)
    connected = len(socks)
    fds = wait_fds(pid, lambda n: n >= base_fds + connected, a.timeout)
    if fds < base_fds + connected:
        log(f"proxy holds {fds - base_fds} new descriptors for {connected} connections after {a.timeout:.0f} s")
    time.sleep(0.2)
    idle = status_kb(pid, "VmRSS")

    replies, burst_errors = burst(socks, a.key.encode(), a.timeout)
    burst_rss = status_kb(pid, "VmRSS")
    peak = status_kb(pid, "VmHWM")

    for s in socks:
        s.close()
    wait_fds(pid, lambda n: n <= base_fds + max(8, connected // 100), min(a.timeout, 15.0))
    time.sleep(0.3)
    closed = status_kb(pid, "VmRSS")

    if errors or burst_errors:
        log(f"{errors} connect errors, {burst_errors} GETs without a good reply")
    print("\t".join(str(x) for x in (
        "mem", a.target, start, idle, burst_rss, peak, closed, connected, replies, errors + burst_errors)))


if __name__ == "__main__":
    main()
