#!/usr/bin/env python3
"""Connection-level fuzzer: random command mixes through a live respool, compared with the same commands sent
directly to the same redis-server.

Each client owns a key space and has a twin: the client talks to respool with keys under "cfA<n>:", its twin talks
to redis-server directly with keys under "cfB<n>:" (the same length, so lengths in replies agree). Both send the same
random sequence of pipelines (split into random chunks, sometimes a byte at a time), over every route respool has:
forwarded commands (strings, lists, hashes, sets, sorted sets, MGET/MSET, errors of arity and type, unknown
commands), local ones (PING, ECHO, SELECT, CLIENT SETNAME/GETNAME, RESET), leased ones (MULTI/EXEC/DISCARD,
WATCH/UNWATCH, BLPOP served and timing out), pub/sub (SUBSCRIBE, PSUBSCRIBE, PUBLISH, UNSUBSCRIBE, PING and refused
commands while subscribed), KEYS (compared as a set), RESP2 or RESP3 (HELLO at the start), and finally, for some
clients, invalid bytes (a protocol error, then the connection closes). Every reply from respool must equal the
twin's reply byte for byte (after renaming the key space; KEYS sorted), including protocol errors and the close.
A monitor checks the server's CLIENT LIST for the cap. Exit 0 when every reply agreed, no client waited 10 s for a
reply, respool is still running and the cap held.
"""
import argparse
import os
import random
import socket
import sys
import threading
import time

READ_TIMEOUT = 40


class Wire:
    """A raw connection that returns each reply as the exact bytes received."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, data, rng=None):
        if rng is None or rng.random() < 0.5:
            self.s.sendall(data)
            return
        i = 0
        bytewise = rng.random() < 0.1 and len(data) < 400
        while i < len(data):
            n = 1 if bytewise else rng.randint(1, max(1, len(data) // 3))
            self.s.sendall(data[i:i + n])
            i += n
            if rng.random() < 0.2:
                time.sleep(0.001)

    def _fill(self):
        d = self.s.recv(65536)
        if not d:
            raise EOFError("closed")
        self.buf += d

    def _line_end(self, i):
        while True:
            j = self.buf.find(b"\r\n", i)
            if j >= 0:
                return j
            self._fill()

    def _value_end(self, i):
        while len(self.buf) <= i:
            self._fill()
        t = self.buf[i:i + 1]
        j = self._line_end(i)
        if t in b"+-:_#,(":
            return j + 2
        n = int(self.buf[i + 1:j])
        if t in b"$!=":
            if n < 0:
                return j + 2
            while len(self.buf) < j + 2 + n + 2:
                self._fill()
            return j + 2 + n + 2
        at = j + 2
        for _ in range(max(n, 0) * (2 if t in b"%|" else 1)):
            at = self._value_end(at)
        return self._value_end(at) if t == b"|" else at

    def reply(self):
        end = self._value_end(0)
        r, self.buf = self.buf[:end], self.buf[end:]
        return r

    def closed(self):
        """True when the peer closes the connection within 5 s (after everything it sent was read)."""
        try:
            if self.buf:
                return False
            self.s.settimeout(5)
            return self.s.recv(1) == b""
        except socket.timeout:
            return False
        except OSError:
            return True

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def encode(args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def cmd(*args):
    """A command template: its arguments, "{P}" standing for the client's key space (encoded per twin)."""
    return [a if isinstance(a, bytes) else str(a).encode() for a in args]


def render(template, prefix):
    if isinstance(template, bytes):                  # an inline command, sent as it is
        return template.replace(b"{P}", prefix)
    return encode([a.replace(b"{P}", prefix) for a in template])


