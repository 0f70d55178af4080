"""The checks a rollout waits for before traffic moves, and the failback probe.

Preflight: the candidate must not be DOWN in the proxy's own checks; the live colour must
answer its health check (a rollout from a sick live colour
would be judged against a broken baseline), then the candidate runs the site's `smoke` checks
(docs/rollouts.md, `watchdog.smoke`). The result goes into the next tick as input: the
state machine never does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from watchdog import odoo
from watchdog.config import SiteConfig
from watchdog.rollout import Preflight, Rollout, SiteState
from watchdog.routers import ServerHealth
from watchdog.smoke import Credentials, SmokeReport, run_smoke

__all__ = ["SmokePreflight", "previous_healthy", "run"]


@dataclass(frozen=True)
class SmokePreflight(Preflight):
    """A Preflight with each smoke check's result (`report`), for the metric and views."""

    report: SmokeReport | None = None

    @property
    def sessions_shared(self) -> bool | None:
        """For odoo_watchdog_sessions_shared{site}: None when the sessions check did not
        find out (not listed, off, skipped, or it could not log in)."""
        return self.report.sessions_shared if self.report is not None else None

    def checks(self) -> list[dict[str, Any]]:
        """[{check, status, seconds, detail}] in the order run."""
        return self.report.view() if self.report is not None else []


async def run(site: SiteConfig, rollout: Rollout,
              proxy: Mapping[str, ServerHealth] | None = None,
              credentials: Credentials | None = None) -> SmokePreflight:
    """`proxy`: the proxy's own check of each colour; a candidate it marks DOWN would get no
    traffic whatever the weights say, so preflight fails on it. `credentials`: the site's
    smoke user (`smoke.SmokeCredentials.get`), for `workflow` and `sessions`."""
    seen = (proxy or {}).get(rollout.candidate)
    if seen is not None and seen.down:
        return SmokePreflight(False, f"the proxy marks {rollout.candidate} {seen.describe()}")
    live_ok, live_detail = await odoo.smoke(site.colors[rollout.live].url, ["health"])
    if not live_ok:
        return SmokePreflight(False, f"live {rollout.live} is not healthy: {live_detail}")
    report = await run_smoke(site, rollout.live, rollout.candidate, rollout.id, credentials)
    return SmokePreflight(report.ok, f"{rollout.candidate}: {report.detail()}", report)


async def previous_healthy(site: SiteConfig, state: SiteState, now: float) -> bool | None:
    """Whether the colour kept warm after a promotion still answers; None outside its window
    (then failback is not an option and nothing is probed)."""
    if state.previous is None or not state.can_fail_back(now):
        return None
    healthy, _ = await odoo.check_health_url(site.colors[state.previous].url)
    return healthy
