"""The access-log receiver's parse rate, for HAProxy and nginx lines, with loss counted.

Two measurements per format:

1. **parse**: `AccessLogReceiver.handle()` called in a loop on prepared datagrams (syslog
   framing, parsing, mapping and the counts the metrics collector reads at scrape time), no
   socket: the ceiling of one receiver on one core. The scrape itself is not timed (it costs
   per scrape, not per line); its counts are checked against what was fed.
2. **udp**: the receiver on an asyncio loop, as in the daemon, fed over UDP on loopback by a
   separate sender process at a paced rate (and once as fast as the sender can go). Printed:
   lines sent, lines counted, lost (sent - received; from the kernel's drop counter as well),
   and the rate the receiver kept up with.

The lines are a mix like real traffic: both colours, several status codes, durations from
1 ms to 2 s, request paths of varying length, a few lines for no known server.

    .venv/bin/python bench/bench_accesslog.py [--lines 200000] [--rates 20000,50000,100000,0]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from watchdog.accesslog import AccessLogReceiver, Format
from watchdog.lab.procs import free_udp_port
from watchdog.metrics import Metrics

HAPROXY_ROUTES = {"odoo/odoo-blue": ("odoo", "blue"), "odoo/odoo-green": ("odoo", "green")}
NGINX_ROUTES = {"127.0.0.1:8069": ("odoo", "blue"), "127.0.0.1:9069": ("odoo", "green")}
PATHS = ["/web/health", "/web/login", "/web/webclient/version_info", "/xmlrpc/2/object",
         "/web/dataset/call_kw/res.partner/web_search_read",
         "/web/static/src/img/favicon.ico?v=17.0-" + "x" * 60, "/websocket"]
STATUSES = [200] * 90 + [302] * 3 + [304] * 3 + [404] * 2 + [500, 502]


def lines(fmt: Format, count: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        path = rng.choice(PATHS)
        status = rng.choice(STATUSES)
        ms = min(int(rng.lognormvariate(3.5, 1.0)), 2000)
        color = "blue" if i % 2 else "green"
        unknown = i % 100 == 99  # 1% for a server no site knows
        if fmt == "haproxy":
            server = "odoo/odoo-purple" if unknown else f"odoo/odoo-{color}"
            out.append(
                f"<134>Nov 27 10:21:24 haproxy[15755]: 127.0.0.1:{40000 + i % 20000} "
                f"[27/Nov/2026:10:21:24.{i % 1000:03d}] odoo {server} 0/0/0/{ms}/{ms + 1} "
                f"{status} {rng.randint(100, 30000)} - - --NI 4/4/0/0/0 0/0 "
                f'"GET {path} HTTP/1.1"\n'.encode())
        else:
            port = 7069 if unknown else (8069 if color == "blue" else 9069)
            addr = f"127.0.0.1:{port}"
            if i % 50 == 7:
                addr = f"127.0.0.1:{port + 1}, {addr}"  # a retry
            out.append(
                f"<190>Nov 27 10:25:20 vm nginx: 127.0.0.1 [27/Nov/2026:10:25:20 +0000] "
                f'{status} {(ms + 1) / 1000:.3f} "{addr}" "{status}" "{ms / 1000:.3f}" '
                f'{rng.randint(100, 30000)} "GET {path} HTTP/1.1" "-" '
                f'"Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0"'.encode())
    return out


def receiver(fmt: Format, port: int = 0) -> AccessLogReceiver:
    routes = HAPROXY_ROUTES if fmt == "haproxy" else NGINX_ROUTES
    return AccessLogReceiver(f"127.0.0.1:{port}", fmt, routes, Metrics())


# ---------------------------------------------------------------- parse only


def bench_parse(fmt: Format, count: int, repeat: int) -> dict[str, object]:
    """The best of `repeat` runs, each with a fresh receiver (the machine may be shared)."""
    data = lines(fmt, count)
    elapsed = math.inf
    for _ in range(repeat):
        rec = receiver(fmt)
        handle = rec.handle
        started = time.perf_counter()
        for datagram in data:
            handle(datagram)
        elapsed = min(elapsed, time.perf_counter() - started)
        assert rec.parsed + rec.unmapped == count and rec.unparsed == 0, rec.stats()
        registry = rec.metrics.registry
        assert registry.get_sample_value("odoo_watchdog_access_log_lines_total",
                                         {"result": "received"}) == count
        assert sum(registry.get_sample_value(
            "odoo_watchdog_http_request_duration_seconds_count", {"site": "odoo", "color": c})
            or 0 for c in ("blue", "green")) == rec.parsed
    return {"format": fmt, "mode": "parse", "rate": "-", "sent": count, "received": count,
            "parsed": rec.parsed, "lost": 0, "drops": "-", "seconds": elapsed,
            "lines/s": count / elapsed}


# ---------------------------------------------------------------- over UDP


def send(fmt: Format, port: int, count: int, rate: float) -> None:
    """The sender process: `count` lines to 127.0.0.1:port, paced at `rate` lines/s (0: flat
    out), in bursts of 50 lines."""
    data = lines(fmt, count)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    burst = 50
    time.sleep(0.2)  # the lines are made; let the receiver settle
    print(f"{time.time():.6f}", flush=True)
    started = time.perf_counter()
    for i in range(0, count, burst):
        if rate:
            due = started + i / rate
            while (now := time.perf_counter()) < due:
                if due - now > 0.002:
                    time.sleep(due - now - 0.001)
        for datagram in data[i:i + burst]:
            try:
                sock.send(datagram)
            except BlockingIOError:  # pragma: no cover - loopback sends do not block
                pass
    elapsed = time.perf_counter() - started
    print(f"{elapsed:.6f}", flush=True)


async def bench_udp(fmt: Format, count: int, rate: float) -> dict[str, object]:
    port = free_udp_port()
    rec = receiver(fmt, port)
    await rec.start()
    try:
        sender = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--send", fmt, str(port), str(count), str(rate),
            stdout=subprocess.PIPE)
        out, _ = await sender.communicate()
        started_at, send_seconds = (float(x) for x in out.decode().split())
        # until nothing more arrives for 0.3 s
        last, quiet_since = -1, time.time()
        while time.time() - quiet_since < 0.3:
            await asyncio.sleep(0.005)
            if rec.received != last:
                last, quiet_since = rec.received, time.time()
        elapsed = quiet_since - started_at
        drops = rec.kernel_drops()
    finally:
        await rec.stop()
    assert rec.unparsed == 0, rec.stats()
    return {"format": fmt, "mode": "udp", "rate": f"{rate:,.0f}" if rate else "max",
            "sent": count, "received": rec.received, "parsed": rec.parsed,
            "lost": count - rec.received, "drops": drops, "seconds": elapsed,
            "send_seconds": send_seconds, "lines/s": rec.received / elapsed}


def table(rows: list[dict[str, object]]) -> str:
    head = ["format", "mode", "paced at /s", "sent", "sent/s", "counted", "lost", "lost %",
            "kernel drops", "counted/s"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        sent = int(str(r["sent"]))
        lost = int(str(r["lost"]))
        counted = int(str(r["received"]))
        out.append("| " + " | ".join([
            str(r["format"]), str(r["mode"]), str(r["rate"]), f"{sent:,}",
            f"{sent / float(str(r['send_seconds'])):,.0f}" if "send_seconds" in r else "-",
            f"{counted:,}",
            f"{lost:,}", f"{100 * lost / sent:.2f}", str(r["drops"]),
            f"{float(str(r['lines/s'])):,.0f}",
        ]) + " |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3, help="parse runs; the best is shown")
    parser.add_argument("--rates", default="20000,50000,100000,0",
                        help="offered lines/s over UDP, comma-separated; 0 = as fast as possible")
    parser.add_argument("--send", nargs=4, metavar=("FORMAT", "PORT", "COUNT", "RATE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.send:
        fmt, port, count, rate = args.send
        send(fmt, int(port), int(count), float(rate))
        return 0
    # The receiver's own log (listening, the 1% unmapped sample) would cut into the table.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    rows: list[dict[str, object]] = []
    formats: tuple[Format, ...] = ("haproxy", "nginx")
    for fmt in formats:
        rows.append(bench_parse(fmt, args.lines, args.repeat))
        for rate in (float(x) for x in args.rates.split(",") if x.strip()):
            rows.append(asyncio.run(bench_udp(fmt, args.lines, rate)))
            print(f"  {fmt} udp {rate or 'max'}: {rows[-1]['lines/s']:,.0f} lines/s, "
                  f"lost {rows[-1]['lost']}", file=sys.stderr)
    rmem = Path("/proc/sys/net/core/rmem_max")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end, "
          f"net.core.rmem_max {rmem.read_text().strip() if rmem.exists() else '?'}, "
          f"receive buffer asked {receiver('haproxy').rcvbuf:,} bytes")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
