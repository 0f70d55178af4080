"""The `backup` step and the restore of a backup (DESIGN.md §12, ODOO.md "Backup and clone").

A backup is a directory `backup.dir/<site>/<id>/` (id: `<UTC time>-<colour>`, `-2`, `-3` when
taken) with `database.dump` (`pg_dump -Fc` of the live colour's database), `filestore.tar` (its
filestore, after the dump: a file added in between is harmless, the reverse loses files) and
`manifest.json` (database, PostgreSQL and Odoo versions, `database.uuid`, sizes, sha256 of each
file, duration). It is written as `.<id>.partial/`, verified (`pg_restore --list` lists tables,
the tar lists exactly the files put in, the sha256 read back match), marked verified, and only
then renamed to `<id>`: a directory without the dot is a complete backup, a `.partial` one is
what a failure or a crash left (`cleanup_partial`). Then the backups of that colour beyond
`keep` are deleted, never another colour's.

Owners: `pg_dump -Fc` always keeps object owners in the archive (`--no-owner` is ignored for
archive formats); the choice is made at restore, with `pg_restore --no-owner` as Odoo's own
restore does: the objects belong to the role the restore creates them as, which is the owner
of the database being replaced (`--role`, and `CREATE DATABASE ... OWNER`) or else the
connecting user. A backup of one server thus restores on another whose roles differ, and the
restored database is owned like the one it replaces.

A restore never touches the target until the copy is complete: the dump is restored into
`<database>_wdrestore` and the filestore unpacked beside the target's, then the target is
renamed aside to `<database>_wdold`, the restored one renamed in, the filestore swapped in,
and only then the old database dropped. A failure before the end puts everything back;
`cleanup_restore_leftovers` repairs what a crash between two renames left. `database.secret`
and `database.uuid` come back as they were in the backup (no Odoo duplicate involved).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from watchdog.steps import command
from watchdog.steps import filestore as filestores
from watchdog.steps import pg as pgdb
from watchdog.steps.base import Progress, StepFailed, quiet
from watchdog.steps.pg import Server, program

DUMP = "database.dump"
TAR = "filestore.tar"
MANIFEST = "manifest.json"
PARTIAL = ".partial"  # .<id>.partial: a backup being written
RESTORE = "_wdrestore"  # <database>_wdrestore: the database being restored
OLD = "_wdold"  # <database>_wdold: the replaced database until the restore is complete
FORMAT = 1  # manifest.json's "format"
PROGRESS_INTERVAL = 5.0  # seconds between two progress lines while pg_dump/pg_restore run
NAMEDATALEN = 63  # PostgreSQL truncates longer names (silently, with a NOTICE)
APP = "odoo-watchdog-backup"

_TABLE = re.compile(r"^\d+; \d+ \d+ TABLE ")  # a table in `pg_restore --list`


@dataclass(frozen=True)
class BackupInfo:
    id: str  # the directory name: "<UTC time %Y%m%dT%H%M%SZ>-<color>" (-2, -3 if taken)
    site: str
    color: str
    database: str
    created: float  # unix time the dump started
    bytes: int  # dump + tar sizes
    verified: bool
    path: Path  # the backup's directory
    manifest: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        """An item of the API's `GET .../backups`."""
        return {"id": self.id, "color": self.color, "database": self.database,
                "created": iso(self.created), "bytes": self.bytes, "verified": self.verified}

    @classmethod
    def read(cls, path: Path) -> BackupInfo | None:
        """The backup in directory `path`; None when its manifest is missing or unreadable."""
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            files = manifest["files"]
            return cls(id=path.name, site=str(manifest["site"]), color=str(manifest["color"]),
                       database=str(manifest["database"]), created=float(manifest["started"]),
                       bytes=sum(int(f["bytes"]) for f in files.values()),
                       verified=manifest.get("verified") is True, path=path,
                       manifest=manifest)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None


@dataclass(frozen=True)
class RestoreResult:
    backup: str  # the backup's id
    database: str
    seconds: float
    files: int  # filestore files restored
    terminated: int = 0  # sessions of the target ended (force)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def size(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # pragma: no cover


# ---------------------------------------------------------------- the backups of a site

