"""Traefik: a weighted service in a file-provider dynamic file that the daemon owns.

Traefik (v2 and v3) watches the directory of its file provider and applies a changed file by
itself, so a change of split is one atomic file replacement: no reload command, no API call.
The file holds `http.services.<service>.weighted` (the split) and, for each colour whose
`server` has no `@provider` suffix, a `loadBalancer` service pointing at the colour's `url`.
A name like `odoo-blue@docker` is defined by another provider and only referenced here.

Routers belong in another file of the same directory (see `deploy/traefik/`): this file is
rewritten whole on every change.

Weight 0: Traefik's docs give no meaning to a weight of 0 in a weighted service. Its
weighted round robin (pkg/server/service/loadbalancer/wrr) accepts the value but skips any
child whose weight is not positive, and an omitted weight means 1. So a colour at 0% is left
out of the list rather than written as `weight: 0`: same effect, and no reliance on a
decoder telling 0 from "unset". Its loadBalancer service stays defined, so that it can be
put back by changing only the list.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from watchdog.routers.base import (
    RouterConfigBase,
    RouterError,
    ServerHealth,
    Weights,
    percentages,
    validate_weights,
)
from watchdog.routers.files import OwnedFile
from watchdog.schema import COLORS

if TYPE_CHECKING:
    from watchdog.config import ColorConfig, SiteConfig

__all__ = ["TraefikRouter", "TraefikRouterConfig", "render_dynamic"]

HEADER = """\
# Managed by odoo-watchdog for site {site!r}: the weighted service {service!r} and the
# services of its colours. Rewritten whole on every change of the split; do not edit, and keep
# routers and middlewares in another file of this directory. A colour at 0% is left out of
# `weighted.services` (Traefik skips weights of 0 anyway).
# split: {split}
"""


class TraefikRouterConfig(RouterConfigBase):
    """A weighted service in a file-provider dynamic file; `server` is each colour's service."""

    kind: Literal["traefik"]
    dynamic_file: Path
    service: str
    sticky_cookie: str | None = None

    @property
    def backend(self) -> str:
        return self.service

    def create(self, site_name: str, site: SiteConfig) -> TraefikRouter:
        return TraefikRouter(site_name, site)


def render_dynamic(
    service: str,
    colors: Mapping[str, ColorConfig],
    weights: Mapping[str, int],
    sticky_cookie: str | None,
) -> dict[str, Any]:
    """The dynamic configuration, as the data structure that is written as YAML."""
    weighted: dict[str, Any] = {
        "services": [
            {"name": colors[color].server, "weight": weights[color]}
            for color in COLORS
            if weights[color] > 0
        ]
    }
    if sticky_cookie:
        weighted["sticky"] = {"cookie": {"name": sticky_cookie, "httpOnly": True}}
    services: dict[str, Any] = {service: {"weighted": weighted}}
    for color in COLORS:
        spec = colors[color]
        if "@" not in spec.server:
            services[spec.server] = {"loadBalancer": {"servers": [{"url": spec.url}]}}
    return {"http": {"services": services}}


class TraefikRouter:
    """The `Router` of a Traefik weighted service kept in `router.dynamic_file`."""

    kind = "traefik"

    def __init__(self, site_name: str, site: SiteConfig) -> None:
        router = site.router
        if not isinstance(router, TraefikRouterConfig):
            raise RouterError(f"site {site_name!r}: router kind is {router.kind}, not traefik")
        if "@" in router.service or not router.service.strip():
            raise RouterError(
                f"site {site_name!r}: router.service {router.service!r} is defined in this "
                "file, so it cannot name another provider with '@'"
            )
        self.site_name = site_name
        self.path = Path(router.dynamic_file)
        self.file = OwnedFile(self.path, site_name, "dynamic file")
        self.service = router.service
        self.sticky_cookie = router.sticky_cookie
        self.colors = {color: site.colors[color] for color in COLORS}
        self._by_server = {spec.server: color for color, spec in self.colors.items()}

    def __repr__(self) -> str:
        return f"TraefikRouter(site={self.site_name!r}, file={str(self.path)!r})"

    def render(self, weights: Mapping[str, int]) -> str:
        data = render_dynamic(self.service, self.colors, weights, self.sticky_cookie)
        split = " ".join(f"{c}={weights[c]}" for c in COLORS)
        header = HEADER.format(site=self.site_name, service=self.service, split=split)
        return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)

    async def get_weights(self) -> Weights:
        text = self.file.read_text()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RouterError(f"{self.path} is not valid YAML: {exc}") from None
        return self._weights_of(data)

    def _weights_of(self, data: object) -> Weights:
        where = f"{self.path}: http.services.{self.service}.weighted.services"
        try:
            entries = data["http"]["services"][self.service]["weighted"]["services"]  # type: ignore[index]
        except (KeyError, TypeError):
            raise RouterError(
                f"{self.path} has no weighted service {self.service!r} "
                f"(http.services.{self.service}.weighted.services)"
            ) from None
        if not isinstance(entries, list):
            raise RouterError(f"{where} is not a list")
        raw = {color: 0 for color in COLORS}
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise RouterError(f"{where}: entry without a name: {entry!r}")
            color = self._by_server.get(entry["name"])
            if color is None:
                known = ", ".join(f"{c}={s.server}" for c, s in self.colors.items())
                raise RouterError(
                    f"{where}: service {entry['name']!r} is no colour of site "
                    f"{self.site_name!r} ({known})"
                )
            weight = entry.get("weight", 1)  # Traefik's default weight is 1
            if isinstance(weight, bool) or not isinstance(weight, int):
                raise RouterError(f"{where}: weight of {entry['name']!r} is {weight!r}")
            raw[color] += max(weight, 0)  # Traefik skips non-positive weights
        return percentages(raw)

    async def set_weights(self, weights: Mapping[str, int], *, drain: bool = False) -> Weights:
        """Write the file atomically and read it back.

        `drain` changes nothing: a colour left out of the weighted list loses its sticky users
        at once, because Traefik ignores a sticky cookie naming a child it no longer has.
        """
        wanted = validate_weights(weights)
        return await self.file.replace(self.render(wanted).encode(), wanted, self.get_weights)

    async def check(self) -> None:
        self.file.check_writable()
        if self.path.exists():
            await self.get_weights()

    async def health(self) -> dict[str, ServerHealth]:
        return {}  # no active checks: a failing server is seen by the rules, not here

    async def settle(self) -> None:
        return None  # nothing of this router's outlives a switch

    async def close(self) -> None:
        return None
