"""Three ways of switching an Odoo site between colours, side by side, under the same load.

1. odoo-watchdog's HAProxy router (runtime API, one `;`-joined command, read back).
2. odoo-watchdog's nginx router (render the upstream it owns, `nginx -t`, reload, read back).
3. The runbook's way: `sed -i` on the nginx conf, `nginx -t`, `nginx -s reload` from bash.

Each proxy fronts the same two Odoo stand-ins and gets constant load from a separate process
(8 concurrent clients, new connection per request, no cookies) while the split flips
100/0 <-> 0/100 `--switches` times. Printed per way: the time the switch call takes, the
time until the new colour serves (the first request sent after the call started that the new
colour answered), the time until the old colour serves no request sent after the call
started, and the failed requests.

    .venv/bin/python bench/bench_switch.py [--switches 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from watchdog.config import SiteConfig
from watchdog.lab.haproxy import HaproxyLab
from watchdog.lab.load import Sample, read_samples
from watchdog.lab.nginx import NginxLab
from watchdog.lab.standin import StandinProcess
from watchdog.routers import create

VERBOSE = False
Switch = Callable[[str], Awaitable[None]]  # switch(to_color)


@dataclass
class Result:
    name: str
    calls: list[float] = field(default_factory=list)
    first_new: list[float] = field(default_factory=list)
    last_old: list[float] = field(default_factory=list)
    failed: int = 0
    requests: int = 0


def colors_site(blue: StandinProcess, green: StandinProcess, router: dict[str, object],
                servers: tuple[str, str]) -> SiteConfig:
    return SiteConfig.model_validate({
        "router": router,
        "colors": {"blue": {"server": servers[0], "url": blue.url},
                   "green": {"server": servers[1], "url": green.url}},
    })


async def measure(name: str, url: str, switch: Switch, switches: int, workdir: Path) -> Result:
    """Load from a separate process (as users are), switches timed in this one. Both read
    CLOCK_MONOTONIC, which is system-wide, so their times compare."""
    result = Result(name)
    out = workdir / f"load-{len(name)}-{time.monotonic_ns()}.jsonl"
    load = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "watchdog.lab.load", url, "--concurrency", "8",
        "--seconds", "600", "--out", str(out))
    await asyncio.sleep(1.5)
    marks: list[tuple[float, str, str]] = []
    to = "green"
    for _ in range(switches):
        old = "blue" if to == "green" else "green"
        t0 = time.monotonic()
        await switch(to)
        result.calls.append(time.monotonic() - t0)
        marks.append((t0, to, old))
        await asyncio.sleep(0.6)  # steady load after the switch
        to = old
    end = time.monotonic()
    load.terminate()
    await load.wait()
    samples = [s for s in read_samples(str(out)) if marks[0][0] <= s.at - s.latency <= end]
    for index, (t0, new_color, old) in enumerate(marks):
        t_next = marks[index + 1][0] if index + 1 < len(marks) else end
        # Requests sent in the last 50 ms before the next switch may reach the proxy after it:
        # leave them out, or they would count as the old colour still serving.
        after: list[Sample] = [s for s in samples if t0 <= s.at - s.latency < t_next - 0.05]
        new = [s.at - t0 for s in after if s.color == new_color]
        stale = [s.at - s.latency - t0 for s in after if s.color == old]
        result.first_new.append(min(new) if new else float("nan"))
        result.last_old.append(max(stale) if stale else 0.0)
        if VERBOSE:
            late = sorted(round(v * 1000) for v in stale)
            print(f"  switch to {new_color}: {len(after)} requests, {len(stale)} to {old} "
                  f"(started +{late[:3]}..{late[-3:]} ms)" if stale else
                  f"  switch to {new_color}: {len(after)} requests, none to {old}")
    result.failed = sum(1 for s in samples if s.failed)
    result.requests = len(samples)
    return result


def runbook_switch(upstream_file: Path, lab: NginxLab, ports: dict[str, int]) -> Switch:
    """The runbook's nginx_switch_traffic.sh, pointed at the lab's files."""
    script = (
        'set -e\nPORT=$1\n'
        'sed -i "s/server 127.0.0.1:[0-9]\\+;/server 127.0.0.1:$PORT;/" "$2"\n'
        f'{lab.test_command} 2>/dev/null\n'
        f'{lab.reload_command}\n'
    )

    async def switch(to: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            "bash", "-c", script, "switch", str(ports[to]), str(upstream_file),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        if await proc.wait() != 0:
            raise RuntimeError("runbook switch failed")

    return switch


def ms(values: list[float], q: float) -> str:
    clean = sorted(v for v in values if v == v)
    if not clean:
        return "n/a"
    index = min(len(clean) - 1, int(q * len(clean)))
    return f"{clean[index] * 1000:.1f}"


async def run(switches: int, workdir: Path) -> list[Result]:
    blue = StandinProcess("blue", workdir / "blue").start()
    green = StandinProcess("green", workdir / "green").start()
    labs: list[HaproxyLab | NginxLab] = []
    try:
        hap = HaproxyLab(workdir / "haproxy", blue.port, green.port)
        labs.append(hap.start())
        hap_router = create("odoo", colors_site(
            blue, green, {"kind": "haproxy", "socket": str(hap.admin_socket), "backend": "odoo",
                          "state_file": str(hap.state_file)}, ("odoo-blue", "odoo-green")))

        ours_file = workdir / "nginx-ours" / "upstream.conf"
        ours_file.parent.mkdir(parents=True)
        ours_file.write_text(f"upstream odoo {{ server 127.0.0.1:{blue.port}; }}\n")
        ours = NginxLab(workdir / "nginx-ours", ours_file)
        labs.append(ours.start())
        ngx_router = create("odoo", colors_site(
            blue, green, {"kind": "nginx", "upstream_file": str(ours_file), "upstream": "odoo",
                          "test": ours.test_command, "reload": ours.reload_command},
            (f"127.0.0.1:{blue.port}", f"127.0.0.1:{green.port}")))
        await ngx_router.set_weights({"blue": 100, "green": 0})

        theirs_file = workdir / "nginx-runbook" / "upstream.conf"
        theirs_file.parent.mkdir(parents=True)
        theirs_file.write_text(f"upstream odoo {{\n    server 127.0.0.1:{blue.port};\n}}\n")
        theirs = NginxLab(workdir / "nginx-runbook", theirs_file)
        labs.append(theirs.start())

        def weights(to: str) -> dict[str, int]:
            return {"blue": 100 if to == "blue" else 0, "green": 100 if to == "green" else 0}

        async def hap_switch(to: str) -> None:
            await hap_router.set_weights(weights(to))

        async def ngx_switch(to: str) -> None:
            await ngx_router.set_weights(weights(to))

        results = []
        print("measuring: odoo-watchdog HAProxy router ...", flush=True)
        results.append(await measure("odoo-watchdog HAProxy router", hap.url, hap_switch,
                                     switches, workdir))
        print("measuring: odoo-watchdog nginx router ...", flush=True)
        results.append(await measure("odoo-watchdog nginx router", ours.url, ngx_switch,
                                     switches, workdir))
        print("measuring: runbook sed -i + nginx -s reload ...", flush=True)
        results.append(await measure(
            "runbook: sed -i + nginx reload", theirs.url,
            runbook_switch(theirs_file, theirs, {"blue": blue.port, "green": green.port}),
            switches, workdir))
        await hap_router.close()
        await ngx_router.close()
        return results
    finally:
        for lab in labs:
            lab.stop()
        blue.stop()
        green.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--switches", type=int, default=20)
    parser.add_argument("--verbose", action="store_true", help="per-switch figures")
    args = parser.parse_args()
    global VERBOSE
    VERBOSE = args.verbose
    with tempfile.TemporaryDirectory(prefix="bench-switch-") as tmp:
        results = asyncio.run(run(args.switches, Path(tmp)))
    print()
    print(f"{args.switches} switches 100/0 <-> 0/100 per way, constant load of 8 concurrent "
          "clients (new connection per request); times in ms")
    head = (f"{'way':<32}{'call p50':>9}{'call p95':>9}{'new serves p50':>15}"
            f"{'old gone p50':>13}{'old gone max':>13}{'failed':>8}{'requests':>10}")
    print(head)
    for r in results:
        if args.verbose:
            print(r.name, [round(v * 1000, 1) for v in r.last_old])
        print(f"{r.name:<32}{ms(r.calls, 0.5):>9}{ms(r.calls, 0.95):>9}"
              f"{ms(r.first_new, 0.5):>15}{ms(r.last_old, 0.5):>13}{ms(r.last_old, 1.0):>13}"
              f"{r.failed:>8}{r.requests:>10}")
    hap = results[0]
    p50 = statistics.median(hap.calls) * 1000
    served = statistics.median(v for v in hap.first_new if v == v) * 1000
    verdict = "met" if p50 <= 5 and served <= 50 and hap.failed == 0 else "NOT met"
    print(f"\ngoal for HAProxy (call p50 <= 5 ms, new split served within 50 ms, 0 failed): "
          f"{verdict} (call p50 {p50:.1f} ms, new colour serves after {served:.1f} ms, "
          f"{hap.failed} failed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
