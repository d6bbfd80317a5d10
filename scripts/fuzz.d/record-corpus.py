#!/usr/bin/env python3
"""Record the fuzz seed corpus (Tests/Fuzz/corpus/) from real traffic.

A recording relay sits between real clients (redis-cli in RESP2 and RESP3, redis-benchmark pipelined and not, and a
raw socket sending inline commands) and a real redis-server started here on a free loopback port. What each client
connection sent becomes a file under corpus/requests, what it received a file under corpus/replies (at most 4 KiB
each: the fuzzer's -max_len). Run by `scripts/fuzz record`; the files are committed.
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

LIMIT = 4096

# redis-cli sessions (one connection each, commands on stdin); the RESP3 ones run with -3.
SESSIONS = {
    "strings": """SET greeting hello
GET greeting
GET missing
MSET a 1 b 2 c 3
MGET a b missing c
INCR counter
INCRBYFLOAT f 1.5
APPEND greeting ", world"
GETRANGE greeting 0 4
SETEX temp 100 value
TTL temp
STRLEN greeting
DEL a b c
EXISTS greeting
""",
    "collections": """HSET h f1 v1 f2 v2 f3 v3
HGETALL h
LPUSH l x y z
LRANGE l 0 -1
SADD s m1 m2 m3
SMEMBERS s
ZADD z 1 one 2.5 two 3 three
ZRANGE z 0 -1 WITHSCORES
ZSCORE z two
XADD st * field value
XRANGE st - +
SCAN 0 COUNT 100
TYPE h
""",
    "errors": """LPUSH notastring x
GET notastring
NOSUCHCOMMAND arg
SET onlykey
INCR greeting
EVAL "return redis.call('GET', KEYS[1])" 1 greeting
EVAL "return {1, 'two', {3, false}}" 0
MULTI
SET tx 1
INCR tx
EXEC
DISCARD
""",
    "server": """CLIENT SETNAME recorder
CLIENT GETNAME
CLIENT INFO
INFO server
CONFIG GET maxmemory*
COMMAND COUNT
DBSIZE
PING
ECHO "with spaces and \\r\\n"
""",
}
RESP3_SESSIONS = {
    "resp3": """HSET h3 a 1 b 2
