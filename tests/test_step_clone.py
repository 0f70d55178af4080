"""The `clone` step on the lab's real PostgreSQL 15: an Odoo-like live database (a few thousand
partners, database.secret and database.uuid, installed modules) and a filestore of 50
content-addressed files, cloned into the candidate's by template or by pg_dump | pg_restore."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.test_step_backup import CHECKSUM, UUID, make_filestore, odoo_db, param, tree
from tests.test_step_gate import make_odoo_db
from watchdog.lab.postgres import PostgresLab
from watchdog.steps import clone as clones
from watchdog.steps import filestore as filestores
from watchdog.steps.base import StepFailed
from watchdog.steps.clone import CloneResult, cleanup_leftovers, clone, old_name, temp_name
from watchdog.steps.pg import Server

pytestmark = pytest.mark.lab

MODULES = "SELECT string_agg(name || ' ' || state || ' ' || latest_version, ',' ORDER BY name) " \
          "FROM ir_module_module"


def databases(postgres: PostgresLab, db: str) -> list[str]:
    """Which of `db`, `db`_wdclone and `db`_wdold exist."""
    out = postgres.psql("SELECT datname FROM pg_database WHERE datname IN "  # noqa: S608
                        f"('{db}', '{db}_wdclone', '{db}_wdold') ORDER BY datname")
    return out.split()


def assert_same_database(postgres: PostgresLab, src: str, dst: str) -> None:
    assert postgres.psql(CHECKSUM, dbname=dst) == postgres.psql(CHECKSUM, dbname=src)
    assert postgres.psql(CHECKSUM, dbname=dst).split()[0] == "3002"
    assert postgres.psql(MODULES, dbname=dst) == postgres.psql(MODULES, dbname=src)
    assert param(postgres, dst, "database.secret") == "s3cret"
    assert param(postgres, dst, "database.uuid") == UUID


def assert_linked(src: Path, dst: Path, files: dict[str, str]) -> None:
    assert tree(dst) == files
    for name in files:
        assert (dst / name).stat().st_ino == (src / name).stat().st_ino, name


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains `text` (a database name only this test uses)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline and entry.name != str(os.getpid()):
            found.append(int(entry.name))
    return found


@pytest.fixture
def live(postgres: PostgresLab, pg_names: Callable[[str], str]) -> str:
    return odoo_db(postgres, pg_names("blue"))


@pytest.fixture
def stores(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    blue, green = tmp_path / "blue" / "filestore", tmp_path / "green" / "filestore"
    return blue, green, make_filestore(blue)


async def test_clone_by_template_when_nothing_is_connected_keeps_rows_secret_uuid_and_links(
        postgres: PostgresLab, pg_server: Server, live: str, pg_names: Callable[[str], str],
        stores: tuple[Path, Path, dict[str, str]]) -> None:
    blue, green, files = stores
    cand = pg_names("green")
    lines: list[str] = []
    result = await clone(pg_server, live, pg_server, cand, src_filestore=blue,
                         dst_filestore=green, progress=lines.append)
    assert result == CloneResult("template", f"no other session on {live}", result.seconds,
                                 50, True, 0)
    assert result.seconds > 0
    assert_same_database(postgres, live, cand)
    assert_linked(blue, green, files)
    assert (green / next(iter(files))).stat().st_nlink == 2
    assert databases(postgres, cand) == [cand]
    assert sorted(p.name for p in green.parent.iterdir()) == ["filestore"]
    assert lines[-1].startswith(f"clone: {live} is now {cand} (template")


async def test_clone_by_dump_while_the_live_colour_is_connected_never_disconnects_it(
        postgres: PostgresLab, pg_server: Server, live: str, pg_names: Callable[[str], str],
        stores: tuple[Path, Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clones, "PROGRESS_INTERVAL", 0.01)
    blue, green, files = stores
    cand = pg_names("green")
    odoo = await pg_server.connect(live, application_name="odoo-4567")
    try:
        pid = odoo.info.backend_pid
        lines: list[str] = []
        result = await clone(pg_server, live, pg_server, cand, src_filestore=blue,
                             dst_filestore=green, progress=lines.append)
        assert result.method == "dump"
        assert result.why == f"1 session on {live} (pid {pid} odoo-4567)"
        assert (result.files, result.linked, result.terminated) == (50, True, 0)
        assert_same_database(postgres, live, cand)
        assert_linked(blue, green, files)
        # the live colour's session is still there, on the same backend
        cur = await odoo.execute("SELECT pg_backend_pid(), count(*) FROM res_partner")
        assert await cur.fetchone() == (pid, 3002)
        assert f"clone: pg_dump | pg_restore into {cand}_wdclone done" in lines, lines
        assert databases(postgres, cand) == [cand]
    finally:
        await odoo.close()


async def test_two_servers_clone_by_dump(
        postgres: PostgresLab, pg_server: Server, live: str,
        pg_names: Callable[[str], str]) -> None:
    # the same cluster through its unix socket: other connection parameters, another server
    other = Server.parse(f"host={postgres.socket_dir} port={postgres.port} user=postgres")
    cand = pg_names("green")
    result = await clone(pg_server, live, other, cand, src_filestore=None, dst_filestore=None)
    assert result.method == "dump"
    assert result.why.startswith("two servers (127.0.0.1:")
    assert (result.files, result.linked) == (0, True)
    assert_same_database(postgres, live, cand)


async def test_a_session_that_connects_after_the_check_makes_it_fall_back_to_the_dump(
        postgres: PostgresLab, pg_server: Server, live: str, pg_names: Callable[[str], str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen = clones._sessions

    async def none_on_the_source(conn: psycopg.AsyncConnection[object], db: str) -> list[object]:
        return [] if db == live else await seen(conn, db)  # type: ignore[arg-type]

    monkeypatch.setattr(clones, "_sessions", none_on_the_source)
    cand = pg_names("green")
    odoo = await pg_server.connect(live, application_name="odoo-late")
    try:
        lines: list[str] = []
        result = await clone(pg_server, live, pg_server, cand, src_filestore=None,
                             dst_filestore=None, progress=lines.append)
        assert result.method == "dump"
        assert "being accessed by other users" in result.why, result.why
        assert any("falling back to pg_dump | pg_restore" in line for line in lines), lines
        assert_same_database(postgres, live, cand)
        await odoo.execute("SELECT 1")
    finally:
        await odoo.close()


async def test_an_existing_candidate_database_with_a_session_is_replaced(
        postgres: PostgresLab, pg_server: Server, live: str, pg_names: Callable[[str], str],
        stores: tuple[Path, Path, dict[str, str]]) -> None:
    blue, green, files = stores
    cand = make_odoo_db(postgres, pg_names("green"), params={"x.old": "1"})
    (green / "zz").mkdir(parents=True)
    (green / "zz" / "zzold").write_text("only in the old candidate filestore")
    odoo = await pg_server.connect(cand, application_name="odoo-green-cron")
    try:
        lines: list[str] = []
        result = await clone(pg_server, live, pg_server, cand, src_filestore=blue,
                             dst_filestore=green, progress=lines.append)
        assert result.method == "template"  # nothing on the source; the session is on cand
        assert result.terminated == 1
        assert any("ending 1 session on" in line and "odoo-green-cron" in line
                   for line in lines), lines
        with pytest.raises(psycopg.OperationalError):
            await odoo.execute("SELECT 1")
    finally:
        await odoo.close()
    assert_same_database(postgres, live, cand)
    assert param(postgres, cand, "x.old") == ""
    assert_linked(blue, green, files)
    assert databases(postgres, cand) == [cand]


async def test_a_failing_pg_restore_leaves_the_old_candidate_untouched(
        postgres: PostgresLab, pg_server: Server, live: str, pg_names: Callable[[str], str],
        stores: tuple[Path, Path, dict[str, str]]) -> None:
    blue, green, _ = stores
    # A CHECK calling a function with an unqualified table name: pg_restore runs with an empty
    # search_path, so the COPY into x_bad fails (a classic real-world restore failure).
    postgres.psql("CREATE FUNCTION x_ok(v int) RETURNS boolean LANGUAGE sql AS "
                  "'SELECT v < (SELECT count(*) + 10 FROM res_partner)';"
                  "CREATE TABLE x_bad (v int CHECK (x_ok(v))); INSERT INTO x_bad VALUES (1)",
                  dbname=live)
    cand = make_odoo_db(postgres, pg_names("green"), params={"x.old": "kept"})
    old_files = make_filestore(green, 3)
    before = postgres.psql(CHECKSUM, dbname=cand)
    odoo = await pg_server.connect(live, application_name="odoo-blue")  # forces the dump
    try:
        with pytest.raises(StepFailed, match=r"pg_restore into .*_wdclone .* exited 1: "
                           r".*relation \"res_partner\" does not exist") as failed:
            await clone(pg_server, live, pg_server, cand, src_filestore=blue,
                        dst_filestore=green)
    finally:
        await odoo.close()
    assert failed.value.exit_code == 1
    assert any(line.startswith("pg_restore: ") for line in failed.value.output)
    assert postgres.psql(CHECKSUM, dbname=cand) == before
    assert param(postgres, cand, "x.old") == "kept"
    assert databases(postgres, cand) == [cand]
    assert tree(green) == old_files
    assert not processes_mentioning(temp_name(cand))


async def test_cancelling_a_dump_stops_both_programs_and_drops_the_temporary_database(
        postgres: PostgresLab, pg_server: Server, live: str, pg_names: Callable[[str], str],
        stores: tuple[Path, Path, dict[str, str]]) -> None:
    blue, green, _ = stores
    cand = make_odoo_db(postgres, pg_names("green"), params={"x.old": "kept"})
    before = postgres.psql(CHECKSUM, dbname=cand)
    # pg_dump waits for its ACCESS SHARE lock while this session holds res_partner
    holder = await pg_server.connect(live, application_name="test-holder", autocommit=False)
    try:
        await holder.execute("LOCK TABLE res_partner IN ACCESS EXCLUSIVE MODE")
        task = asyncio.ensure_future(clone(pg_server, live, pg_server, cand,
                                           src_filestore=blue, dst_filestore=green))
        waiting = ("SELECT count(*) FROM pg_stat_activity WHERE application_name = "  # noqa: S608
                   f"'{clones.APP}' AND datname = '{live}' AND wait_event_type = 'Lock'")
        deadline = time.monotonic() + 10
        while postgres.psql(waiting).strip() != "1":
            assert time.monotonic() < deadline, "pg_dump never waited on the lock"
            await asyncio.sleep(0.05)
        assert processes_mentioning(temp_name(cand))  # pg_restore is running
        assert databases(postgres, cand) == [cand, temp_name(cand)]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert databases(postgres, cand) == [cand]
        assert not processes_mentioning(temp_name(cand))
        gone = ("SELECT count(*) FROM pg_stat_activity WHERE application_name = "  # noqa: S608
                f"'{clones.APP}'")
        deadline = time.monotonic() + 5
        while postgres.psql(gone).strip() != "0":
            assert time.monotonic() < deadline, "pg_dump still connected after the cancel"
            await asyncio.sleep(0.05)
    finally:
        await holder.close()
    assert postgres.psql(CHECKSUM, dbname=cand) == before
    assert not green.exists()


async def test_the_source_database_missing_is_refused(
        postgres: PostgresLab, pg_server: Server, pg_names: Callable[[str], str]) -> None:
    cand = make_odoo_db(postgres, pg_names("green"))
    missing = pg_names("typo")
    with pytest.raises(StepFailed, match=f"the live database {missing} does not exist"):
        await clone(pg_server, missing, pg_server, cand, src_filestore=None, dst_filestore=None)
    assert databases(postgres, cand) == [cand]


async def test_the_same_database_is_refused(
        postgres: PostgresLab, pg_server: Server, live: str) -> None:
    same = Server.parse(f"host=127.0.0.1 port={postgres.port} user=postgres")
    with pytest.raises(StepFailed, match="are one database"):
        await clone(pg_server, live, same, live, src_filestore=None, dst_filestore=None)
    with pytest.raises(StepFailed, match="are one database"):
        await clone(pg_server, temp_name(live), pg_server, live, src_filestore=None,
                    dst_filestore=None)
    assert databases(postgres, live) == [live]


@pytest.mark.parametrize("where", ["same", "inside", "around"])
async def test_the_same_or_nested_filestores_are_refused_before_anything(
        postgres: PostgresLab, pg_server: Server, live: str, pg_names: Callable[[str], str],
        stores: tuple[Path, Path, dict[str, str]], where: str) -> None:
    blue, _, files = stores
    dst = {"same": blue, "inside": blue / "sub", "around": blue.parent}[where]
    cand = pg_names("green")
    with pytest.raises(StepFailed, match="same directory or one holds the other"):
        await clone(pg_server, live, pg_server, cand, src_filestore=blue, dst_filestore=dst)
    assert databases(postgres, cand) == []
    assert tree(blue) == files


async def test_cleanup_leftovers_drops_a_half_made_clone(
        postgres: PostgresLab, pg_server: Server, pg_names: Callable[[str], str],
        tmp_path: Path) -> None:
    cand = make_odoo_db(postgres, pg_names("green"))
    postgres.psql(f'CREATE DATABASE "{temp_name(cand)}"')
    green = tmp_path / "green"
    make_filestore(green, 2)
    (tmp_path / ".green.wdtmp").mkdir()
    done = await cleanup_leftovers(pg_server, cand, green)
    assert databases(postgres, cand) == [cand]
    assert done[0] == f"database {temp_name(cand)}, left by an interrupted clone, dropped"
    assert any(".green.wdtmp" in line for line in done), done
    assert not (tmp_path / ".green.wdtmp").exists()
    assert len(tree(green)) == 2
    assert await cleanup_leftovers(pg_server, cand, green) == []


async def test_cleanup_leftovers_renames_the_old_database_back_when_the_candidate_is_missing(
        postgres: PostgresLab, pg_server: Server, pg_names: Callable[[str], str],
        tmp_path: Path) -> None:
    cand = pg_names("green")
    make_odoo_db(postgres, old_name(cand), params={"x.old": "kept"})
    green = tmp_path / "green"
    files = make_filestore(tmp_path / ".green.wdold", 3)  # crashed between the two renames
    done = await cleanup_leftovers(pg_server, cand, green)
    assert databases(postgres, cand) == [cand]
    assert param(postgres, cand, "x.old") == "kept"
    assert done == [f"database {old_name(cand)} renamed back to {cand} (a clone was "
                    "interrupted between its renames)",
                    f"filestore {tmp_path / '.green.wdold'} renamed back to {green}"]
    assert tree(green) == files


async def test_cleanup_leftovers_drops_the_old_database_when_the_candidate_is_there(
        postgres: PostgresLab, pg_server: Server, pg_names: Callable[[str], str]) -> None:
    cand = make_odoo_db(postgres, pg_names("green"), params={"x.new": "1"})
    make_odoo_db(postgres, old_name(cand))
    postgres.psql(f'CREATE DATABASE "{temp_name(cand)}"')
    done = await cleanup_leftovers(pg_server, cand, None)
    assert databases(postgres, cand) == [cand]
    assert param(postgres, cand, "x.new") == "1"
    assert len(done) == 2 and done[1].startswith(f"database {old_name(cand)}, left by")


async def test_a_source_dropped_during_the_dump_fails_on_pg_dump_with_the_candidate_untouched(
        postgres: PostgresLab, pg_server: Server, live: str, pg_names: Callable[[str], str],
        stores: tuple[Path, Path, dict[str, str]]) -> None:
    blue, green, _ = stores
    cand = make_odoo_db(postgres, pg_names("green"), params={"x.old": "kept"})
    before = postgres.psql(CHECKSUM, dbname=cand)
    holder = await pg_server.connect(live, application_name="test-holder", autocommit=False)
    try:
        await holder.execute("LOCK TABLE res_partner IN ACCESS EXCLUSIVE MODE")
        task = asyncio.ensure_future(clone(pg_server, live, pg_server, cand,
                                           src_filestore=blue, dst_filestore=green))
        waiting = ("SELECT count(*) FROM pg_stat_activity WHERE application_name = "  # noqa: S608
                   f"'{clones.APP}' AND datname = '{live}' AND wait_event_type = 'Lock'")
        deadline = time.monotonic() + 10
        while postgres.psql(waiting).strip() != "1":
            assert time.monotonic() < deadline, "pg_dump never waited on the lock"
            await asyncio.sleep(0.05)
        postgres.psql(f'DROP DATABASE "{live}" WITH (FORCE)')
        with pytest.raises(StepFailed, match=f"pg_dump of {live} on .* exited 1: ") as failed:
            await task
    finally:
        await holder.close()
    assert failed.value.exit_code == 1
    assert any(line.startswith("pg_dump: ") for line in failed.value.output)
    assert postgres.psql(CHECKSUM, dbname=cand) == before
    assert param(postgres, cand, "x.old") == "kept"
    assert databases(postgres, cand) == [cand]
    assert not green.exists()
    assert not processes_mentioning(temp_name(cand))


async def test_cancelling_during_the_filestore_copy_leaves_the_candidate_as_it_was(
        postgres: PostgresLab, pg_server: Server, live: str, pg_names: Callable[[str], str],
        stores: tuple[Path, Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    blue, green, _ = stores
    cand = make_odoo_db(postgres, pg_names("green"), params={"x.old": "kept"})
    old_files = make_filestore(green, 3)
    started, release = threading.Event(), threading.Event()
    link = os.link

    def slow_link(src: object, dst: object, **kw: object) -> None:
        started.set()
        release.wait(5)
        link(src, dst, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(filestores.os, "link", slow_link)
    task = asyncio.ensure_future(clone(pg_server, live, pg_server, cand, src_filestore=blue,
                                       dst_filestore=green))
    assert await asyncio.to_thread(started.wait, 10), "the filestore copy never started"
    assert databases(postgres, cand) == [cand, temp_name(cand)]  # the copy is complete
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert databases(postgres, cand) == [cand]
    assert param(postgres, cand, "x.old") == "kept"
    assert tree(green) == old_files
    assert sorted(p.name for p in green.parent.iterdir()) == ["filestore"]


@pytest.mark.parametrize("method", ["template", "dump"])
async def test_the_clone_belongs_to_the_live_databases_owner(
        postgres: PostgresLab, pg_server: Server, pg_names: Callable[[str], str],
        method: str) -> None:
    role, live, cand = pg_names("odoo_role"), pg_names("owned"), pg_names("green")
    postgres.psql(f'CREATE ROLE "{role}" LOGIN')
    postgres.psql(f'CREATE DATABASE "{live}" OWNER "{role}"')
    postgres.psql(f'SET ROLE "{role}"; CREATE TABLE res_partner (id serial PRIMARY KEY, '  # noqa: S608
                  "name varchar); INSERT INTO res_partner (name) VALUES ('a'), ('b')",
                  dbname=live)
    odoo = await pg_server.connect(live) if method == "dump" else None
    try:
        result = await clone(pg_server, live, pg_server, cand, src_filestore=None,
                             dst_filestore=None)
    finally:
        if odoo is not None:
            await odoo.close()
    assert result.method == method
    assert postgres.psql("SELECT pg_get_userbyid(datdba) FROM pg_database "  # noqa: S608
                         f"WHERE datname = '{cand}'").strip() == role
    assert postgres.psql("SELECT tableowner FROM pg_tables WHERE tablename = 'res_partner'",
                         dbname=cand).strip() == role
    assert postgres.psql("SELECT count(*) FROM res_partner", dbname=cand).strip() == "2"
