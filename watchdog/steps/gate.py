"""The `gate` step and the shared database's pre-checks (DESIGN.md §12, ODOO.md).

`gate`: the candidate's database matches the candidate's code. Odoo never refuses to start on
a database of another version, so this is checked here: no module left `to upgrade`, `to
install` or `to remove`; `base`'s `latest_version` on the code's series (`-u` is not a major
upgrade: a 16.0 database under 17.0 code stays 16.0); on 19, no `base.partially_updated_database`
parameter; and not neutralized (mail and crons off: fine for staging, never for production).

`shared_checks`: before `migrate` on a database both colours use. A module `to %` is a problem
(abort); sessions in a transaction and crons running are warnings: `-u` runs with
`lock_timeout = 15s` and each of its DDL statements waits behind them. Crons are found without
waiting on them (`FOR SHARE SKIP LOCKED` in a transaction rolled back).

Every check only reads (the cron probe's share locks last a few milliseconds and are rolled
back). A missing database or a database that is not Odoo's is a problem, never a crash.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors

from watchdog.steps.base import StepFailed
from watchdog.steps.locks import one_line
from watchdog.steps.pg import Server

PENDING = ("to upgrade", "to install", "to remove")
PARTIAL = "base.partially_updated_database"
NEUTRALIZED = "database.is_neutralized"
APPLICATION = "odoo-watchdog-gate"

_SERIES = re.compile(r"^((?:saas~)?(\d+)\.(\d+))(?=$|[-.+~_ ])")


def series_of(version: str) -> str | None:
    """The Odoo series a version names: "17.0", "saas~17.2", "17.0-20250421" -> "17.0";
    "latest", "" -> None."""
    m = _SERIES.match(version.strip())
    return m.group(1) if m else None


def _rank(series: str) -> tuple[int, int]:
    m = _SERIES.match(series)
    assert m is not None
    return int(m.group(2)), int(m.group(3))


def _truthy(value: str | None) -> bool:
    """As Odoo reads a parameter: set unless missing, empty or false."""
    return value is not None and value.strip().lower() not in ("", "false", "0")


@dataclass(frozen=True)
class GateResult:
    ok: bool
    problems: tuple[str, ...]
    base_version: str | None  # base's latest_version, when there is one


async def _connect(server: Server, database: str) -> psycopg.AsyncConnection[Any] | str:
    """A connection, or the problem that there is none."""
    try:
        return await server.connect(database, application_name=APPLICATION)
    except errors.InvalidCatalogName:
        return f"database {database} does not exist on {server.label}; check database.names"
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"cannot connect to database {database} on {server.label}: {first}"


async def _tables(conn: psycopg.AsyncConnection[Any], *names: str) -> dict[str, bool]:
    async with conn.cursor() as cur:
        await cur.execute("SELECT " + ", ".join(["to_regclass(%s) IS NOT NULL"] * len(names)),
                          names)
        row = await cur.fetchone()
    assert row is not None
    return dict(zip(names, (bool(v) for v in row), strict=True))


async def _pending(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    """Problems for modules left in a `to ...` state, one per state, modules named."""
    async with conn.cursor() as cur:
        await cur.execute("SELECT state, string_agg(name, ', ' ORDER BY name) "
                          "FROM ir_module_module WHERE state LIKE 'to %' "
                          "GROUP BY state ORDER BY state")
        rows = await cur.fetchall()
    return [f"modules left '{state}': {names} (an upgrade did not finish, or modules were "
            "marked in the Apps menu; run the upgrade again on a fresh copy or reset them)"
            for state, names in rows]


async def _params(conn: psycopg.AsyncConnection[Any], *keys: str) -> dict[str, str]:
    async with conn.cursor() as cur:
        await cur.execute("SELECT key, value FROM ir_config_parameter WHERE key = ANY(%s)",
                          (list(keys),))
        return {str(k): str(v) if v is not None else "" for k, v in await cur.fetchall()}


def _series_problem(target: str, base: str) -> str | None:
    if base.startswith(target + "."):
        return None
    found = series_of(base)
    if found is not None and _rank(found) < _rank(target):
        return (f"base is still on {found} (latest_version {base}): `-u` is not a "
                "major-version upgrade; migrate the database with Odoo's upgrade service or "
                "OpenUpgrade first")
    if found is not None:
        return (f"base is on {found} (latest_version {base}), newer than the candidate's "
                f"{target}: this database was upgraded by newer code; restore a backup made "
                f"for {target} or deploy the matching version")
    return (f"base's latest_version {base!r} is not on the candidate's series {target}; "
            "check --version and the database")


async def gate(server: Server, database: str, *, version: str = "") -> GateResult:
    """Check that `database` matches the code of `version` (any version when it names no
    series, e.g. "latest"); all problems at once."""
    conn = await _connect(server, database)
    if isinstance(conn, str):
        return GateResult(False, (conn,), None)
    problems: list[str] = []
    base_version: str | None = None
    target = series_of(version)
    try:
        tables = await _tables(conn, "ir_module_module", "ir_config_parameter")
        if not tables["ir_module_module"]:
            return GateResult(False, (f"database {database} has no ir_module_module table: "
                                      "it is not an Odoo database (or not initialised); "
                                      "check database.names",), None)
        problems += await _pending(conn)
        async with conn.cursor() as cur:
            await cur.execute("SELECT latest_version, state FROM ir_module_module "
                              "WHERE name = 'base'")
            row = await cur.fetchone()
        if row is None:
            problems.append(f"database {database} has no base module in ir_module_module")
        else:
            base_version = str(row[0]) if row[0] is not None else None
            if row[1] != "installed" and row[1] not in PENDING:
                problems.append(f"base is '{row[1]}', not installed")
            if target is not None:
                if base_version is None:
                    problems.append("base has no latest_version: the database was never "
                                    "fully initialised")
                else:
                    found = _series_problem(target, base_version)
                    if found:
                        problems.append(found)
        params: dict[str, str] = {}
        if tables["ir_config_parameter"]:
            params = await _params(conn, PARTIAL, NEUTRALIZED)
        else:
            problems.append(f"database {database} has no ir_config_parameter table")
        base_series = series_of(base_version or "")
        on_19 = any(s is not None and _rank(s)[0] >= 19 for s in (target, base_series))
        if on_19 and _truthy(params.get(PARTIAL)):
            problems.append(f"{PARTIAL} is set ({params[PARTIAL]!r}): the last upgrade only "
                            "partly updated this database; run it again on a fresh copy")
        if _truthy(params.get(NEUTRALIZED)):
            problems.append(f"{database} is neutralized ({NEUTRALIZED} = "
                            f"{params[NEUTRALIZED]!r}): mail servers and crons are off, fine "
                            "for staging, never for a colour that takes production traffic")
    finally:
        await conn.close()
    return GateResult(not problems, tuple(problems), base_version)


async def run_gate(server: Server, database: str, *, version: str = "") -> GateResult:
    """The step: the result when it passes, else StepFailed with every problem (its data has
    them as a list and base's version)."""
    result = await gate(server, database, version=version)
    if not result.ok:
        raise StepFailed(f"gate: {database} does not match the candidate's code "
                         f"{version or '(no version)'}: " + "; ".join(result.problems),
                         data={"problems": list(result.problems),
                               "base_version": result.base_version})
    return result


# ---------------------------------------------------------------- before migrate, shared


@dataclass(frozen=True)
class SharedCheck:
    """problems: do not migrate; warnings: the upgrade may wait on these, say so."""

    problems: tuple[str, ...]
    warnings: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


_SESSIONS_SQL = """
SELECT pid, coalesce(application_name, ''),
       CASE WHEN client_addr IS NOT NULL THEN host(client_addr) || ':' || client_port
            WHEN client_port = -1 THEN 'local' ELSE '' END,
       state, coalesce(xact_start, state_change), coalesce(query, '')
FROM pg_stat_activity
WHERE datname = %s AND pid <> pg_backend_pid() AND state IS NOT NULL
  AND state NOT IN ('idle', 'disabled')
ORDER BY coalesce(xact_start, state_change), pid
"""


async def _sessions(conn: psycopg.AsyncConnection[Any], database: str) -> list[str]:
    async with conn.cursor() as cur:
        await cur.execute(_SESSIONS_SQL, (database,))
        rows = await cur.fetchall()
    out = []
    for pid, app, client, state, since, query in rows:
        when = since.isoformat(timespec="seconds") if since else "unknown"
        out.append(f"session pid {pid} ({app or 'no application_name'}, {client or 'client ?'})"
                   f" is {state} since {when}: {one_line(query) or '(query not visible)'}; "
                   "the upgrade's DDL will wait behind its locks (lock_timeout 15s)")
    return out


async def _locked_crons(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    """ir_cron rows another session holds (a running job locks its row for the whole run),
    found without waiting: SKIP LOCKED in a transaction rolled back at once."""
    async with conn.cursor() as cur:
        await cur.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = "
                          "current_schema() AND table_name = 'ir_cron' AND "
                          "column_name = 'cron_name'")
        named = await cur.fetchone() is not None
    label = "cron_name::text" if named else "''"
    async with conn.transaction(force_rollback=True), conn.cursor() as cur:
        # a table lock (not a row lock) on ir_cron would still make us wait: not for long
        await cur.execute("SET LOCAL lock_timeout = '2s'")
        await cur.execute(f"SELECT id, {label} FROM ir_cron ORDER BY id")  # noqa: S608
        every = {int(i): str(n or "") for i, n in await cur.fetchall()}
        await cur.execute("SELECT id FROM ir_cron ORDER BY id FOR SHARE SKIP LOCKED")
        free = {int(r[0]) for r in await cur.fetchall()}
    return [f"ir_cron {i} ({every[i] or 'unnamed'}) is locked by another session: a cron job "
            "is running and holds its row until it ends; the upgrade waits behind it "
            "(lock_timeout 15s): wait for it to end, or stop the crons first"
            for i in sorted(set(every) - free)]


async def shared_checks(server: Server, database: str) -> SharedCheck:
    """Before `migrate` on a shared database: modules `to %` (problems), sessions of the
    database that are not idle and locked ir_cron rows (warnings). Never waits on a lock."""
    conn = await _connect(server, database)
    if isinstance(conn, str):
        return SharedCheck((conn,), ())
    problems: list[str] = []
    warnings: list[str] = []
    try:
        tables = await _tables(conn, "ir_module_module", "ir_cron")
        if not tables["ir_module_module"]:
            problems.append(f"database {database} has no ir_module_module table: it is not "
                            "an Odoo database (or not initialised); check database.names")
        else:
            problems += await _pending(conn)
        warnings += await _sessions(conn, database)
        if tables["ir_cron"]:
            try:
                warnings += await _locked_crons(conn)
            except errors.LockNotAvailable:
                warnings.append("ir_cron is locked as a table by another session; the "
                                "upgrade will wait behind it")
    finally:
        await conn.close()
    return SharedCheck(tuple(problems), tuple(warnings))
