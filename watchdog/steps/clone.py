"""The `clone` step (strategy separate): the live colour's database and filestore into the
candidate's (DESIGN.md §12, ODOO.md "Backup and clone").

How the database is copied:
- on one server, when no other session is connected to the source: `CREATE DATABASE <tmp>
  TEMPLATE <source> STRATEGY FILE_COPY` (a file-level copy, the fastest). PostgreSQL refuses
  a template that another session uses ("source database is being accessed by other
  users"), so the sessions are looked at first; one that connects between that look and the
  CREATE makes it fail, and the clone falls back to the dump, saying so;
- otherwise (the live colour's Odoo is connected, or the colours have two servers):
  `pg_dump -Fc -Z0` of the source piped into `pg_restore` of a database created from template0
  with the source's encoding and collation. The two programs run side by side, each in its
  own process group, dying with the daemon (PR_SET_PDEATHSIG); the archive goes through an OS
  pipe (progress lines give the size restored so far). A dump never ends a session of
  the source: the live colour keeps serving.
Never Odoo's own duplicate: it ends every connection to the source and regenerates
`database.secret` (logging every user out) and `database.uuid` (IAP, subscription). Both
methods keep every row, `ir_config_parameter` included, as it is.

Owners: the new database belongs to the owner of the candidate's old database (else the
source's owner when that role exists on the destination, else the connecting user). A
template copy keeps the objects' owners; a dump is restored with `--no-owner --role=<owner>`
as a restore of a backup is, so a clone onto another server whose roles differ still works.

Crash safety: the copy is built under `<candidate>_wdclone` (a leftover one dropped first),
so a half-made database is never under the candidate's name. Only when it is complete is the
candidate's old database renamed aside to `<candidate>_wdold` (its sessions ended first: it
is the colour without traffic), the new one renamed in, and the old one dropped.
`cleanup_leftovers`, at the daemon's start, drops a `_wdclone`, and puts `_wdold` back under
the candidate's name when a crash fell between the two renames (else drops it).

Order: the database is copied first, then the filestore, then the database is swapped in.
The live colour keeps writing while the clone runs, so the two copies are never of one
instant; with the database's snapshot taken first, an attachment written in between has its
file in the copied filestore and no row in the copied database (an orphan, harmless), where
the reverse order would give rows whose files are missing (ODOO.md: dump first, then the
filestore). The database is swapped in last so that a filestore copy that fails (or is
cancelled) leaves the candidate's old database untouched and only the temporary one to
drop; the filestore itself is built beside and swapped in by `filestore.copy_filestore`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from watchdog.steps import command
from watchdog.steps import filestore as filestores
from watchdog.steps import pg as pgdb
from watchdog.steps.backup import size
from watchdog.steps.base import Progress, StepFailed, quiet
from watchdog.steps.pg import Server, program

TEMP = "_wdclone"  # <candidate>_wdclone: the database being built
OLD = "_wdold"  # <candidate>_wdold: the candidate's old database while the new one is renamed in
NAMEDATALEN = 63  # PostgreSQL's longest name, in bytes (longer ones are silently truncated)
APP = "odoo-watchdog-clone"
PROGRESS_INTERVAL = 5.0  # seconds between two progress lines while the dump is piped
GRACE = 5.0  # seconds between SIGTERM and SIGKILL when pg_dump/pg_restore are stopped
TAIL = command.TAIL  # lines of each program's stderr kept for the StepFailed
SHOWN = 5  # sessions named in `why`


@dataclass(frozen=True)
class CloneResult:
    method: str  # "template" | "dump"
    why: str  # "no other session on odoo_blue", "2 sessions on odoo_blue (...)", "two servers"
    seconds: float
    files: int  # filestore files
    linked: bool  # every filestore file is a hard link of the live colour's
    terminated: int  # sessions of the candidate's old database ended to swap it


def temp_name(dst_db: str) -> str:
    return dst_db + TEMP


def old_name(dst_db: str) -> str:
    return dst_db + OLD


@dataclass(frozen=True)
class _Session:
    pid: int
    application_name: str

    def __str__(self) -> str:
        return f"pid {self.pid} {self.application_name}".rstrip()


def _sessions_text(sessions: list[_Session], database: str) -> str:
    named = ", ".join(map(str, sessions[:SHOWN])) + (", ..." if len(sessions) > SHOWN else "")
    noun = "session" if len(sessions) == 1 else "sessions"
    return f"{len(sessions)} {noun} on {database} ({named})"


# ---------------------------------------------------------------- the step

async def clone(src: Server, src_db: str, dst: Server, dst_db: str, *,
                src_filestore: Path | None, dst_filestore: Path | None,
                progress: Progress = quiet) -> CloneResult:
    """Copy database `src_db` of `src` to `dst_db` of `dst` (replacing it), and the
    filestore `src_filestore` into `dst_filestore` (hard links).

    StepFailed, with the candidate's database and filestore as they were, when the two are
    the same, the filestores overlap, the source is missing or a copy fails; cancelling
    stops pg_dump and pg_restore and drops the temporary database."""
    t0 = time.monotonic()
    same_server = dict(src.params) == dict(dst.params)
    tmp, old = _names(dst_db)
    if same_server and src_db in (dst_db, tmp, old):
        raise StepFailed(f"clone of {src_db} into {dst_db} on {dst.label}: the source and the "
                         "destination are one database; check database.names (each colour "
                         "needs its own database with strategy separate)")
    if (src_filestore is None) != (dst_filestore is None):
        raise StepFailed("clone: database.filestore must give both colours' filestores or "
                         "neither")
    if src_filestore is not None and dst_filestore is not None:
        filestores.check_separate(src_filestore, dst_filestore)

    src_conn = await _admin(src)
    try:
        dst_conn = src_conn if same_server else await _admin(dst)
        try:
            return await _clone(src, src_conn, src_db, dst, dst_conn, dst_db, src_filestore,
                                dst_filestore, progress, same_server, t0)
        finally:
            if dst_conn is not src_conn:
                await dst_conn.close()
    finally:
        await src_conn.close()


async def _clone(src: Server, src_conn: psycopg.AsyncConnection[Any], src_db: str,
                 dst: Server, dst_conn: psycopg.AsyncConnection[Any], dst_db: str,
                 src_filestore: Path | None, dst_filestore: Path | None,
                 progress: Progress, same_server: bool, t0: float) -> CloneResult:
    tmp = temp_name(dst_db)
    try:
        facts = await _source_facts(src_conn, src_db)
        if facts is None:
            raise StepFailed(f"the live database {src_db} does not exist on {src.label}: "
                             "nothing to clone; check database.names")
        owner = await _owner(dst_conn, dst_db, facts["owner"])
        await pgdb.drop(dst_conn, tmp)
    except psycopg.Error as exc:
        raise StepFailed(f"clone of {src_db}: {_first_line(exc)}; nothing was changed") from None
    try:
        method, why = await _copy_database(src, src_conn, src_db, dst, dst_conn, tmp, facts,
                                           owner, same_server, progress)
        progress(f"clone: {src_db} copied into {tmp} by {method} in "
                 f"{time.monotonic() - t0:.1f}s")
        copied = await _copy_filestore(src_filestore, dst_filestore, progress)
        terminated = await _swap(dst_conn, dst_db, progress)
    except BaseException as exc:
        await asyncio.shield(_drop_anyway(dst, dst_conn, tmp))
        if isinstance(exc, psycopg.Error):
            raise StepFailed(f"clone of {src_db} into {dst_db} on {dst.label} failed: "
                             f"{_first_line(exc)}; {dst_db} is as it was") from None
        if isinstance(exc, command.CommandError):
            raise StepFailed(f"clone of {src_db}: {exc}; {dst_db} is as it was") from None
        if isinstance(exc, OSError):
            raise StepFailed(f"clone: the filestore could not be copied into {dst_filestore}: "
                             f"{exc.strerror or exc}; {dst_db} is as it was") from None
        raise
    await _drop_old(dst_conn, dst_db, progress)
    seconds = time.monotonic() - t0
    progress(f"clone: {src_db} is now {dst_db} ({method}, {why}), {copied.files} filestore "
             f"files, in {seconds:.1f}s")
    return CloneResult(method, why, seconds, copied.files, copied.linked, terminated)


def _names(dst_db: str) -> tuple[str, str]:
    if len(old_name(dst_db).encode()) > NAMEDATALEN or len(temp_name(dst_db).encode()) > \
            NAMEDATALEN:
        raise StepFailed(f"database name {dst_db} is too long for a clone: {temp_name(dst_db)} "
                         f"must fit PostgreSQL's {NAMEDATALEN} bytes")
    return temp_name(dst_db), old_name(dst_db)


async def _copy_database(src: Server, src_conn: psycopg.AsyncConnection[Any], src_db: str,
                         dst: Server, dst_conn: psycopg.AsyncConnection[Any], tmp: str,
                         facts: dict[str, str], owner: str | None, same_server: bool,
                         progress: Progress) -> tuple[str, str]:
    """Build `tmp`: by template when nothing uses the source, else by dump; (method, why)."""
    if not same_server:
        why = f"two servers ({src.label} to {dst.label})"
    else:
        sessions = await _sessions(src_conn, src_db)
        if sessions:
            why = _sessions_text(sessions, src_db)
        else:
            why = f"no other session on {src_db}"
            progress(f"clone: {why}: CREATE DATABASE {tmp} TEMPLATE {src_db}")
            try:
                await _create(dst_conn, tmp, src_db, owner, file_copy=True)
                return "template", why
            except psycopg.errors.ObjectInUse as exc:
                why = (f"a session connected to {src_db} during CREATE DATABASE ... TEMPLATE "
                       f"({_first_line(exc)})")
                progress(f"clone: {why}: falling back to pg_dump | pg_restore")
    progress(f"clone: {why}: pg_dump -Fc of {src_db} on {src.label} | pg_restore into {tmp}"
             f" on {dst.label}")
    await _create(dst_conn, tmp, "template0", owner, facts)
    await _dump_restore(src, src_db, dst, tmp, owner, progress)
    return "dump", why


async def _copy_filestore(src: Path | None, dst: Path | None,
                          progress: Progress) -> filestores.Copied:
    """`filestore.copy_filestore` in a thread; cancelling stops it between two files and
    waits for it to remove its half-made tree."""
    if dst is None:
        return filestores.Copied(0, True)
    loop = asyncio.get_running_loop()

    def report(line: str) -> None:  # called from the thread
        loop.call_soon_threadsafe(progress, "clone: " + line)

    stop = threading.Event()
    progress(f"clone: filestore {src} into {dst} (hard links)")
    work = asyncio.ensure_future(asyncio.to_thread(
        filestores.copy_filestore, src, dst, progress=report, stop=stop))
    try:
        copied = await asyncio.shield(work)
    except asyncio.CancelledError:
        stop.set()
        with contextlib.suppress(Exception):
            await work
        raise
    progress(f"clone: filestore {dst}: {copied.files} files, "
             + ("all hard links" if copied.linked else "copied where a link was refused"))
    return copied


async def _swap(conn: psycopg.AsyncConnection[Any], dst_db: str, progress: Progress) -> int:
    """`dst_db` (the candidate's old database) aside to `_wdold`, its sessions ended first;
    `_wdclone` renamed to `dst_db`. Returns the sessions ended."""
    tmp, old = _names(dst_db)
    await pgdb.drop(conn, old)
    terminated = 0
    if await pgdb.existing(conn, dst_db):
        for attempt in range(10):
            sessions = await _sessions(conn, dst_db)
            if sessions:
                progress(f"clone: ending {_sessions_text(sessions, dst_db)}: the candidate's old "
                         "database, without traffic, is replaced")
                for s in sessions:
                    await conn.execute("SELECT pg_terminate_backend(%s)", (s.pid,))
                terminated += len(sessions)
                await asyncio.sleep(0.2)  # a terminated backend leaves within milliseconds
            try:
                await pgdb.rename(conn, dst_db, old)
                break
            except psycopg.errors.ObjectInUse:
                if attempt == 9:
                    raise
                await asyncio.sleep(0.3)
    try:
        await pgdb.rename(conn, tmp, dst_db)
    except BaseException:
        if await asyncio.shield(pgdb.existing(conn, old)):
            await asyncio.shield(pgdb.rename(conn, old, dst_db))
        raise
    return terminated


async def _drop_old(conn: psycopg.AsyncConnection[Any], dst_db: str, progress: Progress) -> None:
    old = old_name(dst_db)
    try:
        await pgdb.drop(conn, old)
    except psycopg.Error as exc:  # the clone is made; the next start drops it
        progress(f"clone: could not drop {old} (dropped at the next start): "
                 f"{_first_line(exc)}")


# ---------------------------------------------------------------- pg_dump | pg_restore

async def _dump_restore(src: Server, src_db: str, dst: Server, tmp: str, owner: str | None,
                        progress: Progress) -> None:
    """`pg_dump -Fc` of `src_db` piped into `pg_restore -d tmp`; StepFailed with the tail of
    their stderr when either exits non-zero. Cancelled: both are stopped."""
    # -Z0: the archive goes straight into pg_restore, never to disk, so compressing it only
    # costs CPU: on the generated 1 GB database the compressed pipe took 37.8 s, the runbook's
    # plain `pg_dump | psql` 19.4 s and the uncompressed pipe 17.0 s (bench_database.py).
    dump_argv = [program("pg_dump"), "-Fc", "-Z0", "-w",
                 "--dbname=" + make_conninfo("", dbname=src_db, application_name=APP)]
    restore_argv = [program("pg_restore"), "--no-owner", "--exit-on-error", "-w",
                    "--dbname=" + make_conninfo("", dbname=tmp, application_name=APP)]
    if owner is not None:
        restore_argv.append("--role=" + owner)
    # An OS pipe between the two, as a shell's `|`: relaying the archive through this process
    # cost 2.5 s on the 1 GB database (19.3 s against 16.6 s); progress is read from the
    # size of the database being restored instead.
    read_end, write_end = os.pipe()
    try:
        dump = await _spawn(dump_argv, src, stdout=write_end)
        try:
            restore = await _spawn(restore_argv, dst, stdin=read_end)
        except BaseException:
            await asyncio.shield(command.stop(dump, GRACE))
            raise
    finally:
        os.close(read_end)
        os.close(write_end)
    dump_err: deque[str] = deque(maxlen=TAIL)
    restore_err: deque[str] = deque(maxlen=TAIL)

    async def report() -> None:
        conn = await _admin(dst)
        try:
            while True:
                await asyncio.sleep(PROGRESS_INTERVAL)
                async with conn.cursor() as cur:
                    await cur.execute("SELECT pg_database_size(%s)", (tmp,))
                    row = await cur.fetchone()
                if row is not None:
                    progress(f"clone: {size(int(row[0]))} restored into {tmp} so far")
        finally:
            await conn.close()

    readers = [asyncio.ensure_future(_read_lines(dump, dump_err)),
               asyncio.ensure_future(_read_lines(restore, restore_err))]
    reporter = asyncio.ensure_future(report())
    try:
        dump_code = await dump.wait()
        restore_code = await restore.wait()
        await asyncio.gather(*readers, return_exceptions=True)
    except BaseException:
        await asyncio.shield(asyncio.gather(command.stop(dump, GRACE),
                                            command.stop(restore, GRACE)))
        raise
    finally:
        reporter.cancel()
        await asyncio.gather(reporter, return_exceptions=True)
        for reader in readers:
            reader.cancel()
    # pg_restore stopped reading (it failed): pg_dump died of SIGPIPE, pg_restore's error counts
    broken = dump_code == -signal.SIGPIPE
    output = (tuple(f"pg_dump: {line}" for line in dump_err)
              + tuple(f"pg_restore: {line}" for line in restore_err))
    if dump_code != 0 and not broken:
        raise StepFailed(f"pg_dump of {src_db} on {src.label} exited {dump_code}: "
                         f"{_last(dump_err)}; {tmp} dropped, the candidate's database is as "
                         "it was", exit_code=dump_code, output=output)
    if restore_code != 0:
        raise StepFailed(f"pg_restore into {tmp} on {dst.label} exited {restore_code}: "
                         f"{_last(restore_err)}; {tmp} dropped, the candidate's database is "
                         "as it was", exit_code=restore_code, output=output)
    if dump_code != 0:  # pragma: no cover (pg_restore succeeded without the whole archive)
        raise StepFailed(f"pg_dump of {src_db} exited {dump_code}: {_last(dump_err)}",
                         exit_code=dump_code, output=output)
    progress(f"clone: pg_dump | pg_restore into {tmp} done")


async def _spawn(argv: list[str], server: Server, *, stdin: int | None = None,
                 stdout: int | None = None) -> asyncio.subprocess.Process:
    """One side of the pipe (`stdin` or `stdout`: its end): its own process group, dying with
    the daemon, the server's PG* environment (the password never in argv)."""
    devnull = asyncio.subprocess.DEVNULL
    try:
        return await asyncio.create_subprocess_exec(
            *argv, stdin=stdin if stdin is not None else devnull,
            stdout=stdout if stdout is not None else devnull,
            stderr=asyncio.subprocess.PIPE, env=server.env(), start_new_session=True,
            preexec_fn=command.die_with_parent)
    except OSError as exc:
        raise command.CommandError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None


async def _read_lines(proc: asyncio.subprocess.Process, lines: deque[str]) -> None:
    assert proc.stderr is not None
    while raw := await proc.stderr.readline():
        lines.append(raw.decode("utf-8", "replace").rstrip("\r\n"))


# ---------------------------------------------------------------- SQL

async def _admin(server: Server) -> psycopg.AsyncConnection[Any]:
    try:
        return await server.connect("postgres", application_name=APP)
    except psycopg.Error as exc:
        raise StepFailed(f"cannot reach PostgreSQL on {server.label}: {_first_line(exc)}; "
                         "check database.dsn_file and that the server is up") from None


async def _source_facts(conn: psycopg.AsyncConnection[Any], database: str) -> dict[str, str] | None:
    async with conn.cursor() as cur:
        await cur.execute("SELECT pg_encoding_to_char(encoding), datcollate, datctype, "
                          "pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                          (database,))
        row = await cur.fetchone()
    if row is None:
        return None
    return dict(zip(("encoding", "collate", "ctype", "owner"), map(str, row), strict=True))


async def _owner(conn: psycopg.AsyncConnection[Any], dst_db: str, src_owner: str) -> str | None:
    """The new database's owner: the candidate's old database's, else the source's when
    that role exists here; None when it is the connecting user (or no such role)."""
    async with conn.cursor() as cur:
        await cur.execute(
            "SELECT rolname FROM pg_roles WHERE rolname = coalesce("
            "(SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s), %s) "
            "AND rolname <> current_user", (dst_db, src_owner))
        row = await cur.fetchone()
    return str(row[0]) if row else None


async def _sessions(conn: psycopg.AsyncConnection[Any], database: str) -> list[_Session]:
    async with conn.cursor() as cur:
        await cur.execute(
            "SELECT pid, coalesce(application_name, '') FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
            "ORDER BY pid", (database,))
        return [_Session(*row) for row in await cur.fetchall()]


async def _create(conn: psycopg.AsyncConnection[Any], name: str, template: str,
                  owner: str | None, facts: dict[str, str] | None = None, *,
                  file_copy: bool = False) -> None:
    """`file_copy`: STRATEGY FILE_COPY (PostgreSQL 15+), copying the files as PostgreSQL 14
    and older always did, instead of 15's default WAL_LOG, which writes the whole database
    through the WAL (1 GB of WAL for a 1 GB database, shipped to every replica and archive).
    Measured on the generated 1 GB database (bench/bench_database.py): 3.4 s against 3.9 s.
    Its cost is a checkpoint just before the copy."""
    parts: list[sql.Composable] = [sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
        sql.Identifier(name), sql.Identifier(template))]
    if file_copy:
        parts.append(sql.SQL("STRATEGY FILE_COPY"))
    if facts is not None:  # from template0: the source's encoding and collation
        for key, clause in (("encoding", "ENCODING"), ("collate", "LC_COLLATE"),
                            ("ctype", "LC_CTYPE")):
            parts.append(sql.SQL(clause + " {}").format(sql.Literal(facts[key])))
    if owner is not None:
        parts.append(sql.SQL("OWNER {}").format(sql.Identifier(owner)))
    await conn.execute(sql.SQL(" ").join(parts))





async def _drop_anyway(server: Server, conn: psycopg.AsyncConnection[Any], name: str) -> None:
    """Drop `name` after a failure or a cancel: on `conn`, or on a new connection when that
    one was broken by the cancel."""
    try:
        await pgdb.drop(conn, name)
        return
    except psycopg.Error:
        pass
    with contextlib.suppress(psycopg.Error):
        fresh = await server.connect("postgres", application_name=APP)
        try:
            await pgdb.drop(fresh, name)
        finally:
            await fresh.close()


# ---------------------------------------------------------------- after a crash

async def cleanup_leftovers(server: Server, dst_db: str, dst_filestore: Path | None) -> list[str]:
    """What a crash in a clone left (run at the daemon's start): `<dst>_wdclone` dropped;
    `<dst>_wdold` renamed back to `dst_db` when that is missing (the crash fell between the
    two renames), else dropped; the filestore's half-built or set-aside trees. Returns what
    was done, one line each."""
    tmp, old = _names(dst_db)
    conn = await _admin(server)
    try:
        done = await pgdb.undo_swap(conn, dst_db, tmp, old, "clone")
    finally:
        await conn.close()
    if dst_filestore is not None:
        done += await asyncio.to_thread(_cleanup_filestore, dst_filestore)
    return done


def _cleanup_filestore(path: Path) -> list[str]:
    aside = filestores.aside_path(path)
    put_back = aside.exists() and not path.exists()
    removed = filestores.cleanup_filestore_leftovers(path)
    done = [f"filestore {aside} renamed back to {path}"] if put_back and path.exists() else []
    return done + [f"filestore {p}, left by an interrupted copy, removed" for p in removed]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _last(tail: deque[str]) -> str:
    """The line that says why: the last `pg_restore: error: ...` (its QUERY, CONTEXT and
    `Command was:` lines follow it), else the last line."""
    lines = [line for line in tail if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    return errors[-1] if errors else lines[-1] if lines else "no output"
