"""nginx: the daemon owns one file holding one `upstream` block, and reloads nginx to apply it.

Open-source nginx has no runtime API for upstream weights (that is nginx Plus), so a change of
split is: render the block, write it atomically, `nginx -t`, `nginx -s reload`. A failed test
or reload puts the previous file back, so the file on disk always matches a config that nginx
accepted and the next reload (by anyone) cannot apply a split nobody asked for.

Reading the split back reads the file, not nginx: without an API that is the only source. It
is the file that nginx loads on its next reload, and the daemon re-applies its desired split
whenever the file says otherwise.

The colours' `server` is the upstream address (`127.0.0.1:8069`, `unix:/run/odoo.sock`);
a colour at 0 is written `down`, because nginx refuses `weight=0`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from watchdog.routers.base import (
    RouterConfigBase,
    RouterError,
    ServerHealth,
    Weights,
    percentages,
    validate_weights,
)
from watchdog.routers.files import OwnedFile
from watchdog.schema import COLORS, Duration

if TYPE_CHECKING:
    from watchdog.config import ColorConfig, SiteConfig

__all__ = ["NginxRouter", "NginxRouterConfig", "parse_upstream", "render_upstream"]

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_COMMENT = re.compile(r"#[^\n]*")
_UPSTREAM = re.compile(r"\bupstream\s+(\S+)\s*\{([^{}]*)\}")
_ADDRESS = re.compile(r"(unix:/\S+|\[?[\w.:-]+\]?:\d{1,5})")


class NginxRouterConfig(RouterConfigBase):
    """An upstream block the daemon owns; `server` of each colour is its host:port."""

    kind: Literal["nginx"]
    upstream_file: Path
    upstream: str
    reload: str = "nginx -s reload"
    test: str = "nginx -t"
    timeout: Duration = Field(30.0, gt=0)

    @property
    def backend(self) -> str:
        return self.upstream

    def check_colors(self, colors: Mapping[str, ColorConfig]) -> None:
        for color, spec in colors.items():
            if not _ADDRESS.fullmatch(spec.server):
                raise ValueError(
                    f"colours.{color}.server {spec.server!r}: with an nginx router, server "
                    "is the upstream address, host:port (e.g. 127.0.0.1:8069)"
                )

    def create(self, site_name: str, site: SiteConfig) -> NginxRouter:
        return NginxRouter(site_name, site)


def render_upstream(
    site_name: str, upstream: str, servers: Mapping[str, str], weights: Mapping[str, int]
) -> str:
    """The whole file: a header, then `upstream <name> { server <addr> weight=N|down; ... }`."""
    lines = [
        f"# Managed by odoo-watchdog for site {site_name!r}: rewritten on every change of the",
        "# traffic split. Do not edit: the next change overwrites it, and the daemon puts its",
        "# own split back when it finds another one here.",
        f"# split: {' '.join(f'{c}={weights[c]}' for c in COLORS)}",
        f"upstream {upstream} {{",
    ]
    for color in COLORS:
        weight = weights[color]
        param = f"weight={weight}" if weight > 0 else "down"
        lines.append(f"    server {servers[color]} {param};  # {color}")
    lines.append("}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class UpstreamServer:
    address: str
    weight: int  # nginx's default is 1
    down: bool
    backup: bool


def parse_upstream(text: str, path: Path, upstream: str) -> list[UpstreamServer]:
    """The `server` lines of the one `upstream <upstream>` block in `text`."""
    bare = _COMMENT.sub("", text)
    blocks = _UPSTREAM.findall(bare)
    if not blocks:
        raise RouterError(f"{path}: no `upstream {upstream} {{ ... }}` block in the file")
    names = [name for name, _ in blocks]
    if names != [upstream]:
        raise RouterError(
            f"{path} defines upstream {', '.join(names)}, but the router is configured for "
            f"upstream {upstream!r} (router.upstream): is this the right file?"
        )
    servers: list[UpstreamServer] = []
    for statement in blocks[0][1].split(";"):
        tokens = statement.split()
        if not tokens or tokens[0] != "server":
            continue  # keepalive, zone, ...: not part of the split
        if len(tokens) < 2:
            raise RouterError(f"{path}: `server` without an address in upstream {upstream}")
        weight, down, backup = 1, False, False
        for param in tokens[2:]:
            if param.startswith("weight="):
                value = param.removeprefix("weight=")
                if not value.isdigit():
                    raise RouterError(f"{path}: bad {param!r} for server {tokens[1]}")
                weight = int(value)
            elif param == "down":
                down = True
            elif param == "backup":
                backup = True
        servers.append(UpstreamServer(tokens[1], weight, down, backup))
    return servers


@dataclass(frozen=True)
class _Result:
    ok: bool
    detail: str  # nginx's own words, or why the command did not run


async def _run(command: str, timeout: float) -> _Result:
    """Run `command` (split like a shell would, but no shell) within `timeout` seconds."""
    argv = shlex.split(command)
    if not argv:
        return _Result(False, "empty command")
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        return _Result(False, f"cannot run {argv[0]}: {exc.strerror or exc}")
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return _Result(False, f"no answer within {timeout:g}s (killed)")
    output = (stderr or stdout).decode(errors="replace").strip()
    detail = " | ".join(line.strip() for line in output.splitlines() if line.strip())
    if proc.returncode != 0:
        return _Result(False, f"exit code {proc.returncode}: {detail or '(no output)'}")
    return _Result(True, detail)


class NginxRouter:
    """The `Router` of an nginx upstream block kept in `router.upstream_file`."""

    kind = "nginx"

    def __init__(self, site_name: str, site: SiteConfig) -> None:
        router = site.router
        if not isinstance(router, NginxRouterConfig):
            raise RouterError(f"site {site_name!r}: router kind is {router.kind}, not nginx")
        if not _NAME.match(router.upstream):
            raise RouterError(f"site {site_name!r}: bad upstream name {router.upstream!r}")
        self.site_name = site_name
        self.path = Path(router.upstream_file)
        self.file = OwnedFile(self.path, site_name, "upstream file")
        self.upstream = router.upstream
        self.test_command = router.test
        self.reload_command = router.reload
        self.timeout = router.timeout
        self.servers = {color: site.colors[color].server for color in COLORS}
        self._colors = {server: color for color, server in self.servers.items()}

    def __repr__(self) -> str:
        return f"NginxRouter(site={self.site_name!r}, file={str(self.path)!r})"

    async def get_weights(self) -> Weights:
        text = self.file.read_text()
        raw = {color: 0 for color in COLORS}
        for server in parse_upstream(text, self.path, self.upstream):
            color = self._colors.get(server.address)
            if color is None:
                known = ", ".join(f"{c}={a}" for c, a in self.servers.items())
                raise RouterError(
                    f"{self.path}: upstream {self.upstream} has server {server.address}, which "
                    f"is no colour of site {self.site_name!r} ({known})"
                )
            if not (server.down or server.backup):
                raw[color] += server.weight
        return percentages(raw)

    async def set_weights(self, weights: Mapping[str, int], *, drain: bool = False) -> Weights:
        """Write, test, reload; on failure restore the previous file and raise RouterError.

        `drain` changes nothing here: open-source nginx has no sticky sessions to drain, and a
        reload lets the old workers finish their requests (websockets until
        `worker_shutdown_timeout`) whatever the split.
        """
        wanted = validate_weights(weights)
        text = render_upstream(self.site_name, self.upstream, self.servers, wanted)
        return await self.file.replace(text.encode(), wanted, self.get_weights,
                                       apply=self._test_and_reload, cannot_express=True)

    async def _test_and_reload(self) -> str | None:
        for step, command in (("test", self.test_command), ("reload", self.reload_command)):
            result = await _run(command, self.timeout)
            if not result.ok:
                return (f"{command} failed for {self.path}: {result.detail}"
                        + (" (nginx was not reloaded)" if step == "test" else ""))
        return None

    async def check(self) -> None:
        self.file.check_writable()
        if self.path.exists():
            await self.get_weights()  # ours, and readable
        result = await _run(self.test_command, self.timeout)
        if not result.ok:
            raise RouterError(f"{self.test_command} failed: {result.detail}")

    async def health(self) -> dict[str, ServerHealth]:
        return {}  # no active checks: a failing server is seen by the rules, not here

    async def settle(self) -> None:
        return None  # nothing of this router's outlives a switch

    async def close(self) -> None:
        return None