def new_id(root: Path, color: str, now: float) -> str:
    """A fresh id in `root`: `<UTC time>-<color>`, with -2, -3 ... when taken."""
    stem = f"{datetime.fromtimestamp(now, UTC):%Y%m%dT%H%M%SZ}-{color}"
    candidate, n = stem, 1
    while (root / candidate).exists() or _partial(root, candidate).exists():
        n += 1
        candidate = f"{stem}-{n}"
    return candidate


def _partial(root: Path, backup_id: str) -> Path:
    return root / f".{backup_id}{PARTIAL}"


def _valid_id(backup_id: str) -> bool:
    return (bool(backup_id) and "/" not in backup_id and ".." not in backup_id
            and not backup_id.startswith(".") and "\0" not in backup_id)


def list_backups(root: Path) -> list[BackupInfo]:
    """The complete backups in `root` (backup.dir/<site>), newest first; half-written and
    unreadable directories are skipped."""
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        info = BackupInfo.read(entry)
        if info is not None:
            found.append(info)
    return sorted(found, key=lambda i: (i.created, i.id), reverse=True)


def find_backup(root: Path, backup_id: str) -> BackupInfo | None:
    """The backup `backup_id` of `root`; None when there is none (or the id is not a plain
    directory name: no "/", no "..")."""
    if not _valid_id(backup_id):
        return None
    path = root / backup_id
    return BackupInfo.read(path) if path.is_dir() else None


def cleanup_partial(root: Path) -> list[Path]:
    """Remove the half-written backups (`.<id>.partial`) a crash left in `root`."""
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") and entry.name.endswith(PARTIAL) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def prune(root: Path, color: str, keep: int, *, spare: str | None = None) -> list[str]:
    """Delete the verified backups of `color` beyond the newest `keep` (never `spare`);
    other colours' backups are not counted nor touched. Returns the ids deleted."""
    mine = [i for i in list_backups(root) if i.color == color and i.verified]
    kept = [i for i in mine if i.id == spare]
    deleted: list[str] = []
    for info in mine:
        if info.id == spare:
            continue
        if len(kept) < max(1, keep):
            kept.append(info)
            continue
        shutil.rmtree(info.path, ignore_errors=True)
        deleted.append(info.id)
    return deleted


# ---------------------------------------------------------------- backup

async def backup(server: Server, database: str, filestore: Path | None, root: Path, *,
                 site: str, color: str, keep: int, progress: Progress = quiet,
                 clock: Callable[[], float] = time.time,
                 backup_id: str | None = None) -> BackupInfo:
    """`pg_dump -Fc` of `database` and a tar of `filestore` into `root/<id>/`, verified; then
    the backups of `color` beyond `keep` deleted. StepFailed (nothing left, nothing else
    changed) when the database is missing, a command fails or the verification does not
    match; cancelling stops pg_dump and removes the half-written backup."""
    started = clock()
    t0 = time.monotonic()
    bid, final, partial = _start(root, color, started, backup_id)
    try:
        facts = await _database_facts(server, database)
        dump, tar = partial / DUMP, partial / TAR
        progress(f"backup {bid}: pg_dump of {database} on {server.label} "
                 f"(PostgreSQL {facts['postgresql']}, Odoo {facts['odoo'] or 'unknown'})")
        await _pg_dump(server, database, dump, progress)
        progress(f"backup: database dumped, {size(_bytes(dump))}")
        source = filestore if filestore is not None and _is_dir(filestore) else None
        if source is None:
            progress(f"backup: filestore {filestore} does not exist: {TAR} is empty "
                     "(a database without attachments on disk)")
        names = await filestores.write_tar(source, tar)
        progress(f"backup: filestore archived, {len(names)} files, {size(_bytes(tar))}")
        ended = clock()
        manifest: dict[str, Any] = {
            "format": FORMAT, "id": bid, "site": site, "color": color, "database": database,
            "server": server.label, **facts,
            "filestore": str(filestore) if filestore is not None else None,
            "filestore_files": len(names),
            "files": {name: {"bytes": _bytes(path),
                             "sha256": await asyncio.to_thread(sha256, path)}
                      for name, path in ((DUMP, dump), (TAR, tar))},
            "created": iso(started), "started": started, "ended": ended,
            "duration": round(time.monotonic() - t0, 3), "verified": False,
        }
        _write_manifest(partial, manifest)
        await _verify(partial, manifest, names)
        manifest["verified"] = True
        _write_manifest(partial, manifest)
        partial.rename(final)
    except BaseException as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(exc, command.CommandError):
            raise StepFailed(f"backup of {database}: {exc}; nothing was kept") from None
        if isinstance(exc, OSError):
            raise StepFailed(f"backup of {database} could not be written into {root}: "
                             f"{exc.strerror or exc}; nothing was kept") from None
        raise
    info = BackupInfo.read(final)
    assert info is not None
    progress(f"backup {bid}: verified, {size(info.bytes)} in {time.monotonic() - t0:.1f}s")
    try:
        deleted = prune(root, color, keep, spare=bid)
    except OSError as exc:  # the backup is made; the old ones stay
        progress(f"backup: could not delete older backups of {color}: {exc}")
    else:
        if deleted:
            progress(f"backup: {len(deleted)} older backup(s) of {color} deleted (keep {keep}): "
                     + ", ".join(deleted))
    return info


