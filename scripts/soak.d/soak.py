#!/usr/bin/env python3
"""Soak driver for scripts/soak: many clients run a mixed workload through respool for a while, and every reply is
checked against a model of what Redis must answer. Each client owns its keys (prefix soak:<client>:), so the model
is exact: a reply that differs is a mismatch (a reply that reached the wrong client, a lost or reordered reply).

Scenarios, picked at random per step: pipelines of SET/GET/INCR (1 to 64 deep), MULTI/EXEC, WATCH then
MULTI/EXEC, BLPOP (served and timing out), SELECT isolation, pub/sub (a fresh subscriber gets exactly the messages
published after its confirmation, in order), and connections abandoned with commands in flight.

With --chaos-every N the redis-server is killed (SIGKILL) and restarted every N seconds: replies then may be
respool's `-ERR upstream ...` errors, and the model is rebuilt; a wrong value is still a mismatch, unless the data
was lost by that restart while the step ran (each restart starts a new epoch; such a step is counted apart).

A monitor samples the server's CLIENT LIST (connections named <name>:...) and respool's RSS throughout.
Prints a summary; exit 0 when there was no mismatch and the cap held, else 1.
"""
import argparse
import os
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


def is_upstream_error(v):
    return isinstance(v, RespError) and (v.text.startswith("ERR upstream") or v.text.startswith("ERR respool: no upstream"))


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


epoch = 0  # incremented by each chaos restart


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

    def key(self, i):
        return f"{self.p}k{i}"

    def expect(self, got, want, what):
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
            self.model_epoch = epoch
            try:
                c = Conn(self.port)
                keys = [self.key(i) for i in range(100)] + [f"{self.p}ctr", f"{self.p}list"]
                if isinstance(c.call("DEL", *keys), int) and c.call("PING") == "PONG":
                    self.c = c
                    self.model = {}
                    self.counter = 0
                    return
                c.close()
            except (OSError, ConnectionError, ValueError):
                pass
            time.sleep(0.1)

    def run(self):
        self.resync()
        steps = [(self.pipeline, 50), (self.multi, 10), (self.watch, 8), (self.blpop, 6), (self.select, 6),
                 (self.pubsub, 4), (self.abandon, 3)]
        names, weights = zip(*steps)
        while time.monotonic() < self.deadline:
            step = random.choices(names, weights)[0]
            self.step_epoch = epoch
            try:
                if self.c is None or self.model_epoch != self.step_epoch:
                    raise Resync()   # not connected, or a restart since the model was built emptied the server
                checked = step()
                self.stats.step(step.__name__, checked)
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

    def abandon(self):
        c = Conn(self.port)
        c.send(*[("GET", self.key(random.randrange(100))) if i % 2 else ("PING",) for i in range(random.randint(1, 40))])
        c.close()
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


def main():
    global epoch
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True, help="respool's port")
    ap.add_argument("--redis-port", type=int, required=True)
    ap.add_argument("--respool-pid", type=int, required=True)
    ap.add_argument("--name", required=True, help="respool's RESPOOL_NAME (upstream connections are <name>:...)")
    ap.add_argument("--cap", type=int, required=True)
    ap.add_argument("--clients", type=int, default=40)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--chaos-every", type=float, default=0, help="kill and restart redis-server every N seconds")
    ap.add_argument("--redis-cmd", default="", help="command line that starts redis-server (for --chaos-every)")
    ap.add_argument("--redis-pid", type=int, default=0)
    ap.add_argument("--redis-pid-file", default="", help="where the pid of a restarted redis-server is written")
    a = ap.parse_args()

    stats = Stats()
    start = time.monotonic()
    deadline = start + a.seconds
    workers = [Worker(n, a.port, deadline, stats) for n in range(a.clients)]
    for w in workers:
        w.start()

    max_conns, samples, rss = 0, 0, []
    redis_pid = a.redis_pid
    next_chaos = start + a.chaos_every if a.chaos_every > 0 else float("inf")
    restarts = 0
    mon = None
    while time.monotonic() < deadline:
        if time.monotonic() >= next_chaos and a.redis_cmd:
            os.kill(redis_pid, signal.SIGKILL)
            epoch += 1
            time.sleep(0.3)
            redis_pid = subprocess.Popen(shlex.split(a.redis_cmd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True).pid
            if a.redis_pid_file:
                with open(a.redis_pid_file, "w") as f:
                    f.write(f"{redis_pid}\n")
            restarts += 1
            next_chaos += a.chaos_every
            mon = None
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
        time.sleep(0.2)
    for w in workers:
        w.join(timeout=30)
    stuck = sum(1 for w in workers if w.is_alive())

    print(f"soak: {a.clients} clients for {a.seconds:.0f} s through respool (cap {a.cap})"
          + (f", redis-server killed and restarted every {a.chaos_every:.0f} s ({restarts} restarts)" if restarts else ""))
    print("steps: " + ", ".join(f"{k} {v:,}" for k, v in sorted(stats.steps.items())))
    print(f"replies checked: {stats.checked:,}; mismatches: {stats.mismatch_count}")
    for m in stats.mismatches:
        print(f"  MISMATCH {m}")
    if restarts or stats.upstream_errors:
        print(f"upstream errors (expected while the server restarts): {stats.upstream_errors}; "
              f"steps whose data a restart lost: {stats.lost_to_restart}; resyncs: {stats.resyncs}")
    print(f"upstream connections named {a.name}:* on the server: max {max_conns} in {samples} CLIENT LIST samples "
          f"(cap {a.cap})")
    if rss:
        print(f"respool RSS: first {rss[0]:.1f} MiB, max {max(rss):.1f} MiB, last {rss[-1]:.1f} MiB")
    if stuck:
        print(f"clients still running 30 s after the deadline: {stuck}")
    ok = stats.mismatch_count == 0 and max_conns <= a.cap and stuck == 0 and samples > 0
    print("result: " + ("ok" if ok else "FAILED"))
    sys.stdout.flush()
    os._exit(0 if ok else 1)


if __name__ == "__main__":
    main()
