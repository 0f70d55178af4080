"""What the access-log tests share: real datagrams to a running receiver, and its metrics read
back by name, from a registry or from the text of a real scrape."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from watchdog.accesslog import AccessLogReceiver
from watchdog.lab.load import LoadClient, Sample

Exposition = CollectorRegistry | str  # a registry, or what its /metrics answered


def family_samples(metrics: Exposition, family: str) -> dict[tuple[str, tuple[tuple[str, str],
                                                                               ...]], float]:
    """Every sample of `family` by (sample name, sorted labels); the family must be declared."""
    collected = (text_string_to_metric_families(metrics) if isinstance(metrics, str)
                 else metrics.collect())
    families = [f for f in collected if f.name == family]
    assert families, f"{family} is not on the registry"
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in families for s in f.samples}


def requests_by_color(metrics: Exposition, site: str = "odoo") -> dict[str, float]:
    """odoo_watchdog_http_requests_total of `site`, summed over the codes, by colour."""
    out: dict[str, float] = {}
    for (name, labels), value in family_samples(metrics, "odoo_watchdog_http_requests").items():
        tags = dict(labels)
        if name.endswith("_total") and tags["site"] == site:
            out[tags["color"]] = out.get(tags["color"], 0.0) + value
    return out


def durations_counted(metrics: Exposition) -> float:
    """The _count of odoo_watchdog_http_request_duration_seconds over every series."""
    return sum(value for (name, _), value in
               family_samples(metrics, "odoo_watchdog_http_request_duration_seconds").items()
               if name.endswith("_count"))


def lines_counted(metrics: Exposition) -> dict[str, float]:
    """odoo_watchdog_access_log_lines_total by result."""
    return {dict(labels)["result"]: value for (_, labels), value in
            family_samples(metrics, "odoo_watchdog_access_log_lines").items()}


def kernel_drops_counted(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("odoo_watchdog_access_log_kernel_drops_total")


def by_color(samples: list[Sample]) -> dict[str, int]:
    """The requests the load client saw answered by each colour (`X-Odoo-Color`)."""
    assert samples, "the load client sent nothing"
    out = {"blue": 0, "green": 0}
    for s in samples:
        if s.color in out:
            out[s.color] += 1
    return out


async def settle(receiver: AccessLogReceiver, quiet: float = 0.5, timeout: float = 10) -> None:
    """Until no datagram has arrived for `quiet` seconds (or `timeout`)."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        if receiver.received != last:
            last, since = receiver.received, time.monotonic()


async def send(receiver: AccessLogReceiver, datagrams: Iterable[bytes],
               timeout: float = 5) -> None:
    """Send `datagrams` over UDP to the running receiver and wait until it has them all."""
    host, port = receiver.address
    expected = receiver.received
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for datagram in datagrams:
            sender.sendto(datagram, (host, port))
            expected += 1
    deadline = time.monotonic() + timeout
    while receiver.received < expected:
        assert time.monotonic() < deadline, (receiver.stats(), expected)
        await asyncio.sleep(0.01)


async def check_counts_per_color(receiver: AccessLogReceiver, registry: CollectorRegistry,
                                 proxy_url: str, requests: int) -> dict[str, float]:
    """Send `requests` requests through the proxy (split 50/50), 8 at a time, and wait for
    their lines: the registry counts, per colour, the requests the client saw answered by it
    within 1% (UDP may lose lines; loopback should not), and has the receiver's own counts.
    Returns the counts per colour."""
    async with LoadClient(proxy_url, "/web/health", concurrency=8, max_requests=requests,
                          max_seconds=40) as load:
        await load.wait_count(requests, timeout=40)
    await settle(receiver)
    samples = load.samples
    seen = by_color(samples)
    counted = {color: requests_by_color(registry).get(color, 0.0) for color in seen}
    print(f"\nclient saw {seen}, receiver counted {counted}, {receiver.stats()}")
    assert sum(seen.values()) >= requests, samples[-3:]
    assert [s for s in samples if s.failed] == []
    for color in seen:
        assert seen[color] > requests * 0.4  # the 50/50 split took effect
        assert abs(counted[color] - seen[color]) <= 0.01 * seen[color], (seen, counted)
    assert lines_counted(registry) == {"received": receiver.received,
                                       "unparsed": receiver.unparsed,
                                       "unmapped": receiver.unmapped}
    assert receiver.received >= sum(counted.values())
    assert kernel_drops_counted(registry) == receiver.kernel_drops()
    return counted
