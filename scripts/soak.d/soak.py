#!/usr/bin/env python3
"""Soak driver for scripts/soak: many clients run a mixed workload through respool for a while, and every reply is
checked against a model of what Redis must answer. Each client owns its keys (prefix soak:<client>:), so the model
is exact: a reply that differs is a mismatch (a reply that reached the wrong client, a lost or reordered reply).

Scenarios, picked at random per step: pipelines of SET/GET/INCR (1 to 64 deep), MULTI/EXEC, WATCH then
MULTI/EXEC, BLPOP (served and timing out), SELECT isolation, pub/sub (a fresh subscriber gets exactly the messages
published after its confirmation, in order), and clients vanishing: mid-pipeline, mid-MULTI, mid-BLPOP,
mid-subscribe and mid-reply (after the first bytes of 256 KiB of replies).

With --chaos-every N a fault hits the redis-server every N seconds, the kinds of --faults in turn:
  kill      SIGKILL, then restarted on the same port (empty: no persistence)
  shutdown  SHUTDOWN NOSAVE (the server closes every connection cleanly), then restarted empty
  stop      SIGSTOP for --stop-seconds (longer than respool's timeouts), then SIGCONT
  slow      for --slow-seconds the server stalls 100 ms at a time (DEBUG SLEEP back to back)
Replies may then be respool's errors (`-ERR upstream ...`, a wait or command timeout): the client reconnects once
the fault is over and rebuilds its model; a wrong value is still a mismatch, unless the step overlapped a fault that
can lose or reorder writes (each such fault starts a new epoch; such steps are counted apart). A value written by
another client is never excused: every value written is "<client>-<seq>", and one of another client's values in a
reply counts as a reply that reached the wrong client, whatever happened. A reply that does not come within 15 s
is a hung client.

A monitor samples the server's CLIENT LIST (connections named <name>:...), respool's RSS and open descriptors, and
(with --stats-port) respool's upstream connection count throughout. After the run, once every client has closed,
respool must be back where it started: no client, lease, pin, waiter, subscriber or channel left in its /stats,
the same open descriptors apart from its upstream connections, and its RSS within a bound of its warm-up level.
Prints a summary; exit 0 when all of that held, else 1.
"""
import argparse
import json
import os
import re
import random
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time


class RespError:
    def __init__(self, text):
        self.text = text

    def __eq__(self, other):
        return isinstance(other, RespError) and other.text == self.text

    def __repr__(self):
        return f"-{self.text}"


# respool's own errors for an upstream that is down, stalled or lost (and for what a lost lease did to a client).
UPSTREAM_ERRORS = ("ERR upstream", "ERR respool: no upstream", "ERR respool: the connection was closed",
                   "ERR respool: command not queued", "EXECABORT")


def is_upstream_error(v):
    return isinstance(v, RespError) and v.text.startswith(UPSTREAM_ERRORS)


VALUE = re.compile(rb"^(\d+)-(\d+)$")


def foreign_values(v, me):
    """Values in a reply that another client wrote ("<client>-<seq>" with client != me)."""
    if isinstance(v, bytes):
        m = VALUE.match(v)
        return [v] if m and int(m.group(1)) != me else []
    if isinstance(v, list):
        return [x for e in v for x in foreign_values(e, me)]
    return []


class Conn:
    """A minimal RESP2 client on a raw socket: what it reads is exactly what respool sent."""

    def __init__(self, port, timeout=15):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.pos = 0

    def send(self, *commands):
        out = bytearray()
        for c in commands:
            out += b"*%d\r\n" % len(c)
            for a in c:
                a = a if isinstance(a, bytes) else str(a).encode()
                out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.s.sendall(out)

    def _fill(self):
        d = self.s.recv(1 << 16)
        if not d:
            raise ConnectionError("connection closed by respool")
        if self.pos > (1 << 16):
            del self.buf[:self.pos]
            self.pos = 0
        self.buf += d

    def _line(self):
        while True:
            i = self.buf.find(b"\r\n", self.pos)
            if i >= 0:
                line = bytes(self.buf[self.pos:i])
                self.pos = i + 2
                return line
            self._fill()

    def read(self):
        line = self._line()
        t, rest = line[:1], line[1:]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            return RespError(rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) - self.pos < n + 2:
                self._fill()
            v = bytes(self.buf[self.pos:self.pos + n])
            self.pos += n + 2
            return v
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise ValueError(f"unexpected reply {line[:80]!r}")

    def call(self, *args):
        self.send(args)
        return self.read()

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.steps = {}
        self.checked = 0
        self.mismatches = []
        self.mismatch_count = 0
        self.upstream_errors = 0
        self.lost_to_restart = 0
        self.resyncs = 0
        self.wrong_client = 0
        self.hung = 0
        self.vanished = {}

    def step(self, name, checked):
        with self.lock:
            self.steps[name] = self.steps.get(name, 0) + 1
            self.checked += checked

    def mismatch(self, text):
        with self.lock:
            self.mismatch_count += 1
            if len(self.mismatches) < 20:
                self.mismatches.append(text)


