"""Measurement sources, one module per `source:` kind, behind one small protocol."""

from watchdog.sources import http, logs, prometheus, traffic
from watchdog.sources.base import (
    Source,
    Target,
    create,
    create_all,
    kinds,
    measure_all,
    register,
)

__all__ = [
    "Source",
    "Target",
    "create",
    "create_all",
    "http",
    "kinds",
    "logs",
    "measure_all",
    "prometheus",
    "register",
    "traffic",
]
