"""The contract every measurement source implements, and the registry from `source:` to class.

Like Flagger's metric providers: a source only fetches one value for one rule and one colour.
It never judges (that is `rules.py`) and never raises for a failure of what it measures: an
unreachable Prometheus is a `Measurement` with `error`, not an exception in the tick.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from typing_extensions import TypeVar

from watchdog.durations import format_duration
from watchdog.measurement import Measurement
from watchdog.rulefiles import AnyRule, RuleBase

if TYPE_CHECKING:
    from watchdog.config import DaemonConfig, SiteConfig

# The rule model a source measures. `Source` alone (no [R]) is a source of some rule kind:
# what a registry of every kind holds.
R = TypeVar("R", bound=RuleBase, contravariant=True, default=Any)


@dataclass(frozen=True)
class Target:
    """The colour a rule is measured for, with everything its templates may name."""

    site: str
    color: str
    server: str
    backend: str
    url: str
    interval: float
    container: str | None = None
    log_file: Path | None = None
    syslog: Path | None = None
    # The other colour and its weight in force (None: not known), for the rules that compare
    # the target with it (source: traffic, relative_to / judge).
    peer: str | None = None
    peer_weight: int | None = None

    def variables(self) -> dict[str, str]:
        return {
            "site": self.site,
            "color": self.color,
            "server": self.server,
            "backend": self.backend,
            "url": self.url,
            "container": self.container or "",
            "interval": format_duration(self.interval),
        }

    @classmethod
    def of(cls, name: str, site: SiteConfig, color: str,
           weights: Mapping[str, int] | None = None) -> Target:
        spec = site.colors[color]
        peer = next((c for c in site.colors if c != color), None)
        return cls(
            site=name,
            color=color,
            server=spec.server,
            backend=site.router.backend,
            url=spec.url,
            interval=site.rollout.interval,
            container=spec.container,
            log_file=spec.log_file,
            syslog=spec.syslog,
            peer=peer,
            peer_weight=None if weights is None or peer is None else weights.get(peer, 0),
        )


class Source(Protocol[R]):
    """Measures the rules of one `source:` kind, e.g. `Source[PrometheusRule]`."""

    kind: str

    async def measure(self, rule: R, target: Target) -> Measurement:
        """One measurement of `rule` for `target`; never raises for the measured system's faults."""
        ...

    async def close(self) -> None: ...


SourceFactory = Callable[["DaemonConfig"], Source[R]]
_REGISTRY: dict[str, tuple[type[RuleBase], SourceFactory[Any]]] = {}


def register(
    kind: str, rule: type[R]
) -> Callable[[SourceFactory[R]], SourceFactory[R]]:
    """Make `factory` the source of the rules of model `rule`, whose `source:` is `kind`."""
    def add(factory: SourceFactory[R]) -> SourceFactory[R]:
        _REGISTRY[kind] = (rule, factory)
        return factory

    return add


def kinds() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def create(kind: str, config: DaemonConfig) -> Source:
    try:
        _, factory = _REGISTRY[kind]
    except KeyError:
        raise ValueError(f"no source of kind {kind!r} (known: {', '.join(kinds())})") from None
    return factory(config)


def create_all(config: DaemonConfig) -> dict[str, Source]:
    """One instance of every registered source kind, sharing nothing."""
    return {kind: create(kind, config) for kind in kinds()}


async def measure_all(
    sources: Mapping[str, Source], rules: Sequence[AnyRule], target: Target,
    deadline: float = 30.0,
) -> list[Measurement]:
    """Every rule for one colour, concurrently; a source that overruns `deadline` is an error.

    This is the one place a rule meets its source: by `rule.source`, and only a rule of the
    model the source was registered for. Each source applies its own timeout; `deadline` is
    the backstop that keeps one stuck source from holding up the tick.
    """
    async def one(rule: AnyRule) -> Measurement:
        source = sources.get(rule.source)
        if source is None:
            return Measurement.failed(f"no source {rule.source!r} is running")
        model = _REGISTRY.get(rule.source, (type(rule), None))[0]
        if not isinstance(rule, model):
            return Measurement.failed(f"{rule.source} source measures {model.__name__}, "
                                      f"not {type(rule).__name__}")
        started = time.time()
        try:  # a timeout scope, not wait_for: no second task per rule on every tick
            async with asyncio.timeout(deadline):
                return await source.measure(rule, target)
        except TimeoutError:
            return Measurement.failed(f"{rule.source} source gave no answer in {deadline:g}s",
                                      started, time.time())

    return list(await asyncio.gather(*(one(rule) for rule in rules)))
