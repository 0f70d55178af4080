"""The contract of a traffic switch, and what every router kind's config model has.

Like Flagger's router interface: read the split, set the split, check the switch is usable.
Weights are whole percentages per colour that sum to 100; anything else is refused here,
before any router is touched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from watchdog.schema import COLORS, Strict

if TYPE_CHECKING:
    from watchdog.config import ColorConfig, SiteConfig

Weights = dict[str, int]


class RouterError(RuntimeError):
    """The switch refused or failed; the message names the router, backend and server."""


class WeightsError(ValueError):
    """Weights that are not a valid split (unknown colour, out of range, not summing to 100)."""


def validate_weights(weights: Mapping[str, object]) -> Weights:
    unknown = sorted(set(weights) - set(COLORS))
    if unknown:
        raise WeightsError(f"unknown colour {unknown[0]!r}: colours are blue and green")
    out: Weights = {}
    for color in COLORS:
        value = weights.get(color, 0)
        if isinstance(value, bool) or not isinstance(value, int):
            raise WeightsError(f"weight of {color} must be a whole number, got {value!r}")
        if not 0 <= value <= 100:
            raise WeightsError(f"weight of {color} must be between 0 and 100, got {value}")
        out[color] = value
    if sum(out.values()) != 100:
        raise WeightsError(
            f"weights must sum to 100, got blue={out['blue']} + green={out['green']} = "
            f"{sum(out.values())}"
        )
    return out


def parse_weights(text: str) -> Weights:
    """`blue=90,green=10` (the CLI's form); one colour alone implies the other gets the rest."""
    parsed: dict[str, int] = {}
    for part in text.split(","):
        name, sep, raw = part.strip().partition("=")
        if not sep or not raw.strip().lstrip("-").isdigit():
            raise WeightsError(f"expected COLOR=PERCENT, e.g. blue=90,green=10 (got {part!r})")
        parsed[name.strip()] = int(raw)
    if len(parsed) == 1:
        only, weight = next(iter(parsed.items()))
        if only in COLORS:
            other = COLORS[1] if only == COLORS[0] else COLORS[0]
            parsed[other] = 100 - weight
    return validate_weights(parsed)


def format_weights(weights: Mapping[str, int]) -> str:
    return ",".join(f"{color}={weights[color]}" for color in COLORS if color in weights)


def percentages(raw: Mapping[str, float]) -> Weights:
    """Router weights of any scale (HAProxy 0..256, nginx 1..) as percentages summing to 100."""
    total = sum(raw.values())
    if total <= 0:
        raise RouterError("no colour takes traffic: every weight is 0 or in maintenance")
    blue = round(100 * raw.get("blue", 0) / total)
    return {"blue": blue, "green": 100 - blue}


def write_atomic(path: Path, data: bytes, mode: int = 0o644, durable: bool = True) -> None:
    """Replace `path` with `data` so that a reader sees the old or the new file, never half.

    The temp file is in the same directory (rename is atomic only within one file system) and
    its name ends in `.tmp`, so an `include conf.d/*.conf` never picks it up. `durable`
    fsyncs the data and the directory, so the new file also survives a power cut.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if not durable:
        return
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)


def check_writable(path: Path) -> None:
    """The directory of a file a router owns exists and lets us replace the file."""
    directory = path.parent
    if not directory.is_dir():
        raise RouterError(f"the directory of {path} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise RouterError(f"cannot write in {directory} (needed to replace {path.name})")


@dataclass(frozen=True)
class ServerHealth:
    """What the proxy's own health check says of a colour's server.

    `state` is the proxy's word (HAProxy: `UP`, `UP 1/3` while failing checks add up, `DOWN`,
    `DOWN 1/2` while passing ones do, `MAINT`, `DRAIN`, `no check`); `check` the last check's
    result in its words (`L7STS 500: HTTP status check returned code <500>`), empty when the
    proxy runs none (a server in `maint` is not checked).
    """

    state: str
    check: str = ""

    @property
    def down(self) -> bool:
        """The proxy takes this server out for failing its checks (not for maintenance)."""
        return self.state.upper().startswith("DOWN")

    def describe(self) -> str:
        return self.state + (f" ({self.check})" if self.check else "")


class Router(Protocol):
    kind: str

    async def health(self) -> dict[str, ServerHealth]:
        """The proxy's own check of each colour's server, by colour; empty for a switch that
        runs no active checks (nginx open source, a Traefik file provider)."""
        ...

    async def get_weights(self) -> Weights:
        """The split the switch applies now, read from the switch itself."""
        ...

    async def set_weights(self, weights: Mapping[str, int], *, drain: bool = False) -> Weights:
        """Apply `weights`, read them back, raise RouterError on any difference.

        `drain=True` (promotion): a colour going to 0 keeps its sticky users for a while;
        `drain=False` (rollback): it is taken out at once, sticky users included.
        """
        ...

    async def check(self) -> None:
        """Raise RouterError saying what is wrong if the switch cannot be used."""
        ...

    async def settle(self) -> None:
        """Finish what a switch left in progress (HAProxy: a drain whose timer was lost to a
        restart). The daemon calls it on every reconcile."""
        ...

    async def close(self) -> None: ...


class RouterConfigBase(Strict):
    """The config model of one router kind (`router:` of a site), defined in the kind's module.

    Each kind also has `kind: Literal[...]` (the discriminator of `registry.RouterConfig`) and
    `backend`: the name the access log and the rule templates use for the site's backend.
    """

    def check_colors(self, colors: Mapping[str, ColorConfig]) -> None:
        """Raise ValueError when a colour's `server` cannot name a server of this router."""

    def create(self, site_name: str, site: SiteConfig) -> Router:
        """The router of `site`, whose `router` is this config."""
        raise NotImplementedError
