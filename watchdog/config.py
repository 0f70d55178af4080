"""The daemon config and the rule files: strict schemas, every error with `file:line`.

DESIGN.md sections 4 and 5 are the contract. Unknown keys are errors (a typo such as `mx: 0.01`
must not silently disable a threshold); durations need a unit; template variables are checked
when the file is loaded, not when the first rollout renders them.
"""

from __future__ import annotations

import glob
import ipaddress
import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from watchdog.durations import format_duration, parse_duration
from watchdog.yamlsrc import ConfigError, Document, Problem, dotted, problems_from, read

__all__ = [
    "COLORS",
    "TEMPLATE_VARS",
    "ConfigError",
    "DaemonConfig",
    "HttpRule",
    "LoadedConfig",
    "LogsRule",
    "Problem",
    "PrometheusRule",
    "Rule",
    "SiteConfig",
    "load",
    "load_config",
    "load_rule_file",
    "render",
]

COLORS: tuple[str, str] = ("blue", "green")
Color = Literal["blue", "green"]
TEMPLATE_VARS = frozenset({"site", "color", "server", "backend", "url", "container", "interval"})
# Odoo's log format is "%(asctime)s %(pid)s %(levelname)s %(dbname)s %(name)s: %(message)s";
# this matches the level field only, so an INFO line whose message says ERROR is not counted.
DEFAULT_LOG_PATTERN = r"^\S+ \S+ \d+ (ERROR|CRITICAL) "

# Seconds in Python; written back as `5m` in JSON, so a dumped config validates again.
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
_TEMPLATE = re.compile(r"\{\{(.*?)\}\}")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_:.\-]*$")


def check_template(text: str) -> str:
    """Refuse unknown `{{ x }}` variables and unbalanced braces; return text unchanged."""
    for match in _TEMPLATE.finditer(text):
        var = match.group(1).strip()
        if var not in TEMPLATE_VARS:
            known = ", ".join(sorted(TEMPLATE_VARS))
            raise ValueError(f"unknown template variable {{{{ {var} }}}} (known: {known})")
    rest = _TEMPLATE.sub("", text)
    if "{{" in rest or "}}" in rest:
        raise ValueError("unbalanced '{{' or '}}' in template")
    return text


def render(text: str, variables: Mapping[str, str]) -> str:
    """Fill `{{ x }}` from variables; a variable missing here is a bug, so it raises."""
    return _TEMPLATE.sub(lambda m: variables[m.group(1).strip()], text)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _host_port(value: str, what: str) -> tuple[str, int]:
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


class ApiConfig(_Strict):
    listen: str = "127.0.0.1:9721"
    token_file: Path | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        _host_port(value, "listen")
        return value

    @model_validator(mode="after")
    def _token_off_loopback(self) -> ApiConfig:
        host, _ = _host_port(self.listen, "listen")
        if not is_loopback(host) and self.token_file is None:
            raise ValueError(
                f"listen {self.listen} is not a loopback address: set token_file "
                "so that POSTs need a token"
            )
        return self

    @property
    def host_port(self) -> tuple[str, int]:
        return _host_port(self.listen, "listen")


class PrometheusConfig(_Strict):
    url: str = "http://127.0.0.1:9090"
    timeout: Duration = 5.0

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value)


def _http_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f"expected an http:// or https:// URL (got {value!r})")
    return value.rstrip("/")


class AccessLogConfig(_Strict):
    listen: str = "127.0.0.1:5140"
    format: Literal["haproxy", "nginx"] = "haproxy"

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        _host_port(value, "listen")
        return value


OnFire = Literal["rollback", "pause", "notify"]
NoData = Literal["ok", "hold", "breach"]


class AlertmanagerConfig(_Strict):
    match: dict[str, str] = Field(default_factory=lambda: {"severity": "critical"})
    on_fire: OnFire = "rollback"


class NotifyTarget(_Strict):
    kind: Literal["webhook", "slack"]
    url: str | None = None
    url_file: Path | None = None
    timeout: Duration = 5.0

    @model_validator(mode="after")
    def _one_url(self) -> NotifyTarget:
        if (self.url is None) == (self.url_file is None):
            raise ValueError("give exactly one of url or url_file (url_file for secrets)")
        if self.url is not None:
            _http_url(self.url)
        return self


