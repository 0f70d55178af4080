"""Alertmanager webhooks (payload version 4) as rules: a firing alert for a colour is a firing
rule `alert:<alertname>` of that colour until Alertmanager says it is resolved.

Pure bookkeeping, no I/O: the API parses and validates the payload here, the daemon asks for
the alert rules of a site and colour at every tick. Duplicates (Alertmanager re-sends a group
every `group_interval` and retries failed sends) are recognised by fingerprint and status.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from watchdog.config import COLORS
from watchdog.rollout import RuleView
from watchdog.rules import State

MAX_ALERTS = 1000  # per payload; Alertmanager's max_alerts, 0 by default, means "all"


class PayloadError(ValueError):
    """A payload this daemon will never accept (the webhook's 400: Alertmanager won't retry)."""


@dataclass(frozen=True)
class Alert:
    fingerprint: str
    name: str
    site: str
    color: str | None  # None: the site's candidate during a rollout, else its live colour
    status: str  # firing | resolved
    starts_at: str
    summary: str


@dataclass
class Receipt:
    """What one webhook did, for the API's answer and the metrics."""

    firing: list[Alert] = field(default_factory=list)
    resolved: list[Alert] = field(default_factory=list)
    duplicates: int = 0
    unknown_site: int = 0
    unmatched: int = 0

    @property
    def sites(self) -> set[str]:
        return {a.site for a in self.firing + self.resolved}

    def as_dict(self) -> dict[str, Any]:
        return {"firing": len(self.firing), "resolved": len(self.resolved),
                "duplicates": self.duplicates, "unknown_site": self.unknown_site,
                "unmatched": self.unmatched}


def parse(payload: Any) -> list[dict[str, Any]]:
    """The alerts of a version-4 payload, each checked; PayloadError names what is wrong."""
    if not isinstance(payload, dict):
        raise PayloadError("payload must be a JSON object")
    version = payload.get("version")
    if version != "4":
        raise PayloadError(f"unsupported payload version {version!r}: this receiver takes "
                           "Alertmanager's version \"4\"")
    alerts = payload.get("alerts")
    if not isinstance(alerts, list):
        raise PayloadError("field 'alerts' must be a list")
    if len(alerts) > MAX_ALERTS:
        raise PayloadError(f"{len(alerts)} alerts in one payload; at most {MAX_ALERTS}")
    for index, alert in enumerate(alerts):
        where = f"alerts[{index}]"
        if not isinstance(alert, dict):
            raise PayloadError(f"{where} must be an object")
        if alert.get("status") not in ("firing", "resolved"):
            raise PayloadError(f"{where}.status must be firing or resolved, "
                               f"got {alert.get('status')!r}")
        labels = alert.get("labels")
        if not isinstance(labels, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise PayloadError(f"{where}.labels must be an object of strings")
        if not labels.get("alertname"):
            raise PayloadError(f"{where}.labels has no alertname")
        for key in ("fingerprint", "startsAt"):
            if key in alert and not isinstance(alert[key], str):
                raise PayloadError(f"{where}.{key} must be a string")
        annotations = alert.get("annotations", {})
        if not isinstance(annotations, dict):
            raise PayloadError(f"{where}.annotations must be an object")
        texts = [*labels, *labels.values(), alert.get("fingerprint", ""),
                 alert.get("startsAt", ""), str(annotations.get("summary", ""))]
        for text in texts:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise PayloadError(f"{where} holds a string that is not valid Unicode "
                                   "(a lone surrogate)") from None
    return alerts


def fingerprint(labels: Mapping[str, str]) -> str:
    """Alertmanager sends one; this stands in when a hand-made payload has none."""
    text = "\0".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class AlertBook:
    """The alerts firing now, by site and fingerprint."""

    def __init__(self) -> None:
        self.firing: dict[str, dict[str, Alert]] = {}
        self._seen: dict[str, tuple[str, str]] = {}  # fingerprint -> (status, startsAt)

    def receive(self, payload: Any, sites: set[str], match: Mapping[str, str]) -> Receipt:
        receipt = Receipt()
        for raw in parse(payload):
            labels: dict[str, str] = raw["labels"]
            if any(labels.get(k) != v for k, v in match.items()):
                receipt.unmatched += 1
                continue
            site = labels.get("site")
            if site not in sites:
                receipt.unknown_site += 1
                continue
            color = labels.get("color")
            alert = Alert(
                fingerprint=raw.get("fingerprint") or fingerprint(labels),
                name=labels["alertname"], site=site,
                color=color if color in COLORS else None, status=raw["status"],
                starts_at=raw.get("startsAt", ""),
                summary=str(raw.get("annotations", {}).get("summary", ""))[:200],
            )
            seen = (alert.status, alert.starts_at)
            if self._seen.get(alert.fingerprint) == seen:
                receipt.duplicates += 1
                continue
            self._seen[alert.fingerprint] = seen
            book = self.firing.setdefault(site, {})
            if alert.status == "firing":
                book[alert.fingerprint] = alert
                receipt.firing.append(alert)
            else:
                book.pop(alert.fingerprint, None)
                receipt.resolved.append(alert)
        if len(self._seen) > 100_000:  # bounded memory whatever Alertmanager sends
            self._seen = {fp: self._seen[fp] for book in self.firing.values() for fp in book}
        return receipt

    def views(self, site: str, color: str, on_fire: str) -> dict[str, RuleView]:
        """The site's firing alerts for `color` (alerts without a colour count for any)."""
        out: dict[str, RuleView] = {}
        for alert in self.firing.get(site, {}).values():
            if alert.color not in (None, color):
                continue
            name = f"alert:{alert.name}"
            out[name] = RuleView(name, State.FIRING, on_fire, None, "alert firing",
                                 alert.summary or f"Alertmanager alert {alert.name} firing")
        return out
