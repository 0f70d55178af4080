"""HAProxy 2.6 through its runtime API (the stats socket at level admin).

A switch is one connection carrying every command joined by `;`, the colour that gains
traffic first, so there is never a moment where no server takes new requests. HAProxy's
weights are the percentages themselves (0..100 within its 0..256). A colour at 0 goes to
`maint` on rollback, so cookie-sticky users move too; on promotion it goes to `drain` (sticky
users finish their session) and to `maint` after `drain_timeout`. The result is read back
with `show servers state` and any difference is an error. After every change the whole
`show servers state` is written to `state_file` (haproxy.cfg's `server-state-file`), so an
HAProxy reload keeps the split instead of falling back to the weights in haproxy.cfg.

`sockets: [...]` instead of `socket:` puts several HAProxy nodes in front of one site (DESIGN.md
§15): one `HaproxyRouter` per node, each with its own `state_files` entry, behind one
`MultiRouter` (`multi.py`) that applies and reads back the split on all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from watchdog.routers.base import (
    Router,
    RouterConfigBase,
    RouterError,
    ServerHealth,
    Weights,
    percentages,
    validate_weights,
    write_atomic,
)
from watchdog.routers.multi import MultiRouter
from watchdog.schema import COLORS, Duration

if TYPE_CHECKING:
    from watchdog.config import SiteConfig

__all__ = ["HaproxyRouter", "HaproxyRouterConfig", "parse_servers_state", "parse_stat_typed"]

# srv_admin_state bits (HAProxy's server.h): forced/inherited/config maintenance,
# forced/inherited drain, resolution and hostname maintenance.
_MAINT = 0x01 | 0x02 | 0x04 | 0x20 | 0x40
_DRAIN = 0x08 | 0x10

_KNOWN_ERRORS = {
    "No such server.": "HAProxy backend {backend} has no server {server}",
    "No such backend.": "HAProxy has no backend {backend}",
    "Can't find backend.": "HAProxy has no backend {backend}",
    "Permission denied": (
        "HAProxy refused the command on {socket}: the socket is not at level admin "
        "(use `stats socket ... level admin` in haproxy.cfg)"
    ),
}


class HaproxyRouterConfig(RouterConfigBase):
    """HAProxy's runtime API; `server` of each colour is the HAProxy server name."""

    kind: Literal["haproxy"]
    # A unix socket path, or host:port of a TCP stats socket; or `sockets`, one per HAProxy
    # node in front of the site (exactly one of the two).
    socket: str | None = None
    sockets: list[str] | None = Field(None, min_length=1, max_length=16)
    backend: str  # the HAProxy backend, which is also the site's `backend`
    # Where `show servers state` is written after every change, so a reload keeps the split;
    # the same path as `server-state-file` in haproxy.cfg. With `sockets`: `state_files`, one
    # per node in the same order (or none).
    state_file: Path | None = None
    state_files: list[Path] | None = None
    drain_timeout: Duration = Field(30.0, ge=0)  # drain, then maint, for a colour given up
    timeout: Duration = Field(2.0, gt=0)
    # With `sockets`: how long a node may fail (unreachable, or not taking the split) before
    # it is an alert (a notification, the audit event `router_node_down`).
    node_deadline: Duration = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _one_kind_of_socket(self) -> HaproxyRouterConfig:
        if (self.socket is None) == (self.sockets is None):
            raise ValueError("give exactly one of socket (one HAProxy) and sockets (a list, "
                             "one per HAProxy node)")
        if self.sockets is None:
            if self.state_files is not None:
                raise ValueError("state_files goes with sockets; with socket, use state_file")
            return self
        repeated = sorted({s for s in self.sockets if self.sockets.count(s) > 1})
        if repeated:
            raise ValueError(f"sockets names {repeated[0]} more than once")
        if self.state_file is not None:
            raise ValueError("with sockets, give state_files (one per node), not state_file")
        if self.state_files is not None:
            if len(self.state_files) != len(self.sockets):
                raise ValueError(f"state_files has {len(self.state_files)} entries and sockets "
                                 f"{len(self.sockets)}: give one per node, in the same order")
            paths = [str(p) for p in self.state_files]
            shared = sorted({p for p in paths if paths.count(p) > 1})
            if shared:
                raise ValueError(f"state_files names {shared[0]} more than once: each node "
                                 "needs its own (each holds that node's state)")
        return self

    def nodes(self) -> list[tuple[str, Path | None]]:
        """(socket, state file) of each HAProxy node, in the config's order."""
        if self.sockets is None:
            assert self.socket is not None
            return [(self.socket, self.state_file)]
        files: list[Path | None] = (list(self.state_files) if self.state_files is not None
                                    else [None] * len(self.sockets))
        return list(zip(self.sockets, files, strict=True))

    def create(self, site_name: str, site: SiteConfig) -> Router:
        if self.sockets is None:
            return HaproxyRouter(site_name, site)
        return MultiRouter(
            "haproxy", [(sock, HaproxyRouter(site_name, site, socket=sock, state_file=path))
                        for sock, path in self.nodes()],
            # a switch is at most three runtime-API calls (verify, switch, name the error)
            node_timeout=3 * self.timeout, node_deadline=self.node_deadline)


