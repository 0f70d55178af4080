"""Alertmanager webhooks (payload version 4) as rules: a firing alert for a colour is a firing
rule `alert:<alertname>` of that colour until Alertmanager says it is resolved.

Pure bookkeeping, no I/O: the API parses and validates the payload here, the daemon asks for
the alert rules of a site and colour at every tick. Duplicates (Alertmanager re-sends a group
every `group_interval` and retries failed sends) are recognised by fingerprint and status.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from watchdog import payloads
from watchdog.config import COLORS
from watchdog.rollout import RuleView
from watchdog.rules import State

MAX_SEEN = 5_000  # fingerprints remembered to tell duplicates, besides the firing ones
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
    ends_at: float | None = None  # when Alertmanager will call it resolved; None: no end set

    def expired(self, now: float) -> bool:
        return self.ends_at is not None and self.ends_at <= now

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Alert:
        ends = data.get("ends_at")
        return cls(str(data["fingerprint"]), str(data["name"]), str(data["site"]),
                   data["color"] if data.get("color") in COLORS else None,
                   str(data.get("status", "firing")), str(data.get("starts_at", "")),
                   str(data.get("summary", "")), float(ends) if ends is not None else None)


def rfc3339(text: str) -> float | None:
    """Seconds since the epoch of Alertmanager's RFC 3339 time; None for Go's zero time
    (`0001-01-01T00:00:00Z`, "no end") or anything that is not such a time."""
    when = None if text.startswith("0001-") else payloads.parse_time(text)
    return when.timestamp() if when is not None else None


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

    def counts(self) -> dict[str, int]:
        """Alerts by what became of them: the `status` label of alerts_received_total."""
        out = {"firing": len(self.firing), "resolved": len(self.resolved),
               "duplicate": self.duplicates, "unknown_site": self.unknown_site,
               "unmatched": self.unmatched}
        return {k: v for k, v in out.items() if v}

    def as_dict(self) -> dict[str, Any]:
        return {"firing": len(self.firing), "resolved": len(self.resolved),
                "duplicates": self.duplicates, "unknown_site": self.unknown_site,
                "unmatched": self.unmatched}


def parse(payload: Any) -> list[dict[str, Any]]:
    """The alerts of a version-4 payload (decoded JSON), checked against payloads.Webhook; a
    PayloadError names the first fields that are wrong, as `odoo-watchdog check` names config
    keys (`alerts[0].status: input should be 'firing' or 'resolved' (got 'pending')`).

    Each alert is a dict with every key of Alertmanager's alert, "" or {} when not sent:
    status ("firing" | "resolved"), labels (str -> str, a non-empty "alertname" among them),
    annotations (str -> str), startsAt and endsAt (RFC 3339 strings as sent, e.g. endsAt
    "0001-01-01T00:00:00Z" for no end), generatorURL and fingerprint (str).
    """
    try:
        webhook = payloads.validate(payloads.Webhook, payload,
                                    context={"max_alerts": MAX_ALERTS})
    except payloads.Invalid as exc:
        raise PayloadError(str(exc)) from None
    return [alert.as_dict() for alert in webhook.alerts]


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
                ends_at=rfc3339(str(raw.get("endsAt") or "")),
            )
            seen = (alert.status, alert.starts_at)
            # Popped and put back: the dict stays in the order each was last heard of.
            if self._seen.pop(alert.fingerprint, None) == seen:
                self._seen[alert.fingerprint] = seen
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
        if len(self._seen) > MAX_SEEN:  # bounded memory whatever Alertmanager sends
            self._forget_oldest()
        return receipt

    def _forget_oldest(self) -> None:
        """Keep the fingerprints of the alerts firing now and the newest half of the cap of
        the others. One heard of long ago that comes again counts again, not as a duplicate
        (100,000 kept until the last trim were 16 MB, which the daemon's memory never gave
        back)."""
        firing = {fp for book in self.firing.values() for fp in book}
        others = [fp for fp in self._seen if fp not in firing]
        for fp in others[:max(0, len(others) - MAX_SEEN // 2)]:
            del self._seen[fp]

    def expire(self, site: str, now: float) -> bool:
        """Drop the site's alerts whose `endsAt` has passed (Alertmanager counts them resolved
        even when its resolved notification never arrives); whether any was dropped."""
        book = self.firing.get(site, {})
        ended = [fp for fp, alert in book.items() if alert.expired(now)]
        for fp in ended:
            del book[fp]
        return bool(ended)

    def memory(self, site: str) -> list[dict[str, Any]]:
        return [a.to_json() for a in self.firing.get(site, {}).values()]

    def restore(self, site: str, stored: list[dict[str, Any]], now: float) -> int:
        """Take back the firing alerts stored before a restart, except those ended since."""
        book = self.firing.setdefault(site, {})
        for item in stored:
            alert = Alert.from_json(item)
            if alert.site == site and not alert.expired(now):
                book[alert.fingerprint] = alert
                self._seen[alert.fingerprint] = (alert.status, alert.starts_at)
        return len(book)

    def views(self, site: str, color: str, on_fire: str, now: float) -> dict[str, RuleView]:
        """The site's firing alerts for `color` (alerts without a colour count for any)."""
        out: dict[str, RuleView] = {}
        for alert in self.firing.get(site, {}).values():
            if alert.color not in (None, color) or alert.expired(now):
                continue
            name = f"alert:{alert.name}"
            out[name] = RuleView(name, State.FIRING, on_fire, None, "alert firing",
                                 alert.summary or f"Alertmanager alert {alert.name} firing")
        return out
