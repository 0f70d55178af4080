"""The daemon config (docs/configuration.md): a strict schema, every error with `file:line`.

Unknown keys are errors (a typo such as `mx: 0.01` must not silently disable a threshold);
durations need a unit; template variables are checked when the file is loaded, not when the
first rollout renders them. Each router kind's model lives with the router
(`watchdog.routers.<kind>`), the rule models with the rule files (`watchdog.rulefiles`); `load`
checks the config and every rule file it names together.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from watchdog.dbconfig import (
    DatabaseConfig,
    PrepareStep,
    check_prepare,
    deploy_settings,
    migrate_settings,
    step_name,
)
from watchdog.routers.registry import RouterConfig
from watchdog.rulefiles import (
    AnyRule,
    HttpRule,
    LogsRule,
    PrometheusRule,
    Rule,
    RuleOrigin,
    TrafficRule,
    load_rule_file,
    rule_paths,
)
from watchdog.schema import (
    COLORS,
    TEMPLATE_VARS,
    Color,
    Duration,
    OnFire,
    check_template,
    host_port,
    http_url,
    is_loopback,
    render,
)
from watchdog.schema import Strict as _Strict
from watchdog.secrets import secret_path
from watchdog.yamlsrc import ConfigError, Document, Problem, display_name, read, validate

__all__ = [
    "COLORS",
    "TEMPLATE_VARS",
    "ApiConfig",
    "ColorConfig",
    "ConfigError",
    "DaemonConfig",
    "HttpCheck",
    "HttpRule",
    "LoadedConfig",
    "LogsRule",
    "NotifyTarget",
    "Problem",
    "PrometheusRule",
    "RolloutConfig",
    "Rule",
    "RuleOrigin",
    "SiteConfig",
    "SmokeCheck",
    "SmokeSettings",
    "StoreConfig",
    "TrafficRule",
    "WeightStep",
    "check_template",
    "is_loopback",
    "load",
    "load_rule_file",
    "render",
]


class ApiConfig(_Strict):
    listen: str = "127.0.0.1:9721"
    token_file: Path | None = None
    # The URL other daemons and the CLI use to reach this one (DESIGN.md §15); default
    # http://<listen>.
    advertise: str | None = None

    @field_validator("advertise")
    @classmethod
    def _advertise(cls, value: str | None) -> str | None:
        return None if value is None else http_url(value).rstrip("/")

    @property
    def url(self) -> str:
        """The advertised URL, or http://<listen>."""
        if self.advertise is not None:
            return self.advertise
        host, port = self.host_port
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host_port(value, "listen")
        return value

    @model_validator(mode="after")
    def _token_off_loopback(self) -> ApiConfig:
        host, _ = host_port(self.listen, "listen")
        if not is_loopback(host) and self.token_file is None:
            raise ValueError(
                f"listen {self.listen} is not a loopback address: set token_file "
                "so that POSTs need a token"
            )
        return self

    @property
    def host_port(self) -> tuple[str, int]:
        return host_port(self.listen, "listen")


class PrometheusConfig(_Strict):
    url: str = "http://127.0.0.1:9090"
    timeout: Duration = 5.0

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return http_url(value)


class AccessLogConfig(_Strict):
    listen: str = "127.0.0.1:5140"
    format: Literal["haproxy", "nginx"] = "haproxy"

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host_port(value, "listen")
        return value


class AlertmanagerConfig(_Strict):
    match: dict[str, str] = Field(default_factory=lambda: {"severity": "critical"})
    on_fire: OnFire = "rollback"


