"""A site's `database:` and `prepare:` settings (DESIGN.md section 12, docs/database.md).

The models only; the steps that act on them are in `watchdog/steps/`. `load_servers` reads
the `dsn_file` secret at start (like every `*_file`): its conninfo is never logged, and only
`Server.label` (host:port and user) appears in messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from watchdog.schema import COLORS, Color, Duration, Strict, check_template, render
from watchdog.secrets import SecretError, read_secret

# `{{ x }}` in a prepare step's command or image.
PREPARE_VARS = frozenset({"site", "color", "version", "database", "url"})
STEP_ORDER = ("backup", "clone", "deploy", "migrate", "gate")
DEFAULT_MIGRATE = ("odoo", "-d", "{{ database }}", "-u", "all", "--stop-after-init")


class BackupSettings(Strict):
    dir: Path = Path("/var/backups/odoo-watchdog")
    keep: int = Field(5, ge=1, le=1000)


class DatabaseConfig(Strict):
    strategy: Literal["separate", "shared"] = "separate"
    dsn_file: Path
    names: dict[Color, str]
    filestore: dict[Color, Path] | None = None
    backup: BackupSettings = Field(default_factory=BackupSettings)
    migration: Literal["compatible", "breaking"] | None = None
    lock_wait: Duration = Field(30.0, gt=0)

    @field_validator("names")
    @classmethod
    def _names(cls, names: dict[str, str]) -> dict[str, str]:
        missing = [c for c in COLORS if c not in names]
        if missing:
            raise ValueError(f"names needs both colours ({missing[0]} is missing); with "
                             "strategy shared give the same name twice")
        for color, name in names.items():
            if not name or len(name.encode()) > 50 or "\0" in name:
                raise ValueError(f"names.{color} {name!r}: a PostgreSQL database name of 1 "
                                 "to 50 bytes (the steps add a suffix to it)")
        return names

    @field_validator("filestore")
    @classmethod
    def _filestore(cls, paths: dict[str, Path] | None) -> dict[str, Path] | None:
        if paths is not None:
            missing = [c for c in COLORS if c not in paths]
            if missing:
                raise ValueError(f"filestore needs both colours ({missing[0]} is missing)")
        return paths

    @model_validator(mode="after")
    def _strategy(self) -> DatabaseConfig:
        blue, green = self.names["blue"], self.names["green"]
        if self.strategy == "shared":
            if blue != green:
                raise ValueError(f"strategy shared: both colours use one database, but names "
                                 f"are {blue!r} and {green!r}; give the same name twice")
        else:
            if self.migration is not None:
                raise ValueError("migration: only means something with strategy shared (with "
                                 "separate, the live colour's database is never touched)")
            if self.filestore is not None:
                a, b = self.filestore["blue"], self.filestore["green"]
                if a == b:
                    raise ValueError(f"filestore: blue and green share {a}; with separate "
                                     "databases each needs its own folder (Odoo's attachment "
                                     "garbage collector in one would delete the other's files)")
        return self

    @property
    def breaking(self) -> bool:
        """Old code must not serve the migrated schema (shared, migration breaking)."""
        return self.strategy == "shared" and (self.migration or "breaking") == "breaking"


class MigrateSettings(Strict):
    command: list[str] = Field(default_factory=lambda: list(DEFAULT_MIGRATE), min_length=1)
    container: bool = False
    timeout: Duration = Field(1800.0, gt=0)

    @field_validator("command")
    @classmethod
    def _command(cls, argv: list[str]) -> list[str]:
        for arg in argv:
            check_template(arg, PREPARE_VARS)
        return argv


class DeploySettings(Strict):
    """`image`: recreate the candidate's container from it (a `container` colour); `command`
    alone: an argv that brings the candidate up (systemd or anything else); with `image`,
    `command` is the new container's command instead of the image's."""

    image: str | None = None
    command: list[str] | None = Field(None, min_length=1)
    timeout: Duration = Field(300.0, gt=0)
    pull: bool = True

    @field_validator("image")
    @classmethod
    def _image(cls, image: str | None) -> str | None:
        if image is not None:
            if not image.strip():
                raise ValueError("image must not be empty")
            check_template(image, PREPARE_VARS)
        return image

    @field_validator("command")
    @classmethod
    def _command(cls, argv: list[str] | None) -> list[str] | None:
        for arg in argv or ():
            check_template(arg, PREPARE_VARS)
        return argv

    @model_validator(mode="after")
    def _one(self) -> DeploySettings:
        if self.image is None and self.command is None:
            raise ValueError("deploy needs an image (for a container colour) or a command "
                             "(e.g. [systemctl, restart, odoo-green])")
        return self


class _Named(Strict):
    @property
    def name(self) -> str:
        return next(iter(type(self).model_fields))


class MigrateStep(_Named):
    migrate: MigrateSettings = Field(default_factory=MigrateSettings)


class DeployStep(_Named):
    deploy: DeploySettings


def _step_tag(value: Any) -> str:
    if isinstance(value, str):
        return "bare"
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ("migrate", "deploy"):
        return str(next(iter(value)))
    return "bad"


class _BadStep(Strict):
    """Never valid: makes pydantic say what a step may look like."""

    @model_validator(mode="before")
    @classmethod
    def _refuse(cls, value: Any) -> Any:
        raise ValueError("a prepare step is a name (backup, clone, migrate, gate) or one of "
                         "`migrate: {...}`, `deploy: {...}`")


BareStep = Literal["backup", "clone", "migrate", "gate"]
PrepareStep = Annotated[
    Annotated[BareStep, Tag("bare")] | Annotated[MigrateStep, Tag("migrate")]
    | Annotated[DeployStep, Tag("deploy")] | Annotated[_BadStep, Tag("bad")],
    Discriminator(_step_tag),
]


def step_name(step: str | MigrateStep | DeployStep | _BadStep) -> str:
    if isinstance(step, str):
        return step
    return "migrate" if isinstance(step, MigrateStep) else "deploy"


def deploy_settings(steps: list[Any]) -> DeploySettings | None:
    for step in steps:
        if isinstance(step, DeployStep):
            return step.deploy
    return None


def migrate_settings(steps: list[Any]) -> MigrateSettings:
    for step in steps:
        if isinstance(step, MigrateStep):
            return step.migrate
    return MigrateSettings()


def check_prepare(steps: list[Any], database: DatabaseConfig | None) -> None:
    """The step list as a whole: each step once, in the order of STEP_ORDER, with what it
    needs; ValueError naming the first problem."""
    names = [step_name(s) for s in steps]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"{name} is given twice")
    order = [n for n in STEP_ORDER if n in names]
    if names != order:
        raise ValueError(f"steps run in the order {', '.join(STEP_ORDER)} (got "
                         f"{', '.join(names)})")
    needs_db = [n for n in names if n in ("backup", "clone", "migrate", "gate")]
    if needs_db and database is None:
        raise ValueError(f"{needs_db[0]} needs the site's database: settings")
    if database is not None and database.strategy == "shared" and "clone" in names:
        raise ValueError("clone needs strategy separate (with shared both colours "
                         "use one database; there is nothing to clone into)")


def render_command(argv: list[str], variables: Mapping[str, str]) -> list[str]:
    return [render(arg, variables) for arg in argv]


def load_servers(database: DatabaseConfig, config_dir: Path, site: str) -> dict[str, Any]:
    """colour -> Server. The file holds one conninfo line (one server for both colours) or
    `blue: ...` and `green: ...` lines (a server per colour). SecretError says what is
    wrong without showing the conninfo."""
    from watchdog.steps.pg import DsnError, Server

    key = f"sites.{site}.database.dsn_file"
    text = read_secret(database.dsn_file, config_dir, key)
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not ln.strip().startswith("#")]
    per_color: dict[str, str] = {}
    for line in lines:
        head, sep, rest = line.partition(":")
        if sep and head.strip() in COLORS and not rest.startswith("//"):
            per_color[head.strip()] = rest.strip()
    try:
        if per_color:
            missing = [c for c in COLORS if c not in per_color]
            if missing or len(per_color) != len(lines):
                raise SecretError(f"{key}: give one conninfo line, or one `blue: ...` and one "
                                  "`green: ...` line")
            servers = {c: Server.parse(per_color[c]) for c in COLORS}
        else:
            if len(lines) != 1:
                raise SecretError(f"{key}: give one conninfo line, or one `blue: ...` and "
                                  "one `green: ...` line")
            one = Server.parse(lines[0])
            servers = {c: one for c in COLORS}
    except DsnError as exc:
        raise SecretError(f"{key}: {exc}") from None
    same_server = servers["blue"] == servers["green"]
    if database.strategy == "separate" and same_server \
            and database.names["blue"] == database.names["green"]:
        raise SecretError(f"sites.{site}.database: blue and green both use database "
                          f"{database.names['blue']!r} on one server; with strategy separate "
                          "give two names, or a server per colour in dsn_file")
    return servers