class HaproxyRouter(_Strict):
    """HAProxy's runtime API; `server` of each colour is the HAProxy server name."""

    kind: Literal["haproxy"]
    socket: str  # a unix socket path, or host:port of a TCP stats socket
    backend: str
    # Where `show servers state` is written after every change, so a reload keeps the split;
    # the same path as `server-state-file` in haproxy.cfg.
    state_file: Path | None = None
    drain_timeout: Duration = Field(30.0, ge=0)  # drain, then maint, for a colour given up
    timeout: Duration = Field(2.0, gt=0)


class NginxRouter(_Strict):
    """An upstream block the daemon owns; `server` of each colour is its host:port."""

    kind: Literal["nginx"]
    upstream_file: Path
    upstream: str
    reload: str = "nginx -s reload"
    test: str = "nginx -t"
    timeout: Duration = Field(30.0, gt=0)


class TraefikRouter(_Strict):
    """A weighted service in a file-provider dynamic file; `server` is each colour's service."""

    kind: Literal["traefik"]
    dynamic_file: Path
    service: str
    sticky_cookie: str | None = None


RouterConfig = Annotated[HaproxyRouter | NginxRouter | TraefikRouter, Field(discriminator="kind")]


class ColorConfig(_Strict):
    server: str
    url: str
    container: str | None = None
    log_file: Path | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value)

    @model_validator(mode="after")
    def _one_log(self) -> ColorConfig:
        if self.container is not None and self.log_file is not None:
            raise ValueError("give container or log_file, not both")
        return self


class WeightStep(_Strict):
    weight: int = Field(ge=1, le=100)
    hold: Duration = 0.0


def _step_tag(value: Any) -> str:
    return "pause" if isinstance(value, str) else "weight"


Step = Annotated[
    Annotated[Literal["pause"], Tag("pause")] | Annotated[WeightStep, Tag("weight")],
    Discriminator(_step_tag),
]

SmokeCheck = Literal["health", "login", "rpc"]
_DEFAULT_SMOKE: tuple[SmokeCheck, ...] = ("health", "login")


def _default_steps() -> list[WeightStep | Literal["pause"]]:
    return [
        WeightStep.model_validate({"weight": 10, "hold": "5m"}),
        WeightStep.model_validate({"weight": 50, "hold": "5m"}),
        WeightStep.model_validate({"weight": 100}),
    ]


class RolloutConfig(_Strict):
    strategy: Literal["canary", "bluegreen"] = "canary"
    steps: list[Step] = Field(default_factory=_default_steps)
    interval: Duration = Field(30.0, ge=0.1)
    bake: Duration = 900.0
    keep_previous: Duration = 172800.0
    smoke: list[SmokeCheck] = Field(default_factory=lambda: list(_DEFAULT_SMOKE))

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: list[WeightStep | str]) -> list[WeightStep | str]:
        weights = [s.weight for s in steps if isinstance(s, WeightStep)]
        if not weights:
            raise ValueError("needs at least one weight step, and the last must be weight 100")
        for before, after in itertools.pairwise(weights):
            if after <= before:
                raise ValueError(f"weights must rise step by step ({before} then {after})")
        if weights[-1] != 100:
            raise ValueError(f"the last weight step must be 100 (it is {weights[-1]})")
        return steps

    @property
    def effective_steps(self) -> tuple[WeightStep | str, ...]:
        """bluegreen is one step of 100; canary is the configured list."""
        if self.strategy == "bluegreen":
            return (WeightStep.model_validate({"weight": 100}),)
        return tuple(self.steps)


class SiteConfig(_Strict):
    router: RouterConfig
    colors: dict[str, ColorConfig]
    live: Color = "blue"
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)

    @field_validator("colors")
    @classmethod
    def _both_colors(cls, colors: dict[str, ColorConfig]) -> dict[str, ColorConfig]:
        unknown = sorted(set(colors) - set(COLORS))
        if unknown:
            raise ValueError(f"unknown colour {unknown[0]!r}: colours are blue and green")
        missing = [c for c in COLORS if c not in colors]
        if missing:
            raise ValueError(f"colour {missing[0]!r} is missing: a site needs blue and green")
        servers = [c.server for c in colors.values()]
        if len(set(servers)) != len(servers):
            raise ValueError(f"blue and green use the same server name {servers[0]!r}")
        return colors

    @model_validator(mode="after")
    def _nginx_servers(self) -> SiteConfig:
        if isinstance(self.router, NginxRouter):
            for color, spec in self.colors.items():
                if not re.fullmatch(r"(unix:/\S+|\[?[\w.:-]+\]?:\d{1,5})", spec.server):
                    raise ValueError(
                        f"colours.{color}.server {spec.server!r}: with an nginx router, server "
                        "is the upstream address, host:port (e.g. 127.0.0.1:8069)"
                    )
        return self

    @property
    def backend(self) -> str:
        router = self.router
        if isinstance(router, HaproxyRouter):
            return router.backend
        if isinstance(router, NginxRouter):
            return router.upstream
        return router.service