def _start(root: Path, color: str, started: float,
           backup_id: str | None) -> tuple[str, Path, Path]:
    """The backup's id, its directory and its `.partial` directory (made, empty)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StepFailed(f"cannot create the backup directory {root}: {exc.strerror or exc}; "
                         "check database.backup.dir and its permissions") from None
    bid = backup_id or new_id(root, color, started)
    if not _valid_id(bid):
        raise StepFailed(f"{bid!r} is not a backup id")
    final, partial = root / bid, _partial(root, bid)
    if final.exists():
        raise StepFailed(f"a backup {bid} already exists in {root}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir()
    except OSError as exc:
        raise StepFailed(f"cannot write into the backup directory {root}: "
                         f"{exc.strerror or exc}") from None
    return bid, final, partial


def _is_dir(path: Path) -> bool:
    return path.is_dir()


def _bytes(path: Path) -> int:
    return path.stat().st_size


async def _database_facts(server: Server, database: str) -> dict[str, Any]:
    """What the manifest says of the database: versions, database.uuid, encoding, owner."""
    try:
        conn = await server.connect(database, application_name=APP)
    except psycopg.Error as exc:
        if await _exists(server, database):
            raise StepFailed(f"cannot connect to database {database} on {server.label}: "
                             f"{_first_line(exc)}; nothing was backed up") from None
        raise StepFailed(f"database {database} does not exist on {server.label}; nothing was "
                         "backed up; check database.names") from None
    try:
        async with conn.cursor() as cur:
            await cur.execute("SHOW server_version")
            version = (await cur.fetchone() or ("",))[0]
            await cur.execute(
                "SELECT pg_encoding_to_char(encoding), datcollate, datctype, "
                "pg_get_userbyid(datdba), to_regclass('public.ir_module_module') IS NOT NULL, "
                "to_regclass('public.ir_config_parameter') IS NOT NULL "
                "FROM pg_database WHERE datname = current_database()")
            row = await cur.fetchone()
            assert row is not None
            encoding, collate, ctype, owner, has_modules, has_params = row
            odoo = uuid = None
            if has_modules:
                await cur.execute("SELECT latest_version FROM ir_module_module "
                                  "WHERE name = 'base'")
                found = await cur.fetchone()
                odoo = found[0] if found else None
            if has_params:
                await cur.execute("SELECT value FROM ir_config_parameter "
                                  "WHERE key = 'database.uuid'")
                found = await cur.fetchone()
                uuid = found[0] if found else None
    except psycopg.Error as exc:
        raise StepFailed(f"cannot read database {database} on {server.label}: "
                         f"{_first_line(exc)}; nothing was backed up") from None
    finally:
        await conn.close()
    return {"postgresql": version, "odoo": odoo, "database_uuid": uuid, "encoding": encoding,
            "collate": collate, "ctype": ctype, "owner": owner}


async def _pg_dump(server: Server, database: str, dump: Path, progress: Progress) -> None:
    argv = [program("pg_dump"), "-Fc", "-w", "-f", str(dump),
            "--dbname=" + make_conninfo("", dbname=database, application_name=APP)]

    async def report() -> None:
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL)
            with contextlib.suppress(OSError):
                progress(f"backup: {size(_bytes(dump))} written")

    reporter = asyncio.ensure_future(report())
    try:
        done = await command.run(argv, env=server.env())
    finally:
        reporter.cancel()
    if done.exit_code != 0:
        raise StepFailed(f"pg_dump of {database} on {server.label} exited "
                         f"{done.exit_code}: {_last(done.tail)}; nothing was kept",
                         exit_code=done.exit_code, output=done.tail)


async def _verify(partial: Path, manifest: dict[str, Any], names: list[str]) -> None:
    """The backup counts only if pg_restore reads the dump (and it has tables), the tar
    holds exactly the files put in, and each file reads back with its manifest's sha256."""
    tables = 0

    def count(line: str) -> None:
        nonlocal tables
        if _TABLE.match(line):
            tables += 1

    done = await command.run([program("pg_restore"), "--list", str(partial / DUMP)],
                             on_line=count)
    if done.exit_code != 0:
        raise StepFailed(f"verification failed: pg_restore --list cannot read the dump "
                         f"(exit {done.exit_code}): {_last(done.tail)}; nothing was kept",
                         exit_code=done.exit_code, output=done.tail)
    if tables == 0:
        raise StepFailed(f"verification failed: the dump of {manifest['database']} lists no "
                         "table (not an Odoo database?); nothing was kept")
    listed = await filestores.list_tar(partial / TAR)
    if listed != sorted(names):
        missing, extra = set(names) - set(listed), set(listed) - set(names)
        raise StepFailed(f"verification failed: the filestore tar lists {len(listed)} files, "
                         f"{len(names)} were put in ({len(missing)} missing, {len(extra)} "
                         "unexpected); nothing was kept")
    await _check_sums(partial, manifest, "verification failed")