class StoreConfig(_Strict):
    """Where the state lives (docs/database.md "The daemons' own store"): SQLite under
    `state_dir` (one daemon), or PostgreSQL, which several daemons share with a lease per site."""

    kind: Literal["sqlite", "postgresql"] = "sqlite"
    dsn_file: Path | None = None  # postgresql: a libpq conninfo or URI, a secret
    lease: Duration = 10.0  # how long a daemon owns a site without renewing
    instance: str | None = None  # this daemon's name among them; default hostname:pid

    @model_validator(mode="after")
    def _fits(self) -> StoreConfig:
        if self.kind == "postgresql" and self.dsn_file is None:
            raise ValueError("kind postgresql needs dsn_file (a file holding the conninfo)")
        if self.kind == "sqlite" and self.dsn_file is not None:
            raise ValueError("dsn_file is for kind postgresql; sqlite keeps state in state_dir")
        if not 1.0 <= self.lease <= 300.0:
            raise ValueError(f"lease must be between 1s and 5m, got {self.lease:g}s")
        if self.instance is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,99}",
                                                          self.instance):
            raise ValueError(f"instance {self.instance!r}: use letters, digits, '_', '-', "
                             "'.', ':' (at most 100)")
        return self

    @property
    def shared(self) -> bool:
        """Several daemons may run for the same sites: each site is leased."""
        return self.kind == "postgresql"


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
            http_url(self.url)
        return self


