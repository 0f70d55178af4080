"""Screenshots of the web page during a lab rollout, for the README (issue 15).

    python -m watchdog.lab.screenshot OUT.png [--rollout OUT2.png]

Starts a `LabStack` as the demo does (two stand-ins behind HAProxy 2.6, Prometheus scraping
it every second, the daemon ticking every second), sends constant load through the proxy,
starts a canary rollout blue -> green and waits until it is at step 2 of 3 with its rules
measured; then takes a screenshot of `/ui` with headless Chromium (Debian's `chromium`, run
as a program with a throwaway profile and every background service off: it talks to nobody
but the daemon on loopback). With `--rollout`, it lets the rollout promote and takes one of
`/ui/rollouts/{id}` too. Every program it started is stopped before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from watchdog.lab.load import LoadClient
from watchdog.lab.stack import LabStack

__all__ = ["main", "screenshot", "take"]

STEPS = [{"weight": 10, "hold": "5s"}, {"weight": 50, "hold": "20s"}, {"weight": 100}]
FINAL = {"promoted", "rolled_back", "aborted"}
QUIET = ["--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
         "--no-default-browser-check", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-extensions",
         "--disable-default-apps", "--disable-domain-reliability", "--disable-breakpad",
         "--metrics-recording-only", "--hide-scrollbars", "--mute-audio"]


def screenshot(url: str, out: Path, width: int = 1200, height: int = 900,
               budget_ms: int = 3000) -> Path:
    """`url` as a PNG of `width` x `height` after `budget_ms` of the page's virtual time."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise RuntimeError("chromium is not installed (make deps installs it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        done = subprocess.run(
            [chromium, *QUIET, f"--user-data-dir={profile}", f"--window-size={width},{height}",
             f"--virtual-time-budget={budget_ms}", f"--screenshot={out.resolve()}", url],
            capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0 or not out.is_file():
        raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr[-1000:]}")
    return out


async def _until(lab: LabStack, want: Any, timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        view = await asyncio.to_thread(lab.site)
        if want(view):
            return view
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} within {timeout:g}s: phase {view['phase']}")
        await asyncio.sleep(0.2)


def _mid_rollout(view: dict[str, Any]) -> bool:
    ro = view["rollout"] or {}
    if view["phase"] in FINAL:
        raise RuntimeError(f"the rollout ended {view['phase']} before step 2")
    rules = {(r["name"], r["color"]): r for r in view["rules"]}
    measured = [r for r in rules.values() if r["value"] is not None]
    return view["phase"] == "progressing" and ro.get("step") == 2 and len(measured) >= 2


async def take(workdir: Path, out: Path, rollout_out: Path | None = None) -> dict[str, Any]:
    """Runs the lab, takes the screenshot(s); what was shot (ids, steps, phases)."""
    lab = LabStack(workdir, interval="1s", scrape="1s", window="5s", error_for="2s",
                   steps=STEPS, bake="3s")
    taken: dict[str, Any] = {}
    try:
        await asyncio.to_thread(lab.start)
        async with LoadClient(lab.proxy_url, "/web/login", concurrency=4, delay=0.01,
                              max_seconds=120) as load:
            await load.wait_count(20)
            await asyncio.to_thread(lab.client().post, "/api/v1/sites/odoo/rollouts",
                                    {"to": "green", "version": "17.0"})
            view = await _until(lab, _mid_rollout, 60, "step 2 with its rules measured")
            # A few ticks at 50% so the split's rates and the events have settled.
            await asyncio.sleep(3)
            await asyncio.to_thread(screenshot, f"{lab.api_url}/ui", out, 1200, 640)
            after = await asyncio.to_thread(lab.site)
            taken["ui"] = {"path": str(out), "phase": after["phase"],
                           "step": (after["rollout"] or {}).get("step")}
            rid = view["rollout"]["id"]
            if rollout_out is not None:
                await _until(lab, lambda v: v["phase"] in FINAL, 90, "the end of the rollout")
                await asyncio.sleep(1.5)  # the tick after the end is stored too
                await asyncio.to_thread(screenshot, f"{lab.api_url}/ui/rollouts/{rid}",
                                        rollout_out, 1200, 1900)
                taken["rollout"] = {"path": str(rollout_out), "id": rid}
    finally:
        await asyncio.to_thread(lab.stop)
    return taken


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m watchdog.lab.screenshot",
                                     description="screenshots of /ui during a lab rollout")
    parser.add_argument("out", type=Path, help="the PNG of /ui at step 2 of 3")
    parser.add_argument("--rollout", type=Path, default=None,
                        help="also a PNG of /ui/rollouts/{id} once the rollout has ended")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="the lab's directory (default: a temporary one, removed after)")
    args = parser.parse_args(argv)
    try:
        if args.workdir is not None:
            taken = asyncio.run(take(args.workdir, args.out, args.rollout))
        else:
            with tempfile.TemporaryDirectory(prefix="watchdog-shot-") as tmp:
                taken = asyncio.run(take(Path(tmp), args.out, args.rollout))
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for what, info in taken.items():
        size = Path(info["path"]).stat().st_size
        print(f"{what}: {info['path']} ({size // 1024} KiB) {info}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