class DaemonConfig(_Strict):
    api: ApiConfig = Field(default_factory=ApiConfig)
    state_dir: Path = Path("/var/lib/odoo-watchdog")
    prometheus: PrometheusConfig = Field(default_factory=PrometheusConfig)
    rule_files: list[str] = Field(default_factory=list)
    access_log: AccessLogConfig | None = None
    alertmanager: AlertmanagerConfig = Field(default_factory=AlertmanagerConfig)
    notify: list[NotifyTarget] = Field(default_factory=list)
    sites: dict[str, SiteConfig] = Field(min_length=1)

    @field_validator("sites")
    @classmethod
    def _site_names(cls, sites: dict[str, SiteConfig]) -> dict[str, SiteConfig]:
        for name in sites:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", str(name)):
                raise ValueError(f"site name {name!r}: use letters, digits, '_', '-', '.'")
        return sites


# ---------------------------------------------------------------- rules


class _RuleBase(_Strict):
    name: str
    min: float | None = None
    max: float | None = None
    for_: Duration = Field(0.0, alias="for", ge=0)
    no_data: NoData = "hold"
    on_fire: OnFire = "rollback"
    sites: list[str] | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"invalid rule name {value!r}: letters, digits, '_', ':', '.', '-'")
        return value

    @field_validator("labels", "annotations")
    @classmethod
    def _templates(cls, value: dict[str, str]) -> dict[str, str]:
        for text in value.values():
            check_template(text)
        return value

    @model_validator(mode="after")
    def _bounds(self) -> _RuleBase:
        if self.min is None and self.max is None:
            raise ValueError("needs a threshold: min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}")
        return self

    def threshold_text(self) -> str:
        parts = []
        if self.min is not None:
            parts.append(f">= {self.min:g}")
        if self.max is not None:
            parts.append(f"<= {self.max:g}")
        return " and ".join(parts)

    def applies_to(self, site: str) -> bool:
        return self.sites is None or site in self.sites


class PrometheusRule(_RuleBase):
    source: Literal["prometheus"]
    query: str = Field(min_length=1)

    @field_validator("query")
    @classmethod
    def _query(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query is empty")
        return check_template(value)


class LogsRule(_RuleBase):
    source: Literal["logs"]
    pattern: str = DEFAULT_LOG_PATTERN
    window: Duration = Field(300.0, gt=0)

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"pattern is not a valid regular expression: {exc}") from None
        return value


class HttpRule(_RuleBase):
    source: Literal["http"]
    path: str
    timeout: Duration = Field(2.0, gt=0)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"path must start with '/' (got {value!r})")
        return check_template(value)


Rule = Annotated[PrometheusRule | LogsRule | HttpRule, Field(discriminator="source")]


class RuleFile(_Strict):
    rules: list[Rule]


# ---------------------------------------------------------------- loading


@dataclass(frozen=True)
class RuleOrigin:
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class LoadedConfig:
    """A validated config with its rules, where each came from, and warnings worth printing."""

    path: Path
    config: DaemonConfig
    rules: list[PrometheusRule | LogsRule | HttpRule]
    origins: dict[str, RuleOrigin]
    rule_files: list[Path]
    warnings: list[str] = field(default_factory=list)

    def rules_for(self, site: str) -> list[PrometheusRule | LogsRule | HttpRule]:
        return [r for r in self.rules if r.applies_to(site)]


def _validate(model: type[BaseModel], doc: Document, describe: Any = None) -> Any:
    if not isinstance(doc.data, dict):
        got = "an empty file" if doc.data is None else f"a {type(doc.data).__name__}"
        raise ConfigError([Problem(doc.file, 1, f"expected a mapping at the top, got {got}")])
    try:
        return model.model_validate(doc.data)
    except ValidationError as exc:
        raise ConfigError(problems_from(exc, doc, describe=describe)) from None


