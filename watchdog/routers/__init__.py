"""Traffic switches, one module per `router.kind`, behind one `Router` protocol."""

from watchdog.routers import haproxy, multi, nginx, traefik
from watchdog.routers.base import (
    Router,
    RouterError,
    ServerHealth,
    Weights,
    WeightsError,
    format_weights,
    parse_weights,
    validate_weights,
)
from watchdog.routers.haproxy import HaproxyRouterConfig
from watchdog.routers.multi import MultiRouter, NodeRouter, NodesDisagree, NodeStatus
from watchdog.routers.nginx import NginxRouterConfig
from watchdog.routers.registry import RouterConfig, create
from watchdog.routers.traefik import TraefikRouterConfig

__all__ = [
    "HaproxyRouterConfig",
    "MultiRouter",
    "NginxRouterConfig",
    "NodeRouter",
    "NodeStatus",
    "NodesDisagree",
    "Router",
    "RouterConfig",
    "RouterError",
    "ServerHealth",
    "TraefikRouterConfig",
    "Weights",
    "WeightsError",
    "create",
    "format_weights",
    "haproxy",
    "multi",
    "nginx",
    "parse_weights",
    "traefik",
    "validate_weights",
]
