"""`make demo`: the lab, live. Real Prometheus, two Odoo stand-ins, constant load, and the rule
evaluator ticking every second against the green colour while faults are injected into it.

Until the rollout engine exists, this shows the part that decides: rules measured by their real
sources, judged by the evaluator, going ok -> pending -> firing -> ok, with the reason printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from watchdog.config import HttpRule, PrometheusRule
from watchdog.lab.prometheus import PrometheusLab, ScrapeJob
from watchdog.lab.standin import StandinProcess, aset_faults
from watchdog.rules import RuleStatus, State, evaluate
from watchdog.sources.base import Target
from watchdog.sources.http import HttpSource
from watchdog.sources.prometheus import PrometheusSource

DEMO_RULES: list[Any] = [
    PrometheusRule.model_validate({
        "name": "error_rate",
        "source": "prometheus",
        "query": (
            '(sum(rate(odoo_standin_http_requests_total{color="{{ color }}",code=~"5.."}[5s]))'
            " or vector(0))"
            ' / sum(rate(odoo_standin_http_requests_total{color="{{ color }}"}[5s]))'
        ),
        "max": 0.05,
        "for": "5s",
        "on_fire": "rollback",
    }),
    PrometheusRule.model_validate({
        "name": "p95_latency",
        "source": "prometheus",
        "query": (
            "histogram_quantile(0.95, sum by (le) (rate("
            'odoo_standin_http_request_duration_seconds_bucket{color="{{ color }}"}[5s])))'
        ),
        "max": 0.5,
        "for": "5s",
    }),
    HttpRule.model_validate({
        "name": "health", "source": "http", "path": "/web/health", "timeout": "1s",
        "min": 1, "for": "3s",
    }),
]


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


class Evaluator:
    """Measure every demo rule for one colour each second and print what changes."""

    def __init__(self, prometheus_url: str, target: Target) -> None:
        self.target = target
        self.sources: dict[str, Any] = {
            "prometheus": PrometheusSource(prometheus_url, timeout=2),
            "http": HttpSource(),
        }
        self.status = {rule.name: RuleStatus() for rule in DEMO_RULES}
        self.first: dict[tuple[str, State], float] = {}

    async def tick(self) -> None:
        results = await asyncio.gather(
            *(self.sources[r.source].measure(r, self.target) for r in DEMO_RULES)
        )
        now = time.monotonic()
        for rule, measurement in zip(DEMO_RULES, results, strict=True):
            before = self.status[rule.name]
            after = evaluate(rule, before, measurement, now)
            self.status[rule.name] = after
            if after.state is not before.state:
                self.first.setdefault((rule.name, after.state), now)
                value = "no data" if after.value is None else f"{after.value:.3g}"
                say(f"  rule {rule.name:<12} {before.state.label:>8} -> {after.state.label:<8}"
                    f" value {value} (threshold {rule.threshold_text()}, for "
                    f"{rule.for_:g}s; {measurement.detail})")

    async def until(self, check: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await self.tick()
            if check():
                return True
            await asyncio.sleep(1.0)
        return False

    def state(self, name: str) -> State:
        return self.status[name].state

    async def close(self) -> None:
        for source in self.sources.values():
            await source.close()


async def load(urls: list[str], stop: asyncio.Event, counts: dict[str, int]) -> None:
    """About 40 requests a second to each colour, as users through the proxy would send."""
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            url = random.choice(urls)
            path = random.choice(["/web/login", "/web/health", "/web/webclient/version_info"])
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                method = "POST" if "version_info" in path else "GET"
                async with session.request(method, url + path, json={} if method == "POST"
                                           else None) as resp:
                    await resp.read()
                    key = "5xx" if resp.status >= 500 else "ok"
                    counts[key] = counts.get(key, 0) + 1
            await asyncio.sleep(0.0125)


async def scenario(workdir: Path) -> int:
    say("odoo-watchdog lab demo: real Prometheus, two Odoo stand-ins, the rule evaluator")
    blue = StandinProcess("blue", workdir, version="16.0")
    green = StandinProcess("green", workdir, version="17.0")
    prometheus: PrometheusLab | None = None
    stop = asyncio.Event()
    counts: dict[str, int] = {}
    loader: asyncio.Task[None] | None = None
    evaluator: Evaluator | None = None
    try:
        for standin in (blue, green):
            standin.start()
            say(f"started Odoo stand-in {standin.color} (version {standin.version}) at "
                f"{standin.url}, pid {standin.pid}")
        prometheus = PrometheusLab(workdir / "prometheus", scrape_interval="1s", jobs=[
            ScrapeJob("odoo-standin", [f"127.0.0.1:{s.port}" for s in (blue, green)],
                      metrics_path="/__lab__/metrics"),
        ])
        prometheus.start()
        say(f"started Prometheus 2.42 at {prometheus.url}, pid {prometheus.pid}, "
            "scraping both stand-ins every 1s")
        loader = asyncio.create_task(load([blue.url, green.url], stop, counts))
        say("sending constant load (~80 requests/s) to both colours")
        target = Target(site="odoo", color="green", server="odoo-green", backend="odoo",
                        url=green.url, interval=1.0)
        evaluator = Evaluator(prometheus.url, target)
        say("rules, evaluated every second for the candidate colour (green):")
        for rule in DEMO_RULES:
            say(f"  {rule.name:<12} {rule.source:<10} breach when not {rule.threshold_text()},"
                f" fires after {rule.for_:g}s")

        say("waiting for every rule to be ok on healthy traffic ...")
        if not await evaluator.until(
            lambda: all(evaluator.state(r.name) is State.OK for r in DEMO_RULES), 30
        ):
            say("rules did not settle to ok within 30s; stopping")
            return 1
        say("all rules ok")

        say("FAULT: injecting 30% HTTP 500 answers into green")
        injected = time.monotonic()
        async with aiohttp.ClientSession() as session:
            await aset_faults(session, green.url, error_rate=0.3)
        fired = await evaluator.until(lambda: evaluator.state("error_rate") is State.FIRING, 40)
        if not fired:
            say("error_rate did not fire within 40s: the demo failed")
            return 1
        pending_at = evaluator.first.get(("error_rate", State.PENDING), injected)
        firing_at = evaluator.first[("error_rate", State.FIRING)]
        say(f"error_rate: pending {pending_at - injected:.1f}s after the fault, firing "
            f"{firing_at - injected:.1f}s after it (for: 5s) -> the daemon would roll back now")

        say("clearing the fault")
        async with aiohttp.ClientSession() as session:
            await aset_faults(session, green.url, error_rate=0.0)
        await evaluator.until(lambda: evaluator.state("error_rate") is State.OK, 30)

        say("FAULT: green goes down (every answer 503, /web/health included)")
        down_at = time.monotonic()
        async with aiohttp.ClientSession() as session:
            await aset_faults(session, green.url, down=True)
        if not await evaluator.until(lambda: evaluator.state("health") is State.FIRING, 30):
            say("health did not fire within 30s: the demo failed")
            return 1
        say(f"health: firing {evaluator.first[('health', State.FIRING)] - down_at:.1f}s after "
            "green went down (for: 3s)")
        async with aiohttp.ClientSession() as session:
            await aset_faults(session, green.url, down=False)
        await evaluator.until(lambda: evaluator.state("health") is State.OK, 20)

        say(f"summary: {counts.get('ok', 0)} requests answered, {counts.get('5xx', 0)} with "
            f"5xx during the faults; error_rate fired {firing_at - injected:.1f}s after 30% 5xx "
            f"began, health fired {evaluator.first[('health', State.FIRING)] - down_at:.1f}s "
            "after green went down")
        return 0
    finally:
        stop.set()
        if loader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await loader
        if evaluator is not None:
            await evaluator.close()
        say("stopping Prometheus and the stand-ins (by pid)")
        if prometheus is not None:
            prometheus.stop()
        blue.stop()
        green.stop()


def run_demo(keep: bool = False) -> int:
    if shutil.which("prometheus") is None:
        print("prometheus is not installed: run `make demo` (it installs it) or "
              "apt-get install -y prometheus", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="odoo-watchdog-demo-"))
    try:
        return asyncio.run(scenario(workdir))
    except KeyboardInterrupt:
        return 130
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