async def _check_sums(path: Path, manifest: dict[str, Any], what: str) -> None:
    for name, expected in manifest["files"].items():
        file = path / name
        try:
            actual_size = file.stat().st_size
        except OSError as exc:
            raise StepFailed(f"{what}: {name} cannot be read: {exc.strerror or exc}") from None
        if actual_size != expected["bytes"]:
            raise StepFailed(f"{what}: {name} has {actual_size} bytes, the manifest says "
                             f"{expected['bytes']}")
        if await asyncio.to_thread(sha256, file) != expected["sha256"]:
            raise StepFailed(f"{what}: the sha256 of {name} does not match the manifest "
                             "(the file was changed or damaged after the backup)")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, directory / MANIFEST)


# ---------------------------------------------------------------- restore

async def restore(server: Server, info: BackupInfo, database: str, filestore: Path | None, *,
                  progress: Progress = quiet, force: bool = False) -> RestoreResult:
    """Bring back backup `info` as `database` (and its filestore into `filestore`).

    Refused for an unverified or damaged backup, and while other sessions are connected to
    `database` unless `force` (they are then ended just before the swap). A failure leaves
    the database and the filestore as they were."""
    t0 = time.monotonic()
    tmp, old = _names(database)
    if not info.verified:
        raise StepFailed(f"backup {info.id} was never verified (an interrupted or failed "
                         "backup): refused; restore another one (db list) or take a new backup")
    await _check_sums(info.path, info.manifest, f"backup {info.id} is damaged, refused")
    progress(f"restore: backup {info.id} checked (sha256 match its manifest)")
    conn = await _admin(server)
    staging = filestores.restore_temp_path(filestore) if filestore is not None else None
    terminated = files = 0
    try:
        sessions = await _sessions(conn, database)
        if sessions and not force:
            raise _busy(server, database, sessions)
        owner = await _owner(conn, database)
        await pgdb.drop(conn, tmp)
        await _create(conn, tmp, info.manifest, owner)
        try:
            progress(f"restore: pg_restore of {info.id} into {tmp}")
            await _pg_restore(server, conn, info, tmp, owner, progress)
            if filestore is not None and staging is not None:
                _remove_tree(staging)
                _remove_tree(filestores.restore_temp_path(staging))
                progress(f"restore: unpacking the filestore beside {filestore}")
                files = await filestores.extract_tar(info.path / TAR, staging)
            terminated = await _swap(server, conn, database, force, progress)
        except BaseException:
            await asyncio.shield(_drop_quietly(conn, tmp))
            raise
        try:
            if filestore is not None and staging is not None:
                await asyncio.to_thread(filestores.swap_in, staging, filestore)
        except BaseException:
            await asyncio.shield(_unswap(conn, database))
            raise
        await _drop_quietly(conn, old)
    except BaseException as exc:
        if staging is not None:
            _remove_tree(staging)
        if isinstance(exc, psycopg.Error):
            raise StepFailed(f"restore into {database} on {server.label} failed: "
                             f"{_first_line(exc)}; the database is as it was") from None
        if isinstance(exc, command.CommandError):
            raise StepFailed(f"restore into {database}: {exc}") from None
        if isinstance(exc, OSError):
            raise StepFailed(f"restore of the filestore into {filestore} failed: "
                             f"{exc.strerror or exc}; the database is as it was") from None
        raise
    finally:
        await conn.close()
    seconds = time.monotonic() - t0
    progress(f"restore: {info.id} is now {database}, {files} filestore files, in {seconds:.1f}s")
    return RestoreResult(info.id, database, seconds, files, terminated)


