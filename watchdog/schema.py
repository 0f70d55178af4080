"""The building blocks every config model shares: strict models, durations, templates, URLs.

Kept apart from `config.py` so that the router and rule modules can define their own models
(each kind's schema beside its code) without importing the whole daemon config.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer

from watchdog.durations import format_duration, parse_duration

__all__ = [
    "COLORS",
    "TEMPLATE_VARS",
    "Color",
    "Duration",
    "OnFire",
    "Strict",
    "check_template",
    "host_port",
    "http_url",
    "is_loopback",
    "render",
]

COLORS: tuple[str, str] = ("blue", "green")
Color = Literal["blue", "green"]
OnFire = Literal["rollback", "pause", "notify"]
TEMPLATE_VARS = frozenset({"site", "color", "server", "backend", "url", "container", "interval"})

# Seconds in Python; written back as `5m` in JSON, so a dumped config validates again.
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
_TEMPLATE = re.compile(r"\{\{(.*?)\}\}")


class Strict(BaseModel):
    """Unknown keys are errors (a typo such as `mx: 0.01` must not silently disable a
    threshold), and a loaded config is a value."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def check_template(text: str, known: frozenset[str] = TEMPLATE_VARS) -> str:
    """Refuse unknown `{{ x }}` variables and unbalanced braces; return text unchanged."""
    for match in _TEMPLATE.finditer(text):
        var = match.group(1).strip()
        if var not in known:
            names = ", ".join(sorted(known))
            raise ValueError(f"unknown template variable {{{{ {var} }}}} (known: {names})")
    rest = _TEMPLATE.sub("", text)
    if "{{" in rest or "}}" in rest:
        raise ValueError("unbalanced '{{' or '}}' in template")
    return text


def render(text: str, variables: Mapping[str, str]) -> str:
    """Fill `{{ x }}` from variables; a variable missing here is a bug, so it raises."""
    return _TEMPLATE.sub(lambda m: variables[m.group(1).strip()], text)


def host_port(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} must be host:port, e.g. 127.0.0.1:9721 (got {value!r})")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def http_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f"expected an http:// or https:// URL (got {value!r})")
    return value.rstrip("/")
