"""Mapping access-log lines to (site, colour): what the proxy logs for each colour.

HAProxy's `backend/server` is matched by each site's router `backend` and each colour's
`server`; nginx's `$upstream_addr` (host:port, the last one tried) by the colour's `server`.
A colour whose `server` is a host name is also known by the addresses it resolves to when the
receiver starts (`resolve_aliases`), since nginx logs the address it connected to.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Mapping

import structlog

from watchdog.accesslog_parse import Format
from watchdog.config import DaemonConfig

__all__ = ["address", "resolve_aliases", "routes_from_config"]

log = structlog.get_logger("odoo_watchdog.accesslog")


def routes_from_config(config: DaemonConfig, fmt: Format) -> dict[str, tuple[str, str]]:
    """What the proxy logs for each colour → (site, colour).

    HAProxy: `backend/server`; nginx: the colour's `server` (its upstream address).
    """
    routes: dict[str, tuple[str, str]] = {}
    for site_name, site in config.sites.items():
        for color, spec in site.colors.items():
            key = f"{site.backend}/{spec.server}" if fmt == "haproxy" else spec.server
            if key in routes and routes[key] != (site_name, color):
                log.warning("access_log_route_ambiguous", key=key, kept=routes[key],
                            dropped=(site_name, color))
                continue
            routes[key] = (site_name, color)
    return routes


async def resolve_aliases(
    routes: Mapping[str, tuple[str, str]], timeout: float = 5.0,
) -> dict[str, tuple[str, str]]:
    """The addresses (`ip:port`, as nginx logs them) of the routes whose server is a host name
    → their (site, colour). A name that does not resolve is logged and left out."""
    loop = asyncio.get_running_loop()
    aliases: dict[str, tuple[str, str]] = {}
    for key, target in routes.items():
        split = _split_host_port(key)
        if split is None or _is_ip(split[0]):
            continue
        host, port = split
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, int(port), type=socket.SOCK_STREAM), timeout=timeout)
        except (OSError, TimeoutError) as exc:
            log.warning("access_log_resolve_failed", server=key, error=str(exc))
            continue
        for info in infos:
            aliases.setdefault(address(str(info[4][0]), port), target)
    return aliases


def address(ip: str, port: str) -> str:
    """host:port, with the brackets an IPv6 address needs."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _split_host_port(key: str) -> tuple[str, str] | None:
    host, sep, port = key.rpartition(":")
    if not sep or not port.isdigit() or not host or host.startswith("unix"):
        return None
    return host.strip("[]"), port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