class ColorConfig(_Strict):
    server: str
    url: str
    container: str | None = None
    log_file: Path | None = None
    # A unix datagram socket the daemon binds for Odoo's `--syslog` records (relative: to the
    # config's folder, resolved by `load`); watchdog/sources/logsyslog.py, docs/logs.md.
    syslog: Path | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return http_url(value)

    @field_validator("syslog")
    @classmethod
    def _syslog(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        text = str(value)
        if not text or text == "." or text.endswith("/") or "\0" in text:
            raise ValueError(f"syslog {text!r}: give the path of a socket file, "
                             "e.g. /run/odoo-watchdog/odoo-green.sock")
        return value

    @model_validator(mode="after")
    def _one_log(self) -> ColorConfig:
        given = [k for k in ("container", "log_file", "syslog") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give only one of container, log_file and syslog (got "
                             f"{' and '.join(given)}): a colour's logs come from one place")
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

SmokeCheck = Literal["health", "login", "rpc", "workflow", "latency", "sessions", "http"]
_DEFAULT_SMOKE: tuple[SmokeCheck, ...] = ("health", "login")
# The checks that log in, and so need smoke_settings.credentials_file.
_NEEDS_CREDENTIALS: tuple[SmokeCheck, ...] = ("workflow", "sessions")


class LatencySettings(_Strict):
    """`latency`: `requests` sequential GETs of `path` on the candidate; p95 under `p95`."""

    requests: int = Field(20, ge=1, le=1000)
    path: str = "/web/login"
    p95: Duration = Field(0.5, gt=0)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return _smoke_path(value)


class HttpCheck(_Strict):
    """A named `http` smoke check: GET `path`, one of `status`, and `body` in the answer."""

    name: str
    path: str
    status: list[int] = Field(default_factory=lambda: [200], min_length=1)
    body: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", value):
            raise ValueError(f"http check name {value!r}: use letters, digits, '_', '-', '.'")
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return _smoke_path(value)

    @field_validator("status")
    @classmethod
    def _status(cls, value: list[int]) -> list[int]:
        bad = [s for s in value if not 100 <= s <= 599]
        if bad:
            raise ValueError(f"status {bad[0]} is not an HTTP status (100-599)")
        return value


def _smoke_path(value: str) -> str:
    if not value.startswith("/") or any(c.isspace() for c in value):
        raise ValueError(f"path {value!r}: give a path on the colour's url, starting with '/'")
    return value


class SmokeSettings(_Strict):
    """`smoke_settings` (docs/rollouts.md, "Smoke checks"): what the checks that log in, measure
    or fetch pages use. The credentials file is read by `watchdog.smoke.load_credentials`."""

    credentials_file: Path | None = None
    latency: LatencySettings = Field(default_factory=LatencySettings)
    sessions: Literal["warn", "require", "off"] = "warn"
    http: list[HttpCheck] = Field(default_factory=list)

    @field_validator("http")
    @classmethod
    def _unique(cls, checks: list[HttpCheck]) -> list[HttpCheck]:
        seen: set[str] = set()
        for check in checks:
            if check.name in seen:
                raise ValueError(f"http check {check.name!r} is named twice: each check is "
                                 "reported under its name")
            seen.add(check.name)
        return checks


def check_smoke(smoke: list[SmokeCheck], settings: SmokeSettings) -> None:
    """The smoke checks a site lists against its smoke_settings (ValueError says what lacks)."""
    if len(set(smoke)) != len(smoke):
        twice = next(c for c in smoke if smoke.count(c) > 1)
        raise ValueError(f"rollout.smoke lists {twice} twice")
    if settings.credentials_file is None:
        needing = [c for c in smoke if c in _NEEDS_CREDENTIALS]
        if needing:
            verb = "logs in" if len(needing) == 1 else "log in"
            raise ValueError(f"rollout.smoke lists {' and '.join(needing)}, which {verb}: set "
                             "smoke_settings.credentials_file (a JSON file {\"db\", \"login\", "
                             "\"password\"} or {\"db\", \"login\", \"api_key\"} of a smoke "
                             "user)")
    if "http" in smoke and not settings.http:
        raise ValueError("rollout.smoke lists http but smoke_settings.http names no check: "
                         "add e.g. {name: db_manager_hidden, path: /web/database/manager, "
                         "status: [403, 404]}")


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


class SiteConfig(_Strict):
    router: RouterConfig
    colors: dict[str, ColorConfig]
    live: Color = "blue"
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    smoke_settings: SmokeSettings = Field(default_factory=SmokeSettings, validate_default=True)
    database: DatabaseConfig | None = None
    prepare: list[PrepareStep] = Field(default_factory=list)

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

    @field_validator("smoke_settings")
    @classmethod
    def _smoke_fits(cls, settings: SmokeSettings, info: ValidationInfo) -> SmokeSettings:
        rollout = info.data.get("rollout")
        if isinstance(rollout, RolloutConfig):
            check_smoke(rollout.smoke, settings)
        return settings

    @model_validator(mode="after")
    def _servers_fit_router(self) -> SiteConfig:
        self.router.check_colors(self.colors)
        return self

    @field_validator("prepare")
    @classmethod
    def _prepare(cls, steps: list[Any], info: ValidationInfo) -> list[Any]:
        check_prepare(steps, info.data.get("database"))
        return steps

    @model_validator(mode="after")
    def _prepare_fits(self) -> SiteConfig:
        if "migrate" in self.steps and migrate_settings(self.prepare).container:
            bare = [c for c, spec in self.colors.items() if spec.container is None]
            if bare:
                raise ValueError(f"migrate with container: true needs each colour's "
                                 f"container (colour {bare[0]} has none)")
        deploy = deploy_settings(self.prepare)
        if deploy is not None and deploy.image is not None:
            bare = [c for c, spec in self.colors.items() if spec.container is None]
            if bare:
                raise ValueError(f"deploy with an image recreates the candidate's container: "
                                 f"each colour needs container: (colour {bare[0]} has none); "
                                 "for a colour run by systemd give deploy a command instead")
        return self

    @property
    def steps(self) -> tuple[str, ...]:
        """The prepare steps' names, in order."""
        return tuple(step_name(s) for s in self.prepare)

    @property
    def backend(self) -> str:
        """Kept for callers that predate `router.backend`."""
        return self.router.backend


class DaemonConfig(_Strict):
    api: ApiConfig = Field(default_factory=ApiConfig)
    state_dir: Path = Path("/var/lib/odoo-watchdog")
    store: StoreConfig = Field(default_factory=StoreConfig)
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



@dataclass
class LoadedConfig:
    """A validated config with its rules, where each came from, and warnings worth printing."""

    path: Path
    config: DaemonConfig
    rules: list[AnyRule]
    origins: dict[str, RuleOrigin]
    rule_files: list[Path]
    warnings: list[str] = field(default_factory=list)

    def rules_for(self, site: str) -> list[AnyRule]:
        return [r for r in self.rules if r.applies_to(site)]


def load(config_path: Path) -> LoadedConfig:
    """The config and every rule file it names, checked together; ConfigError lists all problems."""
    display = display_name(config_path)
    config_doc = read(config_path, display)
    problems: list[Problem] = []
    config: DaemonConfig | None = None
    warnings: list[str] = []
    try:
        config = validate(DaemonConfig, config_doc)
        patterns = list(config.rule_files)
        config, syslog_problems, syslog_warnings = _syslog_paths(config, config_doc,
                                                                 config_path.parent)
        problems.extend(syslog_problems)
        warnings.extend(syslog_warnings)
    except ConfigError as exc:
        problems.extend(exc.problems)
        raw = config_doc.data.get("rule_files") if isinstance(config_doc.data, dict) else None
        ok = isinstance(raw, list) and all(isinstance(p, str) for p in raw)
        # still check the rule files we can find
        patterns = [str(p) for p in raw] if ok and isinstance(raw, list) else []
    rules: list[AnyRule] = []
    origins: dict[str, RuleOrigin] = {}
    paths = rule_paths(config_path, patterns, warnings)
    for path in paths:
        name = display_name(path)
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
    if token is not None and not secret_path(token, config_path.parent).is_file():
        warnings.append(f"api.token_file {token} does not exist yet")
    return LoadedConfig(config_path, config, rules, origins, paths, warnings)


# A unix socket's path fits in sockaddr_un.sun_path: 108 bytes with the final NUL.
SUN_PATH_MAX = 107


def _syslog_paths(
    config: DaemonConfig, doc: Document, config_dir: Path
) -> tuple[DaemonConfig, list[Problem], list[str]]:
    """`config` with every colour's `syslog` made absolute (relative to the config's folder),
    the problems (a path too long for a unix socket, one socket for two colours) and warnings
    (a folder that does not exist yet: the daemon creates none)."""
    problems: list[Problem] = []
    warnings: list[str] = []
    seen: dict[Path, str] = {}
    sites: dict[str, SiteConfig] = {}
    for name, site in config.sites.items():
        colors: dict[str, ColorConfig] = {}
        for color, spec in site.colors.items():
            if spec.syslog is not None:
                full = spec.syslog if spec.syslog.is_absolute() else config_dir / spec.syslog
                full = Path(os.path.normpath(full.absolute()))
                key = f"sites.{name}.colors.{color}.syslog"
                line = doc.line_of(("sites", name, "colors", color, "syslog"))
                size = len(os.fsencode(full))
                if size > SUN_PATH_MAX:
                    problems.append(Problem(doc.file, line,
                                            f"{key} {full}: {size} bytes, longer than a unix "
                                            f"socket's path can be ({SUN_PATH_MAX}); use a "
                                            "shorter one, e.g. /run/odoo-watchdog/"
                                            f"{spec.server}.sock"))
                if full in seen:
                    problems.append(Problem(doc.file, line,
                                            f"{key} {full} is also {seen[full]}: each colour "
                                            "needs a socket of its own (a record does not say "
                                            "which Odoo sent it)"))
                seen.setdefault(full, key)
                if not full.parent.is_dir():
                    warnings.append(f"{key}: folder {full.parent} does not exist yet (the "
                                    "daemon creates no folder; systemd's RuntimeDirectory= "
                                    "can)")
                spec = spec.model_copy(update={"syslog": full})
            colors[color] = spec
        sites[name] = site.model_copy(update={"colors": colors})
    return config.model_copy(update={"sites": sites}), problems, warnings


def _cross_check(rule: AnyRule, config: DaemonConfig, doc: Document, index: int) -> list[Problem]:
    out: list[Problem] = []
    for position, named in enumerate(rule.sites or []):
        if named not in config.sites:
            known = ", ".join(sorted(config.sites))
            line = doc.line_of(("rules", index, "sites", position))
            out.append(Problem(doc.file, line,
                               f"rule {rule.name!r}: unknown site {named!r} (sites: {known})"))
    line = doc.line_of(("rules", index, "source"))
    if isinstance(rule, TrafficRule) and config.access_log is None:
        out.append(Problem(doc.file, line, f"rule {rule.name!r} reads the proxy's access log "
                           "(source: traffic), but the config has no access_log: section"))
    for site_name, site in config.sites.items():
        if rule.applies_to(site_name):
            out.extend(Problem(doc.file, line, text)
                       for text in rule.site_problems(site_name, site))
    return out
