"""The JSON bodies the API takes, as strict pydantic models, and the one way their errors read.

Strict as the config is (watchdog/config.py): an unknown key is an error, and a value must
already have its JSON type (`"full": "yes"` is not true, `"to": 5` is not a colour). A body that
is wrong is refused with one line naming the field the way `odoo-watchdog check` names a config
key (`alerts[0].labels.severity: input should be a valid string (got 5)`): the messages come
from yamlsrc's formatter of pydantic's errors, not from a second one here.

Alertmanager's webhook (payload version 4, as of Alertmanager 0.25):

    {"version": "4", "groupKey": str, "truncatedAlerts": int, "status": "firing|resolved",
     "receiver": str, "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
     "externalURL": str,
     "alerts": [{"status": "firing|resolved", "labels": {}, "annotations": {},
                 "startsAt": rfc3339, "endsAt": rfc3339, "generatorURL": str,
                 "fingerprint": str}]}

Alertmanager always sends every key; a hand-made payload may leave out all but `version`,
`alerts` and, in each alert, `status` and `labels` (with an `alertname`).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from watchdog.yamlsrc import Document, problems_from

__all__ = [
    "AbortBody",
    "BackupBody",
    "Invalid",
    "Labels",
    "PromoteBody",
    "RestoreBody",
    "StartBody",
    "SwitchBody",
    "Webhook",
    "WebhookAlert",
    "message",
    "parse_time",
    "validate",
]

SHOWN_PROBLEMS = 3  # problems named in one message; the rest are counted


class Invalid(ValueError):
    """A body that is not what the endpoint takes; the message is the API's 400 `error`."""


def _unicode(value: Any) -> Any:
    """Refuse a lone surrogate (JSON allows `"\\ud800"`, UTF-8 cannot hold it)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("not valid Unicode (a lone surrogate)") from None
    return value


def _unicode_keys(data: Any) -> Any:
    """The same for the keys of an object, which pydantic would refuse in its own words."""
    if isinstance(data, dict):
        for key in data:
            try:
                _unicode(key)
            except ValueError:
                raise ValueError("a key is not valid Unicode (a lone surrogate)") from None
    return data


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _keys(cls, data: Any) -> Any:
        return _unicode_keys(data)


# A JSON string that can be logged, stored and sent on.
Text = Annotated[str, BeforeValidator(_unicode)]

_RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"
                      r"(?:\.[0-9]+)?(?:Z|[+-][0-9]{2}:[0-9]{2})", re.IGNORECASE)


def parse_time(text: str) -> datetime | None:
    """An RFC 3339 time as Alertmanager writes it (Go's RFC3339Nano: up to nine digits of a
    fraction), timezone-aware; None when it is not one."""
    if not _RFC3339.fullmatch(text):
        return None
    try:
        return datetime.fromisoformat(text.upper())  # 3.11 takes "Z" and any fraction
    except ValueError:  # 2026-13-45T99:00:00Z has the shape but is no time
        return None


def _timestamp(text: str) -> str:
    if parse_time(text) is None:
        shown = repr(text) if len(text) <= 60 else repr(text[:57]) + "..."
        raise ValueError(f"expected an RFC 3339 time such as 2026-01-01T00:00:00Z, got {shown}")
    return text


# Kept as the string Alertmanager sent ("0001-01-01T00:00:00Z" is Go's zero time: no end).
Timestamp = Annotated[Text, AfterValidator(_timestamp)]


def _not_empty(text: str) -> str:
    if not text:
        raise ValueError("must not be empty")
    return text


# ---------------------------------------------------------------- the operator's commands


class StartBody(_Body):
    """POST /api/v1/sites/{site}/rollouts"""

    to: Literal["blue", "green"]
    version: Text = ""
    strategy: Literal["canary", "bluegreen"] = "canary"

    @property
    def chosen_strategy(self) -> str | None:
        """The strategy asked for; None: the site's configured one."""
        return self.strategy if "strategy" in self.model_fields_set else None


class PromoteBody(_Body):
    """POST /api/v1/sites/{site}/promote"""

    full: bool = False


class AbortBody(_Body):
    """POST /api/v1/sites/{site}/abort"""

    reason: Text = ""


