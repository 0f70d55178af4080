"""The one list of router kinds: `router.kind` in the config picks one of these models.

Adding a kind is a module beside `haproxy.py` (its `XRouterConfig` model with `kind`,
`backend` and `create()`, and its router class) plus one name in `RouterConfig` here. A kind
with several proxy nodes per site (HAProxy's `sockets`) returns a `multi.MultiRouter` of
one router per node from its `create()`: still one `Router`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from watchdog.routers.base import Router
from watchdog.routers.haproxy import HaproxyRouterConfig
from watchdog.routers.nginx import NginxRouterConfig
from watchdog.routers.traefik import TraefikRouterConfig

if TYPE_CHECKING:
    from watchdog.config import SiteConfig

__all__ = ["AnyRouterConfig", "RouterConfig", "create"]

AnyRouterConfig = HaproxyRouterConfig | NginxRouterConfig | TraefikRouterConfig
RouterConfig = Annotated[AnyRouterConfig, Field(discriminator="kind")]


def create(site_name: str, site: SiteConfig) -> Router:
    """The router of a site, of the kind its config names."""
    return site.router.create(site_name, site)
