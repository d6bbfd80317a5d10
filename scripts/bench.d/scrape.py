#!/usr/bin/env python3
"""Scrapes a Prometheus endpoint at a fixed rate until SIGTERM, then prints one line:
scrapes=N failures=F max_ms=M bytes=B (for scripts/bench BENCH_SCRAPE=1)."""
import argparse
import http.client
import signal
import sys
import time

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--path", default="/metrics")
ap.add_argument("--rate", type=float, default=10.0, help="scrapes per second")
a = ap.parse_args()

stop = False


def on_term(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)
scrapes = failures = size = 0
worst = 0.0
period = 1.0 / a.rate
next_at = time.monotonic()
while not stop:
    started = time.monotonic()
    try:
        c = http.client.HTTPConnection("127.0.0.1", a.port, timeout=5)
        c.request("GET", a.path)
        r = c.getresponse()
        body = r.read()
        c.close()
        if r.status != 200 or b"respool_commands_total" not in body:
            failures += 1
        size = len(body)
        scrapes += 1
    except OSError:
        failures += 1
    worst = max(worst, time.monotonic() - started)
    if scrapes + failures == 1:
        print("ready", file=sys.stderr, flush=True)  # scripts/bench starts its run after the first scrape
    next_at += period
    delay = next_at - time.monotonic()
    if delay > 0:
        time.sleep(delay)
print(f"scrapes={scrapes} failures={failures} max_ms={worst * 1000:.1f} bytes={size}")
sys.exit(0)