class Client(threading.Thread):
    def __init__(self, n, a, rng, stats):
        super().__init__(daemon=True)
        self.n, self.a, self.rng, self.stats = n, a, rng, stats
        self.pa, self.pb = b"cfA%04d:" % n, b"cfB%04d:" % n
        self.history = []   # the commands drawn (for a difference's report)

    def k(self, i):
        return b"{P}k%d" % i

    def random_command(self, state):
        """A command template ({P} is the key space), and whether its reply is compared as a set (KEYS). `state`
        (subscribed in RESP2, inside MULTI, protocol) follows the commands drawn: both twins get the same ones, it
        only decides what is drawn next."""
        t = self.draw(state)
        self.history.append(render(t[0], self.pa))
        low = render(t[0], b"").lower()
        name = low.split(b"\r\n")[2] if low.startswith(b"*") else low.split(b" ")[0].strip()
        if name == b"keys" and state["multi"]:
            state["keys_queued"] = True               # EXEC's reply will hold KEYS's unordered answer
        if name in (b"exec", b"discard", b"reset") and state.pop("keys_queued", False):
            t = (t[0], True)
        if name == b"multi":
            state["multi"] = True
        elif name == b"watch" and not state["multi"]:
            state["watching"] = True
        elif name in (b"exec", b"discard"):
            state.update(multi=False, watching=False)
        elif name == b"unwatch" and not state["multi"]:
            state["watching"] = False
        elif name == b"reset":
            state.update(multi=False, watching=False, subscribed=False, proto=2)
        elif name in (b"subscribe", b"psubscribe") and state["proto"] == 2:
            state["subscribed"] = True
        elif name in (b"unsubscribe", b"punsubscribe"):
            state["subscribed"] = False   # (perhaps still subscribed: then what follows gets the same errors)
        return t

    def draw(self, state):
        r, k = self.rng, self.k(self.rng.randrange(8))
        if state["subscribed"]:
            return r.choice([
                (cmd("SUBSCRIBE", b"{P}ch%d" % r.randrange(3)), False),
                (cmd("PSUBSCRIBE", b"{P}p*"), False),
                # By name: without names, the order of the confirmations is the server's hash order.
                (cmd("UNSUBSCRIBE", b"{P}ch0", b"{P}ch1", b"{P}ch2"), False),
                (cmd("PUNSUBSCRIBE"), False),
                (cmd("PING"), False),
                (cmd("PING", "hello"), False),
                (cmd("GET", k), False),                      # refused in RESP2 subscribed mode, answered in RESP3
                (cmd("SET", k, "x"), False),
            ])
        choices = [
            (cmd("SET", k, r.choice([b"v", b"12", b"a b", b"\r\n", os.urandom(r.randrange(0, 40))])), False),
            (cmd("GET", k), False),
            (cmd("INCR", k), False),
            (cmd("APPEND", k, "xyz"), False),
            (cmd("STRLEN", k), False),
            (cmd("DEL", k, self.k(r.randrange(8))), False),
            (cmd("EXISTS", k), False),
            (cmd("MSET", k, "1", self.k(r.randrange(8)), "2"), False),
            (cmd("MGET", k, self.k(r.randrange(8)), self.k(r.randrange(8))), False),
            (cmd("RPUSH", k, "a", "b"), False),
            (cmd("LRANGE", k, "0", "-1"), False),
            (cmd("HSET", k, "f", "1", "g", "2"), False),
            (cmd("HGETALL", k), False),
            (cmd("SADD", k, "m"), False),
            (cmd("SMEMBERS", k), False),
            (cmd("ZADD", k, "1.5", "m"), False),
            (cmd("ZRANGE", k, "0", "-1", "WITHSCORES"), False),
            (cmd("ZSCORE", k, "m"), False),
            (cmd("TYPE", k), False),
            (cmd("GET"), False),                             # arity error
            (cmd("NOSUCHCOMMAND", k), False),                 # unknown command
            (cmd("PING"), False),
            (cmd("ECHO", os.urandom(r.randrange(0, 20))), False),
            (cmd("SELECT", str(r.randrange(3))), False),
            (cmd("SELECT", "99999"), False),
            (cmd("CLIENT", "SETNAME", "c%d" % r.randrange(9)), False),
            (cmd("CLIENT", "GETNAME"), False),
            (cmd("MULTI"), False),
            (cmd("EXEC"), False),
            (cmd("DISCARD"), False),
            (cmd("WATCH", k), False),
            (cmd("UNWATCH"), False),
            (cmd("BLPOP", k, "0.01"), False),
            (cmd("LPUSH", b"{P}q", "x"), False),
            (cmd("BLPOP", b"{P}q", "0.01"), False),
            (cmd("PUBLISH", b"{P}nobody", "m"), False),     # (a client's own messages may overtake the reply)
            (cmd("KEYS", b"{P}*"), True),
            (b"PING\r\n", False),                            # inline
            (b"SET {P}inline \"a b\"\r\n", False),
        ]
        if state["multi"]:
            # Connection state inside MULTI is one of README's known differences (SELECT, CLIENT SETNAME and
            # GETNAME run on the lease; pub/sub commands are not queued): not drawn there.
            choices = [c for c in choices if c[0][0] not in (b"SELECT", b"CLIENT")]
            choices += [(cmd("EXEC"), False)] * 4   # transactions end soon: a lease waited for is given back
        elif state["watching"]:
            choices += [(cmd("UNWATCH"), False), (cmd("MULTI"), False)] * 2   # a WATCH's lease is given back soon
        elif r.random() < 0.05:
            choices.append((cmd("SUBSCRIBE", b"{P}ch0"), False))
            choices.append((cmd("PSUBSCRIBE", b"{P}p*"), False))
        if r.random() < 0.02:
            choices.append((cmd("RESET"), False))
        return r.choice(choices)

    def run(self):
        try:
            self.play()
        except (OSError, EOFError, ValueError) as e:
            with self.stats["lock"]:
                self.stats["errors"].append(f"client {self.n}: {type(e).__name__}: {e}")

    def mismatch(self, what, got, want):
        at = next((i for i, (x, y) in enumerate(zip(got, want)) if x != y), min(len(got), len(want)))
        with self.stats["lock"]:
            self.stats["mismatches"] += 1
            if self.a.transcripts and self.n not in self.stats["dumped"]:
                self.stats["dumped"].add(self.n)
                with open(os.path.join(self.a.transcripts, f"client-{self.n}.txt"), "w") as f:
                    for c, g, w in self.transcript:
                        f.write(f"{c!r}\n  respool {g[:300]!r}\n  direct  {w[:300]!r}\n")
            if len(self.stats["examples"]) < 10:
                self.stats["examples"].append(
                    f"client {self.n} {what}: from byte {at}: respool {got[max(0, at - 40):at + 120]!r} "
                    f"direct {want[max(0, at - 40):at + 120]!r}\n    after: {b' | '.join(self.history[-25:])!r}")

    def play(self):
        deadline = time.monotonic() + self.a.seconds
        while time.monotonic() < deadline:
            a, b = Wire(self.a.port), Wire(self.a.redis_port)
            state = {"subscribed": False, "proto": 2, "multi": False, "watching": False}
            self.transcript = []   # this connection's (command, respool's reply, the direct reply)
            self.history.append(b"(new connection)")
            try:
                if self.rng.random() < 0.3:
                    hello = encode(cmd("HELLO", "3"))
                    for w in (a, b):
                        w.send(hello)
                        w.reply()                            # server ids differ; not compared
                    state["proto"] = 3
                    self.history.append(b"HELLO 3")
                for _ in range(self.rng.randint(5, 40)):
                    if time.monotonic() >= deadline:
                        break
                    batch = [self.random_command(state) for _ in range(self.rng.randint(1, 12))]
                    ta = b"".join(render(t, self.pa) for t, _ in batch)
                    tb = b"".join(render(t, self.pb) for t, _ in batch)
                    a.send(ta, self.rng)
                    b.send(tb)
                    # KEYS answers in the server's hash order, which differs between the two key spaces: with a
                    # KEYS in the batch (perhaps queued in a transaction), replies are compared as sets of lines.
                    unordered = any(as_set for _, as_set in batch)
                    for t, _ in batch:
                        # (P)SUBSCRIBE and (P)UNSUBSCRIBE answer once per name (PUNSUBSCRIBE alone: one pattern).
                        n = 1
                        if isinstance(t, list) and t[0].lower() in (b"subscribe", b"psubscribe", b"unsubscribe", b"punsubscribe"):
                            n = max(1, len(t) - 1)
                        got = b"".join(a.reply() for _ in range(n)).replace(self.pa, self.pb)
                        want = b"".join(b.reply() for _ in range(n))
                        self.transcript.append((render(t, self.pa), got, want))
                        self.stats["compared"] += 1
                        as_set = unordered
                        if as_set:
                            got, want = sorted(got.split(b"\r\n")), sorted(want.split(b"\r\n"))
                        if got != want:
                            self.mismatch(render(t, self.pa)[:80], bytes(got) if not as_set else b"|".join(got),
                                          bytes(want) if not as_set else b"|".join(want))
                    if state["subscribed"] and self.rng.random() < 0.3:
                        break                               # leave while subscribed
                if self.rng.random() < 0.15:
                    # Invalid bytes: the same protocol error from both, then both close.
                    junk = self.rng.choice([b"*2\r\n$3\r\nGET\r\n:1\r\n", b"*1\r\n$-5\r\n", b"*abc\r\n",
                                            b"*3000000000\r\n", b"*1\r\n$" + b"9" * 20 + b"\r\n", b"\x00" * 70000,
                                            b"x" * 70000])
                    a.send(junk, self.rng)
                    b.send(junk)
                    got, want = a.reply(), b.reply()
                    self.stats["compared"] += 1
                    if got != want:
                        self.mismatch("invalid bytes", got, want)
                    if a.closed() != b.closed():
                        self.mismatch("close after a protocol error", b"", b"")
            finally:
                a.close()
                b.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--redis-port", type=int, required=True)
    ap.add_argument("--respool-pid", type=int, required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--cap", type=int, required=True)
    ap.add_argument("--clients", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--transcripts", default="", help="a folder: each differing client's connection is written there")
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else int(time.time())
    stats = {"lock": threading.Lock(), "compared": 0, "mismatches": 0, "examples": [], "errors": [], "dumped": set()}
    clients = [Client(n, a, random.Random(seed * 1000 + n), stats) for n in range(a.clients)]
    for c in clients:
        c.start()
    max_conns = samples = 0
    mon = Wire(a.redis_port)
    while any(c.is_alive() for c in clients):
        mon.send(encode(cmd("CLIENT", "LIST")))
        listing = mon.reply().decode(errors="replace")
        max_conns = max(max_conns, sum(1 for line in listing.splitlines() if f" name={a.name}:" in line))
        samples += 1
        time.sleep(0.2)
    alive = os.path.exists(f"/proc/{a.respool_pid}") and open(f"/proc/{a.respool_pid}/stat").read().split()[2] != "Z"
    print(f"connfuzz: seed {seed}, {a.clients} clients for {a.seconds:g} s")
    print(f"replies compared with redis-server's: {stats['compared']:,}; different: {stats['mismatches']}")
    for e in stats["examples"]:
        print(f"  DIFFERENT {e}")
    print(f"clients that failed (no reply within {READ_TIMEOUT} s, or closed unexpectedly): {len(stats['errors'])}")
    for e in stats["errors"][:10]:
        print(f"  {e}")
    print(f"upstream connections on the server: max {max_conns} in {samples} samples (cap {a.cap}); respool running: {alive}")
    ok = stats["mismatches"] == 0 and not stats["errors"] and alive and max_conns <= a.cap and stats["compared"] > 0
    print("result: " + ("ok" if ok else "FAILED"))
    sys.stdout.flush()
    os._exit(0 if ok else 1)


if __name__ == "__main__":
    main()
