#!/usr/bin/env python3
"""Tables for scripts/bench from its tab-separated results file (stdlib only).

Lines it reads (first field = kind):
  rps   ROUND ROW TARGET CMD OPS_PER_S
  cpu   ROUND ROW TARGET TICKS REQUESTS        (utime+stime delta of the proxy during that run)
  load  ROUND ROW TARGET CLIENT_TICKS REDIS_TICKS WALL_S REQUESTS
                                               (CPU of redis-benchmark and of redis-server during that run)
  sys   TARGET RUN CALLS REQUESTS              (strace -c total during that run; CALLS may be "n/a")
  churn TARGET N WALL_S REDIS_TICKS CLIENT_TICKS  (BENCH_TLS: N connect-SET-close clients one after the other)
  mem   TARGET START IDLE BURST PEAK CLOSED CONNECTED REPLIES ERRORS   (kB; see memtest.py)
Medians across rounds. Targets: direct, respool, twemproxy (and with BENCH_TLS direct-tls, respool-tls; with
BENCH_BASELINE baseline, a second respool binary: its columns and respool/baseline appear only then).
"""
import argparse
import statistics
import sys
from collections import OrderedDict, defaultdict

TARGETS = ("direct", "respool", "twemproxy")
TARGETS_WITH_BASELINE = ("direct", "respool", "baseline", "twemproxy")


def fmt_int(x):
    return "-" if x is None else f"{x:,.0f}"


def fmt_ratio(a, b):
    return "-" if a is None or b in (None, 0) else f"{a / b:.2f}"


def fmt_f(x, digits=1):
    return "-" if x is None else f"{x:.{digits}f}"


def table(headers, rows, align=None):
    align = align or ["<"] + [">"] * (len(headers) - 1)
    cells = [headers] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for n, r in enumerate(cells):
        out.append("| " + " | ".join(f"{c:{a}{w}}" for c, a, w in zip(r, align, widths)) + " |")
        if n == 0:
            out.append("|" + "|".join(("-" * (w + 1) + ":") if a == ">" else ("-" * (w + 2)) for a, w in zip(align, widths)) + "|")
    return "\n".join(out)


def skipped(cells, columns):
    """respool left out of this run: its cells say so instead of '-'."""
    return [("skipped" if i in columns else c) for i, c in enumerate(cells)]


def respool_columns(headers):
    """Indices of the columns that need respool (its own values and the ratios with it)."""
    return tuple(i for i, h in enumerate(headers) if h.split()[0].startswith("respool"))


def median(xs):
    return statistics.median(xs) if xs else None