HGETALL h3
SADD s3 x y
SMEMBERS s3
ZADD z3 1.5 m
ZSCORE z3 m
ZRANGE z3 0 -1 WITHSCORES
EXISTS h3
GET missing
CLIENT TRACKING ON
GET h3
HELLO 3
CONFIG GET maxmemory-policy
EVAL "return {double=3.14}" 0
EVAL "return {map={a=1}}" 0
""",
}
BENCHMARKS = {
    "benchmark-pipelined": ["-P", "16", "-t", "set,get,incr,lpush,lrange_100,mset,hset,zadd,spop", "-d", "24"],
    "benchmark-plain": ["-t", "ping_inline,ping_mbulk,set,get,sadd,rpop", "-d", "8"],
}
def multibulk(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a.encode() if isinstance(a, str) else a
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


# Raw connections: inline commands (redis-cli never sends them), and RESP3 attributes and pushes (redis-cli 7.0
# cannot read an attribute).
RAW = [
    multibulk("HELLO", "3") + multibulk("DEBUG", "PROTOCOL", "attrib") + multibulk("SUBSCRIBE", "news", "alerts")
    + multibulk("PING") + multibulk("UNSUBSCRIBE") + b"".join(multibulk("DEBUG", "PROTOCOL", kind) for kind in
    ("map", "set", "double", "bignum", "verbatim", "true", "false", "null")),
    b"PING\r\n",
    b"SET inline \"quoted value\" \r\nGET inline\r\n",
    b"ECHO 'single quoted'\nEXISTS inline\r\n\r\n",
    b"HSET hi \"\\x41\\x42\" \"tab\\there\"\r\nHGETALL hi\r\n",
    b"   \r\nPING\r\n",
]


def reply_end(b, i):
    """Where the RESP2/RESP3 value starting at b[i] ends (the input is a complete, valid recording)."""
    kind = b[i:i + 1]
    eol = b.index(b"\r\n", i)
    if kind in b"+-:_#,(":
        return eol + 2
    n = int(b[i + 1:eol])
    if kind in b"$!=":
        return eol + 2 if n < 0 else eol + 2 + n + 2
    at = eol + 2
    for _ in range(max(n, 0) * (2 if kind in b"%|" else 1)):
        at = reply_end(b, at)
    return reply_end(b, at) if kind == b"|" else at


class Relay:
    """Accepts client connections and relays them to redis-server, recording both directions per connection."""

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        self.lock = threading.Lock()
        self.connections = []   # [requests bytearray, replies bytearray]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            client, _ = self.server.accept()
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            record = [bytearray(), bytearray()]
            with self.lock:
                self.connections.append(record)
            threading.Thread(target=self.pump, args=(client, upstream, record[0]), daemon=True).start()
            threading.Thread(target=self.pump, args=(upstream, client, record[1]), daemon=True).start()

    def pump(self, source, sink, record):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                with self.lock:
                    record += data
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def take(self):
        """Waits until every connection so far has closed both ways, then returns and forgets them."""
        time.sleep(0.3)
        with self.lock:
            taken, self.connections = self.connections, []
        return taken


def main():
    out = sys.argv[1]
    tmp = tempfile.mkdtemp(prefix="respool-corpus.")
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    server = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                               "--appendonly", "no", "--dir", tmp, "--enable-debug-command", "yes"],
                              stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                time.sleep(0.05)
        relay = Relay(port)
        files = {}

        def keep(name, connections):
            for k, (requests, replies) in enumerate(connections):
                suffix = "" if len(connections) == 1 else "-%d" % (k + 1)
                if requests:
                    files["requests/%s%s" % (name, suffix)] = bytes(requests[:LIMIT])
                if replies:
                    files["replies/%s%s" % (name, suffix)] = bytes(replies[:LIMIT])
                    # redis-cli's first request is COMMAND DOCS, whose reply alone fills the first file: keep the
                    # replies after it in a file of their own.
                    first = reply_end(bytes(replies), 0)
                    if first > LIMIT // 4 and len(replies) > first:
                        files["replies/%s%s-after-first" % (name, suffix)] = bytes(replies[first:first + LIMIT])

        for name, script in SESSIONS.items():
            subprocess.run(["redis-cli", "-p", str(relay.port)], input=script.encode(), stdout=subprocess.DEVNULL, check=True)
            keep("redis-cli-" + name, relay.take())
        for name, script in RESP3_SESSIONS.items():
            subprocess.run(["redis-cli", "-3", "-p", str(relay.port)], input=script.encode(), stdout=subprocess.DEVNULL, check=True)
            keep("redis-cli-" + name, relay.take())
        for name, args in BENCHMARKS.items():
            subprocess.run(["redis-benchmark", "-p", str(relay.port), "-n", "64", "-c", "1", "-r", "50", "-q"] + args,
                           stdout=subprocess.DEVNULL, check=True)
            keep(name, relay.take())
        for k, payload in enumerate(RAW):
            s = socket.create_connection(("127.0.0.1", relay.port))
            s.sendall(payload)
            s.settimeout(0.5)
            try:
                while s.recv(65536):   # until redis-server has nothing more to say (or closed on a bad request)
                    pass
            except socket.timeout:
                pass
            s.close()
            keep("raw-%d" % (k + 1), relay.take())
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    for kind in ("requests", "replies"):
        shutil.rmtree(os.path.join(out, kind), ignore_errors=True)
        os.makedirs(os.path.join(out, kind))
    for path, data in sorted(files.items()):
        with open(os.path.join(out, path), "wb") as f:
            f.write(data)
    print("recorded %d files into %s" % (len(files), out))


if __name__ == "__main__":
    main()
