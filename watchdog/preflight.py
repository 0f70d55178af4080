"""The checks a rollout waits for before traffic moves, and the failback probe.

Preflight: the candidate must not be DOWN in the proxy's own checks; the live colour must
answer its health check (a rollout from a sick live colour
would be judged against a broken baseline), then the candidate runs the site's `smoke` checks
(docs/rollouts.md). The result goes into the next tick as input: the
state machine never does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping

from watchdog import odoo
from watchdog.config import SiteConfig
from watchdog.rollout import Preflight, Rollout, SiteState
from watchdog.routers import ServerHealth


async def run(site: SiteConfig, rollout: Rollout,
              proxy: Mapping[str, ServerHealth] | None = None) -> Preflight:
    """`proxy`: the proxy's own check of each colour; a candidate it marks DOWN would get no
    traffic whatever the weights say, so preflight fails on it."""
    seen = (proxy or {}).get(rollout.candidate)
    if seen is not None and seen.down:
        return Preflight(False, f"the proxy marks {rollout.candidate} {seen.describe()}")
    live_ok, live_detail = await odoo.smoke(site.colors[rollout.live].url, ["health"])
    if not live_ok:
        return Preflight(False, f"live {rollout.live} is not healthy: {live_detail}")
    ok, detail = await odoo.smoke(site.colors[rollout.candidate].url, site.rollout.smoke)
    return Preflight(ok, f"{rollout.candidate}: {detail}")


async def previous_healthy(site: SiteConfig, state: SiteState, now: float) -> bool | None:
    """Whether the colour kept warm after a promotion still answers; None outside its window
    (then failback is not an option and nothing is probed)."""
    if state.previous is None or not state.can_fail_back(now):
        return None
    healthy, _ = await odoo.check_health_url(site.colors[state.previous].url)
    return healthy