class SwitchBody(_Body):
    """POST /api/v1/sites/{site}/switch"""

    to: Literal["blue", "green"]


class BackupBody(_Body):
    """POST /api/v1/sites/{site}/backups (no colour: the live one's database)"""

    color: Literal["blue", "green"] | None = None


class RestoreBody(_Body):
    """POST /api/v1/sites/{site}/backups/{id}/restore"""

    to: Literal["blue", "green"]
    force: bool = False


# ---------------------------------------------------------------- Alertmanager's webhook

Status = Literal["firing", "resolved"]
Strings = dict[Text, Text]


class Labels(BaseModel):
    """An alert's labels: strings, `alertname` among them."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)
    __pydantic_extra__: dict[str, Text] = Field(init=False)

    alertname: Annotated[Text, AfterValidator(_not_empty)]
    @model_validator(mode="before")
    @classmethod
    def _keys(cls, data: Any) -> Any:
        return _unicode_keys(data)


class WebhookAlert(_Body):
    status: Status
    labels: Labels
    annotations: Strings = Field(default_factory=dict)
    starts_at: Timestamp = Field("", alias="startsAt")
    ends_at: Timestamp = Field("", alias="endsAt")
    generator_url: Text = Field("", alias="generatorURL")
    fingerprint: Text = ""

    def as_dict(self) -> dict[str, Any]:
        """The alert with Alertmanager's keys, every one present ("" or {} when not sent)."""
        return {"status": self.status, "labels": self.labels.model_dump(),
                "annotations": dict(self.annotations), "startsAt": self.starts_at,
                "endsAt": self.ends_at, "generatorURL": self.generator_url,
                "fingerprint": self.fingerprint}


def _version_4(value: Any) -> Any:
    if value != "4":
        raise ValueError(f"unsupported payload version {value!r}: this receiver takes "
                         "Alertmanager's version \"4\"")
    return value


class Webhook(_Body):
    """Validate with `context={"max_alerts": N}` to refuse more than N alerts, unread."""

    version: Annotated[Literal["4"], BeforeValidator(_version_4)]
    alerts: list[WebhookAlert]
    status: Status | None = None
    receiver: Text = ""
    group_key: Text = Field("", alias="groupKey")
    truncated_alerts: Annotated[int, Field(ge=0)] = Field(0, alias="truncatedAlerts")
    group_labels: Strings = Field(default_factory=dict, alias="groupLabels")
    common_labels: Strings = Field(default_factory=dict, alias="commonLabels")
    common_annotations: Strings = Field(default_factory=dict, alias="commonAnnotations")
    external_url: Text = Field("", alias="externalURL")

    @field_validator("alerts", mode="before")
    @classmethod
    def _at_most(cls, value: Any, info: ValidationInfo) -> Any:
        limit = (info.context or {}).get("max_alerts")
        if isinstance(value, list) and limit is not None and len(value) > limit:
            raise ValueError(f"{len(value)} alerts in one payload; at most {limit}")
        return value


# ---------------------------------------------------------------- one error format

M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], data: Any, context: dict[str, Any] | None = None) -> M:
    """`data` (decoded JSON) as a `model`, or Invalid with one line naming what is wrong."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise Invalid(message(exc, data)) from None


def message(exc: ValidationError, data: Any) -> str:
    """pydantic's errors as `odoo-watchdog check` words them, without its `file:line`: the
    first few, `; `-separated, then how many more. An error about the body as a whole (not a
    JSON object) is said of `body`."""
    errors = exc.errors(include_url=False)
    problems = problems_from(exc, Document("body", data, {}))
    lines = [p.message for p in problems]
    if len(problems) == len(errors):  # one problem an error, in order: name the body's
        lines = [f"body: {line}" if not err["loc"] else line
                 for err, line in zip(errors, lines, strict=True)]
    text = "; ".join(lines[:SHOWN_PROBLEMS])
    if len(lines) > SHOWN_PROBLEMS:
        text += f"; and {len(lines) - SHOWN_PROBLEMS} more"
    # Keys are named as sent: escape what would break the line (or UTF-8) as Python would.
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