def spread(xs):
    return (max(xs) - min(xs)) / statistics.median(xs) if len(xs) > 1 and statistics.median(xs) else 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--clk-tck", type=int, required=True)
    ap.add_argument("--idle-conns", type=int, default=10000)
    ap.add_argument("--skip-respool", action="store_true", help="respool was left out: say so in its cells")
    ap.add_argument("--baseline", action="store_true",
                    help="a baseline respool ran (BENCH_BASELINE): its columns even if it has no results")
    a = ap.parse_args()

    rps = defaultdict(list)  # (row, cmd, target) -> [ops/s]
    rps_round = {}  # (round, row, cmd, target) -> ops/s
    cpu = defaultdict(list)  # (row, target) -> [us/request]
    client = defaultdict(list)  # (row, target) -> [share of one core used by redis-benchmark]
    total = defaultdict(list)  # (row, target) -> [us/request of redis-benchmark + proxy + redis-server]
    proxy_ticks = {}  # (round, row, target) -> proxy ticks of that run
    rows = OrderedDict()  # row -> [cmd, ...] in order seen
    sysc = OrderedDict()  # run -> {target: calls/request}
    mem = {}
    scrapes = []  # "scrapes=N failures=F max_ms=M bytes=B" per run of respool+scrape
    rounds = set()
    loads = []
    churn = {}  # target -> (n, wall_s, redis_ticks, client_ticks)
    with open(a.results) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if p[0] == "rps":
                _, rnd, row, target, cmd, v = p
                rounds.add(rnd)
                rows.setdefault(row, [])
                if cmd not in rows[row]:
                    rows[row].append(cmd)
                rps[(row, cmd, target)].append(float(v))
                rps_round[(rnd, row, cmd, target)] = float(v)
            elif p[0] == "cpu":
                _, rnd, row, target, ticks, reqs = p
                rows.setdefault(row, [])
                cpu[(row, target)].append(int(ticks) * 1e6 / a.clk_tck / int(reqs))
                proxy_ticks[(rnd, row, target)] = int(ticks)
            elif p[0] == "load":
                loads.append(p[1:])
            elif p[0] == "sys":
                _, target, run, calls, reqs = p
                sysc.setdefault(run, {})[target] = None if calls == "n/a" else int(calls) / int(reqs)
            elif p[0] == "churn":
                churn[p[1]] = (int(p[2]), float(p[3]), int(p[4]), int(p[5]))
            elif p[0] == "mem":
                mem[p[1]] = [int(x) for x in p[2:]]
            elif p[0] == "scrape":
                scrapes.append(dict(kv.split("=", 1) for kv in p[3].split()))

    # baseline (BENCH_BASELINE): a second respool binary; its columns only when it ran.
    base = a.baseline or any(t == "baseline" for (_, _, t) in rps) or "baseline" in mem or any(
        t == "baseline" for (_, t) in cpu) or any("baseline" in v for v in sysc.values())
    targets = TARGETS_WITH_BASELINE if base else TARGETS

    print(f"Throughput (redis-benchmark ops/s, median of {len(rounds)} round(s); ratios of medians)")
    out = []
    worst = {t: (0.0, "") for t in targets}
    headers = ["row", "cmd"] + [f"{t} ops/s" for t in targets] + (["respool/baseline"] if base else []) + [
        "respool/twemproxy", "respool/direct"]
    for row, cmds in rows.items():
        for cmd in cmds:
            m = {}
            for t in targets:
                xs = rps.get((row, cmd, t), [])
                m[t] = median(xs)
                if xs and spread(xs) > worst[t][0]:
                    worst[t] = (spread(xs), f"{row} {cmd}")
            r = [row, cmd] + [fmt_int(m[t]) for t in targets] + (
                [fmt_ratio(m["respool"], m["baseline"])] if base else []) + [
                fmt_ratio(m["respool"], m["twemproxy"]), fmt_ratio(m["respool"], m["direct"])]
            out.append(skipped(r, respool_columns(headers)) if a.skip_respool else r)
    print(table(headers, out, ["<", "<"] + [">"] * (len(headers) - 2)))
    if len(rounds) > 1:
        print("largest spread across rounds, (max-min)/median: " + ", ".join(
            f"{t} {w[0] * 100:.0f}% ({w[1]})" for t, w in worst.items() if w[1]))

    if base and len(rounds) > 1 and not a.skip_respool:
        print()
        print("respool against baseline, per row: the ratio of medians, the range of the per-round ratios (both ran in "
              "the same round, one after the other), and each one's spread across rounds, (max-min)/median")
        out = []
        for row, cmds in rows.items():
            for cmd in cmds:
                r, b = rps.get((row, cmd, "respool"), []), rps.get((row, cmd, "baseline"), [])
                per = sorted(rps_round[(n, row, cmd, "respool")] / rps_round[(n, row, cmd, "baseline")] for n in rounds
                             if (n, row, cmd, "respool") in rps_round and rps_round.get((n, row, cmd, "baseline")))
                out.append([row, cmd, fmt_ratio(median(r), median(b)), f"{per[0]:.2f}-{per[-1]:.2f}" if per else "-",
                            f"{spread(r) * 100:.0f}%" if r else "-", f"{spread(b) * 100:.0f}%" if b else "-"])
        print(table(["row", "cmd", "respool/baseline", "per round", "respool spread", "baseline spread"], out,
                    ["<", "<", ">", ">", ">", ">"]))
        print("(a ratio is within noise when it lies inside the spreads; the per-round range shows whether one binary "
              "was ahead in every round)")

    if scrapes:
        print()
        n = sum(int(x.get("scrapes", 0)) for x in scrapes)
        failed = sum(int(x.get("failures", 0)) for x in scrapes)
        slowest = max(float(x.get("max_ms", 0)) for x in scrapes)
        size = max(int(x.get("bytes", 0)) for x in scrapes)
        print(f"Scraping cost: respool while /metrics is scraped 10 times a second, against respool alone "
              f"(same process, interleaved; {n} scrapes of {size:,} bytes, {failed} failed, slowest {slowest:.1f} ms)")
        out = []
        for row, cmds in rows.items():
            for cmd in cmds:
                plain = median(rps.get((row, cmd, "respool"), []))
                scraped = median(rps.get((row, cmd, "respool+scrape"), []))
                out.append([row, cmd, fmt_int(plain), fmt_int(scraped), fmt_ratio(scraped, plain)])
        print(table(["row", "cmd", "respool ops/s", "respool+scrape ops/s", "scraped/plain"], out, ["<", "<", ">", ">", ">"]))
        print("(the ratio is within noise when it lies inside the spread of respool's own rounds, shown above)")

    if any(t == "direct-tls" for (_, _, t) in rps):
        print()
        print("TLS upstream: redis-benchmark --tls against redis-server's TLS port, against plain RESP to a respool whose "
              "upstream is rediss:// (medians)")
        out = []
        for row, cmds in rows.items():
            for cmd in cmds:
                d = median(rps.get((row, cmd, "direct-tls"), []))
                r = median(rps.get((row, cmd, "respool-tls"), []))
                out.append([row, cmd, fmt_int(d), fmt_int(r), fmt_ratio(r, d), fmt_f(median(cpu.get((row, "respool-tls"), [])), 2)])
        print(table(["row", "cmd", "direct TLS ops/s", "respool-tls ops/s", "respool-tls/direct TLS", "respool-tls µs/req"], out,
                    ["<", "<", ">", ">", ">", ">"]))
    if churn:
        print()
        print("TLS connection churn: clients that connect, send one SET and close, one after the other (the direct ones "
              "with a TLS handshake each)")
        out = []
        for t in ("direct-tls", "respool-tls"):
            if t in churn:
                n, wall, rticks, cticks = churn[t]
                out.append([t, f"{n:,}", fmt_f(wall * 1e6 / n, 0), fmt_f(rticks * 1e6 / a.clk_tck / n, 0),
                            fmt_f(cticks * 1e6 / a.clk_tck / n, 0)])
        print(table(["target", "connections", "µs per connection", "redis-server CPU µs per connection",
                     "client CPU µs per connection"], out))

    print()
    print(f"Proxy CPU per request (µs, utime+stime of the proxy over the row's run (SET and GET) / its requests; "
          f"clock tick {1e6 / a.clk_tck:.0f} µs; median)")
    out = []
    proxies = [t for t in targets if t != "direct"]
    headers = ["row"] + [f"{t} µs/req" for t in proxies] + (["respool/baseline"] if base else []) + ["respool/twemproxy"]
    for row in rows:
        m = {t: median(cpu.get((row, t), [])) for t in proxies}
        r = [row] + [fmt_f(m[t], 2) for t in proxies] + (
            [fmt_ratio(m["respool"], m["baseline"])] if base else []) + [fmt_ratio(m["respool"], m["twemproxy"])]
        out.append(skipped(r, respool_columns(headers)) if a.skip_respool else r)
    print(table(headers, out))

    for rnd, row, target, cticks, rticks, wall, reqs in loads:  # after the file: a run's cpu line comes later
        if float(wall) > 0:
            client[(row, target)].append(int(cticks) / a.clk_tck / float(wall))
        ticks = int(cticks) + int(rticks) + (0 if target == "direct" else proxy_ticks.get((rnd, row, target), 0))
        total[(row, target)].append(ticks * 1e6 / a.clk_tck / int(reqs))
    if client:
        print()
        print("Where the CPU went (medians): redis-benchmark's CPU as a share of one core during the row's run (it is "
              "single-threaded), and the CPU of all three processes (redis-benchmark + proxy + redis-server) per request. "
              "When the three together fill both cores, throughput is total CPU over the CPU per request, whatever the proxy")
        out = []
        headers = ["row", f"client CPU: {targets[0]}", *targets[1:], f"all µs/req: {targets[0]}", *targets[1:]]
        for row in rows:
            c = [median(client.get((row, t), [])) for t in targets]
            v = [median(total.get((row, t), [])) for t in targets]
            r = [row] + [("-" if x is None else f"{x * 100:.0f}%") for x in c] + [fmt_f(x, 2) for x in v]
            out.append(skipped(r, (2, 2 + len(targets))) if a.skip_respool else r)
        print(table(headers, out))

    print()
    print("Syscalls per request (strace -c -f on the proxy, separate pass; total calls / requests)")
    headers = ["run"] + [f"{t} syscalls/req" for t in proxies] + (["respool/baseline"] if base else []) + [
        "respool/twemproxy"]
    out = [[run] + [fmt_f(v.get(t), 2) for t in proxies] + (
        [fmt_ratio(v.get("respool"), v.get("baseline"))] if base else []) + [fmt_ratio(v.get("respool"), v.get("twemproxy"))]
        for run, v in sysc.items()]
    if a.skip_respool:
        out = [skipped(r, respool_columns(headers)) for r in out]
    print(table(headers, out) if out else "(not measured)")

    print()
    n = a.idle_conns
    print(f"Memory (VmRSS, MiB; {n:,} idle client connections, then one GET on each, then closed)")
    out = []
    for t in proxies:
        if t not in mem:
            out.append([t] + ["skipped" if t == "respool" and a.skip_respool else "-"] * 8)
            continue
        start, idle, burst, peak, closed, connected, replies, errors = mem[t]
        per = (idle - start) / connected if connected else None
        out.append([t, fmt_f(start / 1024), fmt_f(idle / 1024), fmt_f(per, 2), fmt_f(burst / 1024), fmt_f(peak / 1024),
                    fmt_f(closed / 1024), f"{connected:,}/{n:,}", f"{replies:,}" + (f" ({errors:,} errors)" if errors else "")])
    print(table(["proxy", "at start", "idle conns", "KiB/idle conn", "after burst", "peak (VmHWM)", "after close",
                 "connected", "GET replies"], out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
