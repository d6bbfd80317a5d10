#!/usr/bin/env python3
"""Connection churn for scripts/bench: N short-lived clients, one after the other, each connecting (with a TLS
handshake when --tls-ca is given), sending one SET, reading +OK and closing. Prints the wall time in seconds."""
import argparse
import socket
import ssl
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--tls-ca", help="CA file: connect with TLS and verify the server against it")
    a = ap.parse_args()
    ctx = ssl.create_default_context(cafile=a.tls_ca) if a.tls_ca else None
    start = time.perf_counter()
    for i in range(a.n):
        s = socket.create_connection(("127.0.0.1", a.port))
        if ctx:
            s = ctx.wrap_socket(s, server_hostname="127.0.0.1")
        value = str(i).encode()
        s.sendall(b"*3\r\n$3\r\nSET\r\n$13\r\nrespool:churn\r\n$%d\r\n%s\r\n" % (len(value), value))
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = s.recv(64)
            if not chunk:
                break
            reply += chunk
        if reply != b"+OK\r\n":
            print(f"churn: unexpected reply {reply[:60]!r}", file=sys.stderr)
            return 1
        s.close()
    print(f"{time.perf_counter() - start:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
