"""Traffic switches, one module per `router.kind`, behind one `Router` protocol."""

from watchdog.routers import haproxy, nginx, traefik
from watchdog.routers.base import (
    Router,
    RouterError,
    Weights,
    WeightsError,
    create,
    format_weights,
    kinds,
    parse_weights,
    register,
    validate_weights,
)

__all__ = [
    "Router",
    "RouterError",
    "Weights",
    "WeightsError",
    "create",
    "format_weights",
    "haproxy",
    "kinds",
    "nginx",
    "parse_weights",
    "register",
    "traefik",
    "validate_weights",
]