class Resync(Exception):
    pass


epoch = 0  # incremented by each fault that can lose or reorder writes
fault_over = threading.Event()   # clear while a fault is on (and a moment after): clients wait before rebuilding
fault_over.set()


class Worker(threading.Thread):
    def __init__(self, n, port, deadline, stats):
        super().__init__(daemon=True)
        self.n, self.port, self.deadline, self.stats = n, port, deadline, stats
        self.p = f"soak:{n}:"
        self.model = {}
        self.counter = 0
        self.seq = 0
        self.c = None
        self.step_epoch = 0
        self.model_epoch = -1
        self.big_written = False

    def key(self, i):
        return f"{self.p}k{i}"

    def expect(self, got, want, what):
        wrong = foreign_values(got, self.n)
        if wrong:
            with self.stats.lock:
                self.stats.wrong_client += 1
            self.stats.mismatch(f"client {self.n} {what}: REPLY OF ANOTHER CLIENT {wrong[:3]!r} (expected {want!r})")
            raise Resync()
        if got == want:
            return
        if is_upstream_error(got):
            with self.stats.lock:
                self.stats.upstream_errors += 1
            raise Resync()
        if epoch != self.step_epoch:
            with self.stats.lock:
                self.stats.lost_to_restart += 1
            raise Resync()
        self.stats.mismatch(f"client {self.n} {what}: expected {want!r}, got {got!r}")
        raise Resync()

    def resync(self):
        """After an upstream error or a restart: reconnect and rebuild the model from an empty key space."""
        with self.stats.lock:
            self.stats.resyncs += 1
        if self.c:
            self.c.close()
        self.c = None
        while time.monotonic() < self.deadline:
            fault_over.wait(timeout=max(0, self.deadline - time.monotonic()))
            self.model_epoch = epoch
            try:
                c = Conn(self.port)
                keys = [self.key(i) for i in range(100)] + [f"{self.p}ctr", f"{self.p}list", f"{self.p}big"]
                if isinstance(c.call("DEL", *keys), int) and c.call("PING") == "PONG":
                    self.c = c
                    self.model = {}
                    self.counter = 0
                    self.big_written = False
                    return
                c.close()
            except (OSError, ConnectionError, ValueError):
                pass
            time.sleep(0.1)

    def run(self):
        self.resync()
        steps = [(self.pipeline, 50), (self.multi, 10), (self.watch, 8), (self.blpop, 6), (self.select, 6),
                 (self.pubsub, 4), (self.vanish, 4)]
        names, weights = zip(*steps)
        while time.monotonic() < self.deadline:
            step = random.choices(names, weights)[0]
            self.step_epoch = epoch
            try:
                if self.c is None or self.model_epoch != self.step_epoch:
                    raise Resync()   # not connected, or a restart since the model was built emptied the server
                checked = step()
                self.stats.step(step.__name__, checked)
            except socket.timeout:
                with self.stats.lock:
                    self.stats.hung += 1
                self.stats.mismatch(f"client {self.n} {step.__name__}: no reply within 15 s")
                self.resync()
            except (Resync, OSError, ConnectionError):
                self.resync()
        if self.c:
            self.c.close()

    def value(self):
        self.seq += 1
        return f"{self.n}-{self.seq}".encode()

    def pipeline(self):
        cmds, wants = [], []
        for _ in range(random.randint(1, 64)):
            r = random.random()
            k = self.key(random.randrange(100))
            if r < 0.4:
                v = self.value()
                cmds.append(("SET", k, v))
                wants.append("OK")
                self.model[k] = v
            elif r < 0.8:
                cmds.append(("GET", k))
                wants.append(self.model.get(k))
            else:
                self.counter += 1
                cmds.append(("INCR", f"{self.p}ctr"))
                wants.append(self.counter)
        self.c.send(*cmds)
        for i, want in enumerate(wants):
            self.expect(self.c.read(), want, f"pipeline[{i}] {cmds[i][0]}")
        return len(wants)

    def multi(self):
        k, v = self.key(random.randrange(100)), self.value()
        self.c.send(("MULTI",), ("SET", k, v), ("INCR", f"{self.p}ctr"), ("GET", k), ("EXEC",))
        self.counter += 1
        self.model[k] = v
        for want, what in [("OK", "MULTI"), ("QUEUED", "SET"), ("QUEUED", "INCR"), ("QUEUED", "GET"),
                           (["OK", self.counter, v], "EXEC")]:
            self.expect(self.c.read(), want, f"transaction {what}")
        return 5

    def watch(self):
        k, v = self.key(random.randrange(100)), self.value()
        self.expect(self.c.call("WATCH", k), "OK", "WATCH")
        self.expect(self.c.call("GET", k), self.model.get(k), "GET under WATCH")
        self.c.send(("MULTI",), ("SET", k, v), ("EXEC",))
        self.model[k] = v
        for want, what in [("OK", "MULTI"), ("QUEUED", "SET"), (["OK"], "EXEC (nobody else touches the key)")]:
            self.expect(self.c.read(), want, what)
        return 5

    def blpop(self):
        lst, v = f"{self.p}list", self.value()
        self.expect(self.c.call("RPUSH", lst, v), 1, "RPUSH")
        self.expect(self.c.call("BLPOP", lst, "1"), [lst.encode(), v], "BLPOP served")
        self.expect(self.c.call("BLPOP", lst, "0.02"), None, "BLPOP timing out")
        return 3

    def select(self):
        k, v = f"{self.p}db1", self.value()
        self.c.send(("SELECT", "1"), ("SET", k, v), ("GET", k), ("SELECT", "0"), ("GET", k))
        for want, what in [("OK", "SELECT 1"), ("OK", "SET in db 1"), (v, "GET in db 1"), ("OK", "SELECT 0"),
                           (None, "GET of db 1's key in db 0")]:
            self.expect(self.c.read(), want, what)
        return 5

    def pubsub(self):
        ch = f"{self.p}ch".encode()
        sub = Conn(self.port)
        try:
            self.expect(sub.call("SUBSCRIBE", ch), [b"subscribe", ch, 1], "SUBSCRIBE")
            msgs = [self.value() for _ in range(random.randint(1, 20))]
            self.c.send(*[("PUBLISH", ch, m) for m in msgs])
            for m in msgs:
                got = self.c.read()
                # The server counts respool's one subscriber connection, whatever the number of clients.
                self.expect(got, 1, "PUBLISH receivers")
            for m in msgs:
                self.expect(sub.read(), [b"message", ch, m], "message after the confirmation")
            self.expect(sub.call("UNSUBSCRIBE", ch), [b"unsubscribe", ch, 0], "UNSUBSCRIBE")
        finally:
            sub.close()
        return 3 + 2 * len(msgs)

    def vanish(self):
        """A second connection of this client sends something and disappears before (or while) the reply comes."""
        how = random.choice(["pipeline", "multi", "blpop", "subscribe", "reply"])
        c = Conn(self.port)
        try:
            if how == "pipeline":
                c.send(*[("GET", self.key(random.randrange(100))) if i % 2 else ("PING",)
                         for i in range(random.randint(1, 40))])
            elif how == "multi":
                # Never executed: the key keeps its value (the model is not touched).
                c.send(("MULTI",), ("SET", self.key(random.randrange(100)), b"never-executed"), ("INCR", f"{self.p}ctr"))
            elif how == "blpop":
                c.send(("BLPOP", f"{self.p}vanish-list", "5"))
            elif how == "subscribe":
                c.send(("SUBSCRIBE", f"{self.p}vanish-ch"), ("PSUBSCRIBE", f"{self.p}vanish-*"))
            else:
                if not self.big_written:
                    self.expect(self.c.call("SET", f"{self.p}big", b"x" * 65536), "OK", "SET of the big value")
                    self.big_written = True
                c.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                c.send(*[("GET", f"{self.p}big")] * 4)
                c.s.recv(1000)   # the first bytes of the first reply
        finally:
            c.close()
        with self.stats.lock:
            self.stats.vanished[how] = self.stats.vanished.get(how, 0) + 1
        return 0