def _names(database: str) -> tuple[str, str]:
    if len((database + RESTORE).encode()) > NAMEDATALEN:
        raise StepFailed(f"database name {database} is too long for a restore: "
                         f"{database}{RESTORE} must fit PostgreSQL's {NAMEDATALEN} bytes")
    return database + RESTORE, database + OLD


@dataclass(frozen=True)
class Session:
    pid: int
    application_name: str
    client: str
    state: str

    def __str__(self) -> str:
        return (f"pid {self.pid} ({self.application_name or 'no application_name'}, from "
                f"{self.client}, {self.state or 'unknown state'})")


async def _admin(server: Server) -> psycopg.AsyncConnection[Any]:
    try:
        return await server.connect("postgres", application_name=APP)
    except psycopg.Error as exc:
        raise StepFailed(f"cannot reach PostgreSQL on {server.label}: {_first_line(exc)}; "
                         "check database.dsn_file and that the server is up") from None


async def _sessions(conn: psycopg.AsyncConnection[Any], database: str) -> list[Session]:
    async with conn.cursor() as cur:
        await cur.execute(
            "SELECT pid, coalesce(application_name, ''), "
            "coalesce(host(client_addr), 'local socket'), coalesce(state, '') "
            "FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend' ORDER BY pid", (database,))
        return [Session(*row) for row in await cur.fetchall()]


def _busy(server: Server, database: str, sessions: list[Session]) -> StepFailed:
    return StepFailed(
        f"{len(sessions)} session(s) are connected to {database} on {server.label}: "
        + "; ".join(map(str, sessions))
        + ". A restore replaces the database under them: stop that colour's Odoo (or restore "
        "into a colour without traffic), or restore with --force to end those sessions",
        data={"sessions": [s.pid for s in sessions]})


async def _owner(conn: psycopg.AsyncConnection[Any], database: str) -> str | None:
    """The role the restored database and its objects belong to: the replaced database's
    owner; None (the connecting user) when it is missing or it is the connecting user."""
    async with conn.cursor() as cur:
        await cur.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s "
                          "AND datdba <> (SELECT oid FROM pg_roles WHERE rolname = current_user)",
                          (database,))
        row = await cur.fetchone()
        return str(row[0]) if row else None


async def _exists(server: Server, database: str) -> bool:
    conn = await _admin(server)
    try:
        return bool(await pgdb.existing(conn, database))
    finally:
        await conn.close()



async def _create(conn: psycopg.AsyncConnection[Any], name: str, manifest: dict[str, Any],
                  owner: str | None) -> None:
    """The empty database to restore into, with the backed-up database's encoding and
    collation (Odoo's: UTF8, usually C)."""
    parts = [sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))]
    for key, clause in (("encoding", "ENCODING"), ("collate", "LC_COLLATE"),
                        ("ctype", "LC_CTYPE")):
        if manifest.get(key):
            parts.append(sql.SQL(clause + " {}").format(sql.Literal(manifest[key])))
    if owner is not None:
        parts.append(sql.SQL("OWNER {}").format(sql.Identifier(owner)))
    await conn.execute(sql.SQL(" ").join(parts))


