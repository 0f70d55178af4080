"""Rule files (docs/rules.md): the rule models, one per `source:`, and reading them.

Like Prometheus' rule files: `name`, a query or pattern, `for`, `labels`, `annotations`.
A rule's thresholds and templates are checked when its file is loaded, not when the first
rollout measures it; every error names `file:line`.
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, field_validator, model_validator

from watchdog.schema import Duration, OnFire, Strict, check_template
from watchdog.yamlsrc import Document, dotted, read, validate

if TYPE_CHECKING:
    from watchdog.config import SiteConfig

__all__ = [
    "DEFAULT_LOG_PATTERN",
    "AnyRule",
    "HttpRule",
    "JudgeSpec",
    "LogsRule",
    "PrometheusRule",
    "Rule",
    "RuleBase",
    "RuleFile",
    "RuleOrigin",
    "TrafficRule",
    "load_rule_file",
    "rule_paths",
]

NoData = Literal["ok", "hold", "breach"]
# Odoo's log format is "%(asctime)s %(pid)s %(levelname)s %(dbname)s %(name)s: %(message)s";
# this matches the level field only, so an INFO line whose message says ERROR is not counted.
DEFAULT_LOG_PATTERN = r"^\S+ \S+ \d+ (ERROR|CRITICAL) "
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_:.\-]*$")


class RuleBase(Strict):
    """What every rule has, whatever measures it."""

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
    def _bounds(self) -> RuleBase:
        self.check_bounds()
        return self

    def check_bounds(self) -> None:
        if self.min is None and self.max is None:
            raise ValueError("needs a threshold: min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}")

    def threshold_text(self) -> str:
        parts = []
        if self.min is not None:
            parts.append(f">= {self.min:g}")
        if self.max is not None:
            parts.append(f"<= {self.max:g}")
        return " and ".join(parts)

    def applies_to(self, site: str) -> bool:
        return self.sites is None or site in self.sites

    def site_problems(self, site_name: str, site: SiteConfig) -> list[str]:
        """What `site` lacks for this rule to be measured there (none for most sources)."""
        return []


class PrometheusRule(RuleBase):
    source: Literal["prometheus"]
    query: str = Field(min_length=1)

    @field_validator("query")
    @classmethod
    def _query(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query is empty")
        return check_template(value)


class LogsRule(RuleBase):
    source: Literal["logs"]
    pattern: str = DEFAULT_LOG_PATTERN
    window: Duration = Field(300.0, gt=0)
    # Count only lines that are records Odoo wrote (not lines forged inside a failed-login
    # record's raw login): watchdog/sources/logcount.py RecordChecks, README "Log transports".
    record_checks: bool = True

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"pattern is not a valid regular expression: {exc}") from None
        return value

    def site_problems(self, site_name: str, site: SiteConfig) -> list[str]:
        return [f"rule {self.name!r} reads logs, but site {site_name!r} colour {color!r} has "
                "neither container nor log_file nor syslog"
                for color, spec in site.colors.items()
                if spec.container is None and spec.log_file is None and spec.syslog is None]


class HttpRule(RuleBase):
    source: Literal["http"]
    path: str
    timeout: Duration = Field(2.0, gt=0)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"path must start with '/' (got {value!r})")
        return check_template(value)


# The longest window of a traffic rule: what the receiver keeps (watchdog.traffic.HISTORY).
TRAFFIC_HISTORY = 300.0
Measure = Literal["error_rate", "p50", "p95", "p99", "rps", "latency"]
Test = Literal["mann_whitney", "proportions"]
_TEST_OF: dict[str, Test] = {"latency": "mann_whitney", "error_rate": "proportions"}


class JudgeSpec(Strict):
    """`judge:` of a traffic rule: the candidate against the live colour (watchdog.judge)."""

    test: Test
    max_ratio: float = Field(1.0, gt=0)
    confidence: float = Field(0.99, gt=0, lt=1)
    # mann_whitney only: the candidate's median must also be this much above the live one's.
    # Proxies log whole milliseconds, so 1 ms against 2 ms is "twice as slow" and, with
    # hundreds of requests, significant: a healthy canary of fast requests would roll back.
    min_difference: Duration = Field(0.005, ge=0)

    @model_validator(mode="after")
    def _difference(self) -> JudgeSpec:
        if self.test == "proportions" and "min_difference" in self.model_fields_set:
            raise ValueError("min_difference is a latency (mann_whitney); a proportions test "
                             "has max_ratio only")
        return self


class TrafficRule(RuleBase):
    """`source: traffic` (DESIGN.md §14): the receiver's own per-colour requests, no
    Prometheus. A threshold on `measure`, or on candidate / live (`relative_to: live`), or
    a statistical `judge:` of the two colours."""

    source: Literal["traffic"]
    measure: Measure
    window: Duration = Field(60.0, gt=0, le=TRAFFIC_HISTORY)
    min_requests: int = Field(20, ge=1)
    relative_to: Literal["live"] | None = None
    judge: JudgeSpec | None = None

    @model_validator(mode="after")
    def _bounds(self) -> TrafficRule:
        if self.judge is not None:
            if self.min is not None or self.max is not None:
                raise ValueError("a judge takes no min or max: it breaches when the test finds "
                                 "the candidate worse (confidence) by more than max_ratio")
            if self.relative_to is not None:
                raise ValueError("judge and relative_to both compare with the live colour: "
                                 "use one")
            wanted = _TEST_OF.get(self.measure)
            if wanted != self.judge.test:
                hint = (f"measure {self.measure} is judged with test {wanted}" if wanted
                        else "a judge needs measure latency (mann_whitney) or error_rate "
                             "(proportions)")
                raise ValueError(f"judge test {self.judge.test} does not fit measure "
                                 f"{self.measure}: {hint}")
            return self
        if self.measure == "latency":
            raise ValueError("measure latency is the per-request sample a judge compares; for "
                             "a threshold use p50, p95 or p99")
        if self.relative_to is not None and self.measure == "rps":
            raise ValueError("rps relative to live only repeats the split of the weights: "
                             "compare error_rate or a latency quantile")
        self.check_bounds()
        return self

    def threshold_text(self) -> str:
        if self.judge is not None:
            return (f"not worse than live by x{self.judge.max_ratio:g} at "
                    f"{self.judge.confidence:g} confidence ({self.judge.test})")
        text = super().threshold_text()
        return f"candidate/live {text}" if self.relative_to else text

    @property
    def compares(self) -> bool:
        """True when the rule reads the live colour too (relative_to or judge)."""
        return self.judge is not None or self.relative_to is not None


AnyRule = PrometheusRule | LogsRule | HttpRule | TrafficRule
Rule = Annotated[AnyRule, Field(discriminator="source")]


class RuleFile(Strict):
    rules: list[Rule]


@dataclass(frozen=True)
class RuleOrigin:
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


def load_rule_file(path: Path, display: str | None = None) -> tuple[list[AnyRule], Document]:
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

    parsed: RuleFile = validate(RuleFile, doc, describe)
    return list(parsed.rules), doc


def rule_paths(
    config_path: Path, patterns: list[str], warnings: list[str] | None = None
) -> list[Path]:
    """The files `rule_files` names, relative to the config's directory, each once, in order.

    A pattern with glob magic that matches nothing adds a warning (a plain path that does not
    exist is left to the reader, whose error names it).
    """
    paths: list[Path] = []
    for pattern in patterns:
        full = pattern if Path(pattern).is_absolute() else str(config_path.parent / pattern)
        if glob.has_magic(pattern):
            found = sorted(Path(p) for p in glob.glob(full))
            if not found and warnings is not None:
                warnings.append(f"rule_files pattern {pattern!r} matches no file")
        else:
            found = [Path(full)]
        paths.extend(p for p in found if p not in paths)
    return paths