def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def running(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def open_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def respool_stats(port):
    """respool's /stats metrics (a fresh connection each time), or None."""
    if not port:
        return None
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /stats HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
        s.close()
        return json.loads(data.split(b"\r\n\r\n", 1)[1])["metrics"]
    except (OSError, ValueError, KeyError, IndexError):
        return None


def upstream_total(m):
    return sum(m["respool_upstream_connections"].values())


class Server:
    """The redis-server under test, and the faults done to it."""

    def __init__(self, a):
        self.a = a
        self.pid = a.redis_pid

    def write_pid(self):
        if self.a.redis_pid_file:
            with open(self.a.redis_pid_file, "w") as f:
                f.write(f"{self.pid}\n")

    def restart(self):
        time.sleep(0.3)
        self.pid = subprocess.Popen(shlex.split(self.a.redis_cmd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True).pid
        self.write_pid()
        for _ in range(100):
            try:
                Conn(self.a.redis_port, timeout=2).close()
                return
            except OSError:
                time.sleep(0.05)

    def fault(self, kind):
        global epoch
        fault_over.clear()
        try:
            if kind == "kill":
                os.kill(self.pid, signal.SIGKILL)
                epoch += 1
                self.restart()
            elif kind == "shutdown":
                try:
                    Conn(self.a.redis_port, timeout=5).call("SHUTDOWN", "NOSAVE")
                except (OSError, ConnectionError, ValueError):
                    pass   # the server closes the connection without a reply
                epoch += 1
                for _ in range(100):
                    if not os.path.exists(f"/proc/{self.pid}") or open(f"/proc/{self.pid}/stat").read().split()[2] == "Z":
                        break
                    time.sleep(0.05)
                self.restart()
            elif kind == "stop":
                os.kill(self.pid, signal.SIGSTOP)
                epoch += 1   # commands respool gave up on may still run once the server goes on
                time.sleep(self.a.stop_seconds)
                os.kill(self.pid, signal.SIGCONT)
            elif kind == "slow":
                c = Conn(self.a.redis_port, timeout=5)
                until = time.monotonic() + self.a.slow_seconds
                while time.monotonic() < until:
                    c.call("DEBUG", "SLEEP", "0.1")
                c.close()
            time.sleep(0.5)
        finally:
            fault_over.set()


def main():
    global epoch
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True, help="respool's port")
    ap.add_argument("--redis-port", type=int, required=True)
    ap.add_argument("--respool-pid", type=int, required=True)
    ap.add_argument("--stats-port", type=int, default=0, help="respool's stats endpoint (for the checks after the run)")
    ap.add_argument("--name", required=True, help="respool's RESPOOL_NAME (upstream connections are <name>:...)")
    ap.add_argument("--cap", type=int, required=True)
    ap.add_argument("--clients", type=int, default=40)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--chaos-every", type=float, default=0, help="a fault every N seconds (0 = none)")
    ap.add_argument("--faults", default="kill", help="fault kinds done in turn: kill, shutdown, stop, slow")
    ap.add_argument("--stop-seconds", type=float, default=3)
    ap.add_argument("--slow-seconds", type=float, default=2)
    ap.add_argument("--redis-cmd", default="", help="command line that starts redis-server (for --chaos-every)")
    ap.add_argument("--redis-pid", type=int, default=0)
    ap.add_argument("--redis-pid-file", default="", help="where the pid of a restarted redis-server is written")
    a = ap.parse_args()
    faults = [f for f in re.split(r"[ ,]+", a.faults) if f]
    for f in faults:
        if f not in ("kill", "shutdown", "stop", "slow"):
            ap.error(f"unknown fault {f}")

    # Where respool starts from: its descriptors without upstream connections, and its statistics.
    base_stats = respool_stats(a.stats_port)
    base_fds = open_fds(a.respool_pid)
    base_upstreams = upstream_total(base_stats) if base_stats else 0

    stats = Stats()
    start = time.monotonic()
    deadline = start + a.seconds
    workers = [Worker(n, a.port, deadline, stats) for n in range(a.clients)]
    for w in workers:
        w.start()

    # The faults run on their own thread, so the samples below go on while the server is down or stopped.
    server = Server(a)
    done = {}

    def chaos():
        while a.chaos_every > 0 and a.redis_cmd:
            time.sleep(a.chaos_every)
            if time.monotonic() > deadline - 3:
                return
            kind = faults[sum(done.values()) % len(faults)]
            server.fault(kind)
            done[kind] = done.get(kind, 0) + 1

    chaos_thread = threading.Thread(target=chaos, daemon=True)
    chaos_thread.start()
    max_conns, samples, rss, fds_max, respool_upstreams_max = 0, 0, [], 0, 0
    mon = None
    warm_rss = None
    died_at = None
    while time.monotonic() < deadline:
        if not running(a.respool_pid):
            died_at = time.monotonic() - start
            print(f"respool stopped running {died_at:.1f} s into the run", flush=True)
            for w in workers:
                w.deadline = time.monotonic()   # the clients stop too
            break
        try:
            if mon is None:
                mon = Conn(a.redis_port, timeout=5)
            listing = mon.call("CLIENT", "LIST")
            if isinstance(listing, bytes):
                n = sum(1 for line in listing.decode().splitlines() if f" name={a.name}:" in line)
                max_conns = max(max_conns, n)
                samples += 1
        except (OSError, ConnectionError, ValueError):
            mon = None
        r = rss_mib(a.respool_pid)
        if r is not None:
            rss.append(r)
            if warm_rss is None and time.monotonic() - start >= min(5, a.seconds / 4):
                warm_rss = r
        f = open_fds(a.respool_pid)
        if f is not None:
            fds_max = max(fds_max, f)
        m = respool_stats(a.stats_port)
        if m:
            respool_upstreams_max = max(respool_upstreams_max, upstream_total(m))
        time.sleep(0.2)
    chaos_thread.join(timeout=30)
    for w in workers:
        w.join(timeout=30)
    stuck = sum(1 for w in workers if w.is_alive())

    # Afterwards: wait (up to 20 s) for respool to be back where it started.
    leftovers = []
    end_fds = end_rss = None
    if base_stats is not None:
        until = time.monotonic() + 20
        while True:
            m = respool_stats(a.stats_port)
            end_fds, end_rss = open_fds(a.respool_pid), rss_mib(a.respool_pid)
            leftovers = []
            if m is None:
                leftovers.append("no /stats")
            else:
                ups = m["respool_upstream_connections"]
                for what, value in [("clients", m["respool_clients"]), ("leased connections", ups["leased"]),
                                    ("pinned connections", ups["pinned"]), ("waiters", m["respool_wait_queue_length"]),
                                    ("subscribers", m["respool_pubsub_subscribers"]),
                                    ("subscribed channels", m["respool_pubsub_channels"]),
                                    ("connections being opened", ups["connecting"])]:
                    if value:
                        leftovers.append(f"{what} {value}")
                extra = (end_fds or 0) - upstream_total(m) - (base_fds - base_upstreams)
                if extra:
                    leftovers.append(f"{extra} descriptors more than at the start (besides upstream connections)")
            if not leftovers or time.monotonic() > until:
                break
            time.sleep(0.2)

    print(f"soak: {a.clients} clients for {a.seconds:.0f} s through respool (cap {a.cap})"
          + (f", faults every {a.chaos_every:g} s: " + ", ".join(f"{k} {v}" for k, v in done.items()) if done else ""))
    print("steps: " + ", ".join(f"{k} {v:,}" for k, v in sorted(stats.steps.items())))
    print("clients vanished: " + ", ".join(f"mid-{k} {v:,}" for k, v in sorted(stats.vanished.items())))
    print(f"replies checked: {stats.checked:,}; mismatches: {stats.mismatch_count}; "
          f"replies of another client: {stats.wrong_client}; hung clients: {stats.hung}")
    for m in stats.mismatches:
        print(f"  MISMATCH {m}")
    print(f"upstream errors (respool's, while the server was down or stalled): {stats.upstream_errors}; "
          f"steps that overlapped a fault that lost or reordered writes: {stats.lost_to_restart}; resyncs: {stats.resyncs}")
    print(f"upstream connections named {a.name}:* on the server: max {max_conns} in {samples} CLIENT LIST samples; "
          f"respool's own count: max {respool_upstreams_max} (cap {a.cap})")
    if rss:
        print(f"respool RSS: first {rss[0]:.1f} MiB, after warm-up {warm_rss or rss[-1]:.1f} MiB, max {max(rss):.1f} MiB, "
              f"at the end {end_rss or rss[-1]:.1f} MiB")
    if base_fds is not None:
        print(f"respool descriptors: {base_fds} at the start ({base_upstreams} upstream), max {fds_max}, "
              f"{end_fds} at the end")
    if base_stats is not None:
        print("left over in respool after every client closed: " + (", ".join(leftovers) or "nothing"))
    if stuck:
        print(f"clients still running 30 s after the deadline: {stuck}")
    # Under AddressSanitizer freed memory sits in its quarantine (256 MiB by default): RSS says nothing there.
    rss_ok = (os.environ.get("SOAK_RSS_CHECK", "1") == "0" or not rss or warm_rss is None
              or (end_rss or rss[-1]) <= warm_rss * 1.5 + 16)
    if not rss_ok:
        print("respool's RSS did not come back near its warm-up level")
    errors_ok = done or stats.upstream_errors == 0
    ok = (died_at is None and stats.mismatch_count == 0 and max_conns <= a.cap and respool_upstreams_max <= a.cap and stuck == 0
          and samples > 0 and not leftovers and rss_ok and errors_ok)
    print("result: " + ("ok" if ok else "FAILED"))
    sys.stdout.flush()
    os._exit(0 if ok else 1)


if __name__ == "__main__":
    main()