async def _pg_restore(server: Server, conn: psycopg.AsyncConnection[Any], info: BackupInfo,
                      tmp: str, owner: str | None, progress: Progress) -> None:
    argv = [program("pg_restore"), "--no-owner", "--exit-on-error", "-w",
            "--dbname=" + make_conninfo("", dbname=tmp, application_name=APP)]
    if owner is not None:
        argv.append("--role=" + owner)
    argv.append(str(info.path / DUMP))

    stop = asyncio.Event()

    async def report() -> None:  # never cancelled inside a query: the connection stays usable
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PROGRESS_INTERVAL)
                return
            with contextlib.suppress(psycopg.Error):
                cur = await conn.execute("SELECT pg_database_size(%s)", (tmp,))
                row = await cur.fetchone()
                if row:
                    progress(f"restore: {size(row[0])} restored")

    reporter = asyncio.ensure_future(report())
    try:
        done = await command.run(argv, env=server.env())
    finally:
        stop.set()
        await asyncio.shield(reporter)
    if done.exit_code != 0:
        raise StepFailed(f"pg_restore of backup {info.id} into {tmp} exited {done.exit_code}: "
                         f"{_last(done.tail)}; {tmp} dropped, the database is as it was",
                         exit_code=done.exit_code, output=done.tail)



async def _terminate(conn: psycopg.AsyncConnection[Any], sessions: list[Session]) -> None:
    for s in sessions:
        await conn.execute("SELECT pg_terminate_backend(%s)", (s.pid,))


async def _swap(server: Server, conn: psycopg.AsyncConnection[Any], database: str,
                force: bool, progress: Progress) -> int:
    """`<database>` aside to `_wdold`, `_wdrestore` in; the sessions ended ("force")."""
    tmp, old = _names(database)
    await pgdb.drop(conn, old)
    terminated = 0
    if await pgdb.existing(conn, database):
        for attempt in range(5):
            sessions = await _sessions(conn, database)
            if sessions and not force:
                raise _busy(server, database, sessions)
            if sessions:
                progress(f"restore: ending {len(sessions)} session(s) of {database} before "
                         "the swap (force): " + "; ".join(map(str, sessions)))
                await _terminate(conn, sessions)
                terminated += len(sessions)
                await asyncio.sleep(0.2)  # a terminated backend leaves within milliseconds
            try:
                await pgdb.rename(conn, database, old)
                break
            except psycopg.errors.ObjectInUse:
                if attempt == 4:
                    raise
                await asyncio.sleep(0.5)
    try:
        await pgdb.rename(conn, tmp, database)
    except BaseException:
        if await pgdb.existing(conn, old):
            await pgdb.rename(conn, old, database)
        raise
    return terminated


async def _unswap(conn: psycopg.AsyncConnection[Any], database: str) -> None:
    """Undo `_swap` (the filestore could not be swapped in): the restored database goes,
    the old one comes back under its name."""
    old = _names(database)[1]
    await pgdb.drop(conn, database)
    if await pgdb.existing(conn, old):
        await pgdb.rename(conn, old, database)



async def _drop_quietly(conn: psycopg.AsyncConnection[Any], name: str) -> None:
    with contextlib.suppress(psycopg.Error):
        await pgdb.drop(conn, name)


def _remove_tree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)


async def cleanup_restore_leftovers(server: Server, database: str) -> list[str]:
    """What a crash in a restore left: `<database>_wdrestore` is dropped; `<database>_wdold`
    is renamed back when `<database>` is missing (the crash fell between the two renames),
    else dropped. Returns what was done, one line each."""
    tmp, old = _names(database)
    conn = await _admin(server)
    try:
        done = await pgdb.undo_swap(conn, database, tmp, old, "restore")
    finally:
        await conn.close()
    return done


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _last(tail: tuple[str, ...]) -> str:
    lines = [line for line in tail if line.strip()]
    return lines[-1] if lines else "no output"
