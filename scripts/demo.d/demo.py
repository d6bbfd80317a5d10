#!/usr/bin/env python3
"""The workload of scripts/demo: N app connections against a redis-server, first directly, then through respool;
prints what the server sees each time, respool's stats, and what a KEYS call and an idle client do.

Usage: demo.py REDIS_PORT RESPOOL_PORT STATS_PORT N
Python's standard library only (plain sockets speaking RESP)."""
import json
import socket
import sys
import time
import urllib.request

redis_port, respool_port, stats_port, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])


def command(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def read_reply(f):
    line = f.readline()
    kind, rest = line[:1], line[1:-2]
    if kind in (b"+", b"-", b":"):
        return rest.decode()
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else f.read(size + 2)[:-2].decode()
    if kind == b"*":
        size = int(rest)
        return None if size < 0 else [read_reply(f) for _ in range(size)]
    raise RuntimeError("unexpected reply %r" % line)


class Conn:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.file = self.sock.makefile("rb")

    def __call__(self, *args):
        self.sock.sendall(command(*args))
        return read_reply(self.file)

    def close(self):
        self.file.close()   # (the file holds the socket open too)
        self.sock.close()


def server_view(admin):
    listing = admin("CLIENT", "LIST").splitlines()
    names = {}
    for line in listing:
        fields = dict(f.split("=", 1) for f in line.split(" ") if "=" in f)
        if fields.get("cmd") == "client|list":
            continue   # this demo's own admin connection
        name = fields.get("name") or "(no name)"
        names[name] = names.get(name, 0) + 1
    return sum(names.values()), names


def workload(port, label):
    """N app connections, each writing and reading its own key, all open at once (as N threads or processes)."""
    conns = [Conn(port) for _ in range(n)]
    for i, c in enumerate(conns):
        c.sock.sendall(command("SET", "demo:%s:%d" % (label, i), i) + command("GET", "demo:%s:%d" % (label, i)))
    wrong = 0
    for i, c in enumerate(conns):
        read_reply(c.file)
        if read_reply(c.file) != str(i):
            wrong += 1
    return conns, wrong


def names_text(names):
    return ", ".join("%s x%d" % (k, v) for k, v in sorted(names.items(), key=lambda kv: -kv[1]))


def stats():
    with urllib.request.urlopen("http://127.0.0.1:%d/stats" % stats_port, timeout=5) as r:
        return json.load(r)


admin = Conn(redis_port)
print("== %d app connections, each doing SET and GET, all kept open (as a web server's threads do) ==\n" % n)
direct, wrong_direct = workload(redis_port, "direct")
count_direct, names_direct = server_view(admin)
for c in direct:
    c.close()
deadline = time.time() + 10
while time.time() < deadline and server_view(admin)[1].get("(no name)", 0) > 0:
    time.sleep(0.05)   # the server takes a moment to see the direct connections closed
through, wrong_through = workload(respool_port, "respool")
count_through, names_through = server_view(admin)
rows = [
    ("app connections", n, n),
    ("replies to the wrong connection", wrong_direct, wrong_through),
    ("connections the server sees", count_direct, count_through),
]
print("%-34s %-34s %s" % ("", "directly", "through respool"))
for label, a, b in rows:
    print("%-34s %-34s %s" % (label, a, b))
print("%-34s %-34s %s" % ("their names (CLIENT LIST)", names_text(names_direct)[:33], names_text(names_through)))
print("\nA hosted plan with a limit of 20 connections would have refused the direct run; through respool the")
print("server saw %d, named so that CLIENT LIST says whose they are.\n" % count_through)

s = stats()
m = s["metrics"]
print("== respool's stats (GET /stats on 127.0.0.1:%d; /metrics has the same for Prometheus) ==\n" % stats_port)
print("clients now %d, accepted %d; upstream connections %s (cap %d); commands %s" % (
    m["respool_clients"], m["respool_clients_accepted_total"],
    ", ".join("%s %d" % (k, v) for k, v in m["respool_upstream_connections"].items() if v),
    m["respool_upstream_connections_max"],
    ", ".join("%s %d" % (k, v) for k, v in m["respool_commands_total"].items() if v)))
for c in through:
    c.close()

print("\n== KEYS in production ==\n")
probe = Conn(respool_port)
keys = probe("KEYS", "demo:respool:1*")
commandstats = admin("INFO", "commandstats")
def calls(name):
    line = next((l for l in commandstats.splitlines() if l.startswith("cmdstat_%s:" % name)), "")
    return line.split("calls=")[1].split(",")[0] if "calls=" in line else "0"
m = stats()["metrics"]
print("KEYS demo:respool:1* through respool answered %d keys; the server ran KEYS %s times and SCAN %s times" % (
    len(keys), calls("keys"), calls("scan")))
print("(RESPOOL_KEYS=scan: respool answers KEYS with SCAN steps, so the server never blocks on it; keys metrics: %s)." % (
    ", ".join("%s %d" % (k, v) for k, v in m["respool_keys_total"].items())))
print("The default, RESPOOL_KEYS=warn, passes KEYS on and logs who sent it; deny answers with an error naming SCAN.")

print("\n== An idle client, and a subscriber ==\n")
idle = Conn(respool_port)
idle("PING")
subscriber = Conn(respool_port)
subscriber("SUBSCRIBE", "demo:news")
print("Two clients, then nothing for a while (RESPOOL_CLIENT_IDLE_TIMEOUT=2 for this demo; 300 s by default)...")
idle.sock.settimeout(10)
closed = idle.sock.recv(1) == b""
print("the idle client was closed by respool: %s; the subscriber is left alone (a PUBLISH reaches it: %s)" % (
    closed, admin("PUBLISH", "demo:news", "hello") == "1" and read_reply(subscriber.file)[2] == "hello"))