def load_config(path: Path) -> DaemonConfig:
    config: DaemonConfig = _validate(DaemonConfig, read(path))
    return config


def load_rule_file(path: Path, display: str | None = None) -> tuple[list[Any], Document]:
    """The rules of one file, and the parsed document (for the line of any key)."""
    doc = read(path, display)

    def describe(data_path: list[str | int]) -> str:
        if len(data_path) >= 2 and data_path[0] == "rules" and isinstance(data_path[1], int):
            item = doc.data["rules"][data_path[1]]
            name = item.get("name") if isinstance(item, dict) else None
            head = f"rule {name!r}" if isinstance(name, str) else f"rules[{data_path[1]}]"
            rest = dotted(data_path[2:])
            return f"{head}: {rest}" if rest else head
        return dotted(data_path)

    parsed: RuleFile = _validate(RuleFile, doc, describe)
    return list(parsed.rules), doc


def _rule_paths(base: Path, patterns: list[str], warnings: list[str]) -> list[Path]:
    paths: list[Path] = []
    for pattern in patterns:
        full = pattern if Path(pattern).is_absolute() else str(base / pattern)
        if glob.has_magic(pattern):
            found = sorted(Path(p) for p in glob.glob(full))
            if not found:
                warnings.append(f"rule_files pattern {pattern!r} matches no file")
        else:
            found = [Path(full)]
        paths.extend(p for p in found if p not in paths)
    return paths


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def load(config_path: Path) -> LoadedConfig:
    """The config and every rule file it names, checked together; ConfigError lists all problems."""
    display = _display(config_path)
    config_doc = read(config_path, display)
    problems: list[Problem] = []
    config: DaemonConfig | None = None
    try:
        config = _validate(DaemonConfig, config_doc)
        patterns = list(config.rule_files)
    except ConfigError as exc:
        problems.extend(exc.problems)
        raw = config_doc.data.get("rule_files") if isinstance(config_doc.data, dict) else None
        ok = isinstance(raw, list) and all(isinstance(p, str) for p in raw)
        # still check the rule files we can find
        patterns = [str(p) for p in raw] if ok and isinstance(raw, list) else []
    warnings: list[str] = []
    rules: list[Any] = []
    origins: dict[str, RuleOrigin] = {}
    paths = _rule_paths(config_path.parent, patterns, warnings)
    for path in paths:
        name = _display(path)
        try:
            file_rules, doc = load_rule_file(path, name)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        for index, rule in enumerate(file_rules):
            origin = RuleOrigin(name, doc.line_of(("rules", index)))
            if rule.name in origins:
                problems.append(Problem(name, doc.line_of(("rules", index, "name")),
                                        f"rule {rule.name!r}: duplicate name, "
                                        f"first defined at {origins[rule.name]}"))
                continue
            origins[rule.name] = origin
            rules.append(rule)
            if config is not None:
                problems.extend(_cross_check(rule, config, doc, index))
    if problems or config is None:
        raise ConfigError(problems)
    token = config.api.token_file
    if token is not None and not _resolve(config_path, token).is_file():
        warnings.append(f"api.token_file {token} does not exist yet")
    return LoadedConfig(config_path, config, rules, origins, paths, warnings)


def _resolve(config_path: Path, path: Path) -> Path:
    return path if path.is_absolute() else config_path.parent / path


def _cross_check(rule: Any, config: DaemonConfig, doc: Document, index: int) -> list[Problem]:
    out: list[Problem] = []
    for position, site in enumerate(rule.sites or []):
        if site not in config.sites:
            known = ", ".join(sorted(config.sites))
            line = doc.line_of(("rules", index, "sites", position))
            out.append(Problem(doc.file, line,
                               f"rule {rule.name!r}: unknown site {site!r} (sites: {known})"))
    if isinstance(rule, LogsRule):
        line = doc.line_of(("rules", index, "source"))
        for site_name, site in config.sites.items():
            if not rule.applies_to(site_name):
                continue
            for color, spec in site.colors.items():
                if spec.container is None and spec.log_file is None:
                    out.append(Problem(doc.file, line,
                                       f"rule {rule.name!r} reads logs, but site {site_name!r} "
                                       f"colour {color!r} has neither container nor log_file"))
    return out