@dataclass(frozen=True)
class ServerState:
    name: str
    op_state: int  # 0 stopped, 1 starting, 2 running, 3 stopping
    admin_state: int
    weight: int  # srv_uweight: the weight in force

    @property
    def in_maint(self) -> bool:
        return bool(self.admin_state & _MAINT)

    @property
    def draining(self) -> bool:
        return bool(self.admin_state & _DRAIN)

    @property
    def effective(self) -> int:
        """The weight new, non-sticky requests see."""
        return 0 if self.in_maint or self.draining else self.weight

    @property
    def up(self) -> bool:
        return self.op_state == 2


class RuntimeApi:
    """One command (or `;`-joined commands) per connection, as HAProxy's non-interactive mode."""

    def __init__(self, address: str, timeout: float) -> None:
        self.address = address
        self.timeout = timeout

    async def send(self, command: str) -> str:
        try:
            return await asyncio.wait_for(self._send(command), self.timeout)
        except TimeoutError:
            raise RouterError(
                f"HAProxy runtime API {self.address}: no answer in {self.timeout:g}s"
            ) from None
        except (ConnectionRefusedError, FileNotFoundError) as exc:
            raise RouterError(
                f"cannot connect to HAProxy runtime API {self.address}: {exc.strerror or exc}"
                " (is HAProxy running, and is this its `stats socket`?)"
            ) from None
        except PermissionError as exc:
            raise RouterError(
                f"cannot open HAProxy runtime API {self.address}: {exc.strerror} (run as a user "
                "in the socket's group, e.g. SupplementaryGroups=haproxy)"
            ) from None
        except OSError as exc:
            raise RouterError(f"HAProxy runtime API {self.address}: {exc}") from None

    async def _send(self, command: str) -> str:
        if "/" in self.address:
            reader, writer = await asyncio.open_unix_connection(self.address)
        else:
            host, _, port = self.address.rpartition(":")
            reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
        try:
            writer.write(command.encode() + b"\n")
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return data.decode(errors="replace")


class HaproxyRouter:
    kind = "haproxy"

    def __init__(self, site_name: str, site: SiteConfig, *, socket: str | None = None,
                 state_file: Path | None = None) -> None:
        """`socket` and `state_file`: one node of `sockets` (and its `state_files` entry);
        by default the config's `socket` and `state_file`."""
        config = site.router
        if not isinstance(config, HaproxyRouterConfig):
            raise RouterError(f"site {site_name!r}: router kind is {config.kind}, not haproxy")
        self.site = site_name
        self.config = config
        self.backend = config.backend
        self.servers = {color: site.colors[color].server for color in COLORS}
        if socket is None:
            if config.socket is None:
                raise RouterError(f"site {site_name!r}: this HAProxy router has sockets; "
                                  "name the node's socket")
            socket, state_file = config.socket, config.state_file
        self.socket = socket
        self.state_file = state_file
        self.api = RuntimeApi(socket, config.timeout)
        self._drains: dict[str, asyncio.Task[None]] = {}
        self._verified = False
        self._read: tuple[dict[str, ServerState], dict[str, ServerHealth]] | None = None
        self._be_id: int | None = None

    # ---------------------------------------------------------------- reading

    async def server_states(self) -> dict[str, ServerState]:
        """Our two servers' state from `show servers state <backend>`, by colour."""
        return self._ours(await self.api.send(f"show servers state {self.backend}"))

    def _ours(self, answer: str) -> dict[str, ServerState]:
        self._raise_for(answer, server="*")
        found = parse_servers_state(answer, self.backend)
        out = {}
        for color, server in self.servers.items():
            if server not in found:
                raise RouterError(f"HAProxy backend {self.backend} has no server {server} "
                                  f"(the {color} colour); it has: {', '.join(found) or 'none'}")
            out[color] = found[server]
        self._verified = True
        return out

    async def get_weights(self) -> Weights:
        """One round trip: the servers' state and their check (kept for `health` and
        `settle`, which the daemon calls next in the same tick). The check is asked of the
        backend by its id (`show stat <name>` may find a frontend of the same name), learnt
        from the first answer; a reload that renumbered it is seen by the name in the rows."""
        command = f"show servers state {self.backend}"
        if self._be_id is not None:
            command += f"; show stat {self._be_id} 4 -1 typed"
        answer = await self.api.send(command)
        typed_from = answer.find("\nS.")  # the state's answer comes first, the stats after
        state_part = answer if typed_from < 0 else answer[:typed_from + 1]
        states = self._ours(state_part)
        health = self._health_of(parse_stat_typed(answer))
        be_id = _backend_id(state_part)
        if be_id is not None and (len(health) < len(states) or be_id != self._be_id):
            self._be_id = be_id
            health = self._health_of(parse_stat_typed(
                await self.api.send(f"show stat {be_id} 4 -1 typed")))
        self._read = (states, health)
        return percentages({color: float(s.effective) for color, s in states.items()})

    async def health(self) -> dict[str, ServerHealth]:
        """Each colour's server as HAProxy's own check sees it, from `show stat typed` (one
        field per line, so a check message with a comma cannot shift a CSV column)."""
        if self._read is not None:
            return self._read[1]
        return self._health_of(parse_stat_typed(await self.api.send("show stat typed")))

    def _health_of(self, rows: list[dict[str, str]]) -> dict[str, ServerHealth]:
        by_name = {row.get("svname"): row for row in rows if row.get("pxname") == self.backend}
        out = {}
        for color, server in self.servers.items():
            row = by_name.get(server)
            if row is None:
                continue
            check = row.get("check_status", "").lstrip("* ")
            if check and row.get("check_code"):
                check += f" {row['check_code']}"
            if check and row.get("last_chk"):
                check += f": {row['last_chk']}"
            out[color] = ServerHealth(row.get("status", "unknown"), check)
        return out

    # ---------------------------------------------------------------- writing

    async def set_weights(self, weights: Mapping[str, int], *, drain: bool = False) -> Weights:
        wanted = validate_weights(weights)
        self._read = None
        for task in self._drains.values():
            task.cancel()
        self._drains.clear()
        if not self._verified:
            # Once, before the first change: both servers exist and answer, so a typo in a
            # server name fails here, before any command of the switch has been applied.
            await self.server_states()
        # Colours that keep or gain traffic first, the one going to 0 last: whatever the split
        # was before, some server takes new requests at every point of the command line.
        order = sorted(COLORS, key=lambda c: wanted[c] == 0)
        commands: list[str] = []
        for color in order:
            target = f"{self.backend}/{self.servers[color]}"
            if wanted[color] > 0:
                commands += [f"set server {target} weight {wanted[color]}",
                             f"set server {target} state ready"]
            else:
                state = "drain" if drain else "maint"
                commands += [f"set server {target} weight 0", f"set server {target} state {state}"]
        # One round trip: the switch, then `show servers state` (every backend), which is both
        # the read-back and the content of the state file.
        answer = await self.api.send("; ".join([*commands, "show servers state"]))
        try:
            self._raise_for(answer, server=", ".join(self.servers[c] for c in order))
        except RouterError:
            self._verified = False
            await self.server_states()  # names the missing server or backend, if that is it
            raise
        everything = answer[answer.find("\n1\n") + 1:] if not answer.startswith("1\n") else answer
        got = percentages({color: float(s.effective)
                           for color, s in self._ours(everything).items()})
        if got != wanted:
            raise RouterError(
                f"HAProxy backend {self.backend} reports blue={got['blue']},green={got['green']} "
                f"after setting blue={wanted['blue']},green={wanted['green']}"
            )
        await self._save(everything)
        if drain:
            for color in COLORS:
                if wanted[color] == 0 and self.config.drain_timeout > 0:
                    self._drains[color] = asyncio.create_task(self._maint_after_drain(color))
        return got

    async def _maint_after_drain(self, color: str) -> None:
        await asyncio.sleep(self.config.drain_timeout)
        target = f"{self.backend}/{self.servers[color]}"
        answer = await self.api.send(f"set server {target} state maint")
        self._raise_for(answer, server=self.servers[color])
        await self.save_state()

    async def settle(self) -> None:
        """A colour left draining at weight 0 with no timer (the daemon restarted, or was
        killed, during a drain) gets a new drain timer, then `maint`: sticky users never stay
        on a colour that was given up."""
        read, self._read = self._read, None
        states = read[0] if read is not None else await self.server_states()
        for color, state in states.items():
            if state.draining and state.weight == 0 and color not in self._drains:
                self._drains[color] = asyncio.create_task(self._maint_after_drain(color))

    async def save_state(self) -> None:
        """Write `show servers state` (all backends) to state_file, atomically."""
        if self.state_file is None:
            return
        await self._save(await self.api.send("show servers state"))

    async def _save(self, answer: str) -> None:
        path = self.state_file
        if path is None:
            return
        if not answer.lstrip().startswith("1"):
            raise RouterError(f"HAProxy did not return a server state to save: {answer[:200]!r}")
        # No fsync: the file only has to outlive an HAProxy reload, not a power cut (after
        # which the daemon's own store and reconcile put the split back).
        await asyncio.to_thread(write_atomic, path, (answer.rstrip("\n") + "\n").encode(),
                                0o644, False)

    # ---------------------------------------------------------------- checking

    async def check(self) -> None:
        level = (await self.api.send("show cli level")).strip()
        if level != "admin":
            raise RouterError(
                f"HAProxy runtime API {self.socket} is at level {level or 'unknown'!r}; "
                "switching traffic needs `stats socket ... level admin`"
            )
        states = await self.server_states()
        await asyncio.to_thread(self._check_state_file)
        down = [f"{color} ({self.servers[color]})" for color, s in states.items()
                if s.effective > 0 and not s.up]
        if down:
            raise RouterError(f"HAProxy sends traffic to {', '.join(down)}, which its health "
                              "checks report down")

    def _check_state_file(self) -> None:
        path = self.state_file
        if path is not None and not os.access(path.parent, os.W_OK):
            raise RouterError(f"cannot write HAProxy server state file {path}: directory not "
                              "writable")

    async def close(self) -> None:
        for task in self._drains.values():
            task.cancel()
        self._drains.clear()

    def _raise_for(self, answer: str, server: str) -> None:
        problems = [line.strip() for line in answer.splitlines()
                    if line.strip() and not _is_state_line(line)]
        if not problems:
            return
        first = problems[0]
        template = _KNOWN_ERRORS.get(first)
        if template is not None:
            raise RouterError(template.format(backend=self.backend, server=server,
                                              socket=self.socket))
        if "static LB algorithm" in first:
            raise RouterError(
                f"HAProxy backend {self.backend} uses a static balance algorithm, which only "
                "takes weights 0% and 100%; use `balance roundrobin` (or leastconn) for canaries"
            )
        raise RouterError(f"HAProxy backend {self.backend}, server {server}: {first}")


_HEALTH_FIELDS = frozenset({"pxname", "svname", "status", "check_status", "check_code",
                            "last_chk"})


# `S.<px>.<sv>.<pos>.<name>.<proc>:<tags>:<type>:<value>`, for the fields kept only: the other
# hundred-odd lines of a server are skipped inside the regex engine (simpler than the loop it
# replaced; no difference measurable outside the profiler).
_TYPED_FIELD = re.compile(
    r"^S\.(\d+)\.(\d+)\.\d+\.(" + "|".join(sorted(_HEALTH_FIELDS))
    + r")\.\d+:[^:\n]*:[^:\n]*:([^\n]*)$", re.MULTILINE)


def parse_stat_typed(answer: str) -> list[dict[str, str]]:
    """The server rows of `show stat typed`: `S.<px>.<sv>.<pos>.<name>.<proc>:<tags>:<type>:<value>`
    lines, gathered into one {field name: value} per server (the health fields only)."""
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for px, sv, name, value in _TYPED_FIELD.findall(answer):
        rows.setdefault((px, sv), {})[name] = value.rstrip("\r")
    return list(rows.values())


def _backend_id(answer: str) -> int | None:
    """be_id, the first column of the server rows of `show servers state <backend>`."""
    for line in answer.splitlines():
        head = line.split(" ", 1)[0]
        if line[:1].isdigit() and head.isdigit() and line.strip() != "1":
            return int(head)
    return None


def _is_state_line(line: str) -> bool:
    """Lines of a `show servers state` answer: the version, the header, server rows."""
    stripped = line.strip()
    return stripped == "1" or stripped.startswith("#") or stripped[:1].isdigit()


def parse_servers_state(answer: str, backend: str) -> dict[str, ServerState]:
    """Rows of `show servers state` for `backend`, by server name (format version 1)."""
    lines = [ln for ln in answer.splitlines() if ln.strip()]
    if not lines or lines[0].strip() != "1":
        raise RouterError(f"unexpected `show servers state` answer: {answer[:200]!r}")
    header = lines[1].lstrip("# ").split() if len(lines) > 1 else []
    out: dict[str, ServerState] = {}
    for line in lines[2:]:
        row = dict(zip(header, line.split(), strict=False))
        if row.get("be_name") != backend:
            continue
        try:
            out[row["srv_name"]] = ServerState(
                name=row["srv_name"],
                op_state=int(row["srv_op_state"]),
                admin_state=int(row["srv_admin_state"]),
                weight=int(row["srv_uweight"]),
            )
        except (KeyError, ValueError) as exc:
            raise RouterError(f"cannot read HAProxy server state line {line!r}: {exc}") from None
    return out
