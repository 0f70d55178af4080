"""The `backup` step and the restore of a backup on the lab's real PostgreSQL 15, with
Odoo-like databases (`make_odoo_db` plus a few thousand partners) and filestores of
content-addressed files in Odoo's `ab/abcdef...` layout."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.test_step_gate import make_odoo_db
from watchdog.lab.postgres import PostgresLab
from watchdog.steps import backup as backups
from watchdog.steps.backup import (
    BackupInfo,
    backup,
    cleanup_partial,
    cleanup_restore_leftovers,
    find_backup,
    list_backups,
    restore,
)
from watchdog.steps.base import StepFailed
from watchdog.steps.pg import Server

pytestmark = pytest.mark.lab

UUID = "6d1c0f0e-0000-4000-8000-000000000001"
CHECKSUM = ("SELECT count(*) || ' ' || md5(string_agg(id || ':' || name, ',' ORDER BY id)) "
            "FROM res_partner")


def odoo_db(postgres: PostgresLab, name: str, partners: int = 3000) -> str:
    make_odoo_db(postgres, name)
    postgres.psql("INSERT INTO res_partner (name) SELECT 'Partner ' || g || ' ' || "  # noqa: S608
                  f"md5(g::text) FROM generate_series(1, {partners}) g", dbname=name)
    return name


def make_filestore(path: Path, files: int = 50) -> dict[str, str]:
    """Odoo's layout: the name is the sha1 of the content, under its first two characters."""
    for i in range(files):
        content = f"attachment {i} ".encode() * (i + 1)
        sha = hashlib.sha1(content).hexdigest()  # noqa: S324 (Odoo's own naming)
        (path / sha[:2]).mkdir(parents=True, exist_ok=True)
        (path / sha[:2] / sha).write_bytes(content)
    return tree(path)


def tree(path: Path) -> dict[str, str]:
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def databases(postgres: PostgresLab, db: str) -> list[str]:
    """Which of `db`, `db`_wdrestore and `db`_wdold exist."""
    out = postgres.psql("SELECT datname FROM pg_database WHERE datname IN "  # noqa: S608
                        f"('{db}', '{db}_wdrestore', '{db}_wdold') ORDER BY datname")
    return out.split()


def param(postgres: PostgresLab, db: str, key: str) -> str:
    return postgres.psql(f"SELECT value FROM ir_config_parameter WHERE key = '{key}'",  # noqa: S608
                         dbname=db).strip()


def clock_at(*times: float) -> Callable[[], float]:
    values = iter(times)
    last = [times[0]]

    def now() -> float:
        last[0] = next(values, last[0])
        return last[0]
    return now


@pytest.fixture
def site_db(postgres: PostgresLab, pg_names: Callable[[str], str]) -> str:
    return odoo_db(postgres, pg_names("blue"))


async def test_a_backup_is_verified_and_its_manifest_has_versions_sizes_and_sha256(
        postgres: PostgresLab, pg_server: Server, site_db: str, tmp_path: Path) -> None:
    files = make_filestore(tmp_path / "filestore")
    root = tmp_path / "backups" / "odoo"
    lines: list[str] = []
    info = await backup(pg_server, site_db, tmp_path / "filestore", root, site="odoo",
                        color="blue", keep=5, progress=lines.append)
    assert re.fullmatch(r"\d{8}T\d{6}Z-blue", info.id)
    assert info.verified and info.path == root / info.id
    assert sorted(p.name for p in root.iterdir()) == [info.id]  # the .partial dir is gone
    manifest = json.loads((info.path / "manifest.json").read_text())
    assert manifest == info.manifest
    assert manifest["verified"] is True
    assert (manifest["site"], manifest["color"], manifest["database"]) == ("odoo", "blue",
                                                                          site_db)
    assert manifest["postgresql"].startswith("15.")
    assert manifest["odoo"] == "17.0.1.3"
    assert manifest["database_uuid"] == UUID
    assert manifest["filestore_files"] == len(files) == 50
    assert manifest["ended"] >= manifest["started"] and manifest["duration"] >= 0
    for name in ("database.dump", "filestore.tar"):
        data = (info.path / name).read_bytes()
        assert manifest["files"][name] == {"bytes": len(data),
                                           "sha256": hashlib.sha256(data).hexdigest()}
    assert info.bytes == sum(f["bytes"] for f in manifest["files"].values())
    assert info.as_json() == {"id": info.id, "color": "blue", "database": site_db,
                              "created": manifest["created"], "bytes": info.bytes,
                              "verified": True}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", manifest["created"])
    assert list_backups(root) == [info]
    assert find_backup(root, info.id) == info
    assert find_backup(root, "../odoo/" + info.id) is None
    assert find_backup(root, "..") is None
    assert any("verified" in line for line in lines), lines


async def test_restore_brings_back_rows_files_secret_and_uuid(
        postgres: PostgresLab, pg_server: Server, site_db: str, tmp_path: Path) -> None:
    store = tmp_path / "filestore"
    before_files = make_filestore(store)
    before_rows = postgres.psql(CHECKSUM, dbname=site_db)
    info = await backup(pg_server, site_db, store, tmp_path / "b", site="odoo", color="blue",
                        keep=5)
    postgres.psql("DELETE FROM res_partner WHERE id % 3 = 0; UPDATE ir_config_parameter "
                  "SET value = 'changed' WHERE key IN ('database.secret', 'database.uuid')",
                  dbname=site_db)
    for name in sorted(before_files)[:10]:
        (store / name).unlink()
    (store / "ff").mkdir(exist_ok=True)
    (store / "ff" / "ffnew").write_text("added after the backup")
    assert postgres.psql(CHECKSUM, dbname=site_db) != before_rows

    lines: list[str] = []
    result = await restore(pg_server, info, site_db, store, progress=lines.append)
    assert postgres.psql(CHECKSUM, dbname=site_db) == before_rows
    assert tree(store) == before_files
    assert param(postgres, site_db, "database.secret") == "s3cret"
    assert param(postgres, site_db, "database.uuid") == UUID
    assert (result.backup, result.database, result.files) == (info.id, site_db, 50)
    assert databases(postgres, site_db) == [site_db]  # no _wdrestore, no _wdold left
    assert sorted(p.name for p in store.parent.iterdir()) == ["b", "filestore"]
    assert lines and lines[-1].startswith(f"restore: {info.id} is now {site_db}")


async def test_restore_into_a_database_that_does_not_exist_yet(
        postgres: PostgresLab, pg_server: Server, site_db: str, pg_names: Callable[[str], str],
        tmp_path: Path) -> None:
    files = make_filestore(tmp_path / "blue")
    info = await backup(pg_server, site_db, tmp_path / "blue", tmp_path / "b", site="odoo",
                        color="blue", keep=5)
    green = pg_names("green")
    await restore(pg_server, info, green, tmp_path / "green")
    assert postgres.psql(CHECKSUM, dbname=green) == postgres.psql(CHECKSUM, dbname=site_db)
    assert tree(tmp_path / "green") == files


async def test_the_restored_database_keeps_the_owner_of_the_one_it_replaces(
        postgres: PostgresLab, pg_server: Server, pg_names: Callable[[str], str],
        tmp_path: Path) -> None:
    role, db = pg_names("odoo_role"), pg_names("owned")
    postgres.psql(f'CREATE ROLE "{role}" LOGIN')
    postgres.psql(f'CREATE DATABASE "{db}" OWNER "{role}"')
    postgres.psql(f'SET ROLE "{role}"; CREATE TABLE res_partner (id serial PRIMARY KEY, '  # noqa: S608
                  "name varchar); INSERT INTO res_partner (name) VALUES ('a'), ('b')", dbname=db)
    info = await backup(pg_server, db, None, tmp_path / "b", site="odoo", color="blue", keep=5)
    await restore(pg_server, info, db, None)
    assert postgres.psql(f"SELECT pg_get_userbyid(datdba) FROM pg_database "  # noqa: S608
                         f"WHERE datname = '{db}'").strip() == role
    assert postgres.psql("SELECT tableowner FROM pg_tables WHERE tablename = 'res_partner'",
                         dbname=db).strip() == role
    assert postgres.psql("SELECT count(*) FROM res_partner", dbname=db).strip() == "2"


async def test_keep_2_after_3_backups_leaves_the_newest_2_and_not_the_other_colours(
        postgres: PostgresLab, pg_server: Server, pg_names: Callable[[str], str],
        tmp_path: Path) -> None:
    blue, green = odoo_db(postgres, pg_names("blue"), 10), odoo_db(postgres, pg_names("g"), 10)
    root = tmp_path / "b"
    lines: list[str] = []
    old_green = await backup(pg_server, green, None, root, site="odoo", color="green", keep=2,
                             clock=clock_at(500_000_000), progress=lines.append)
    assert any("does not exist: filestore.tar is empty" in line for line in lines), lines
    assert old_green.manifest["filestore_files"] == 0
    made = [await backup(pg_server, blue, None, root, site="odoo", color="blue", keep=2,
                         clock=clock_at(1_700_000_000 + i * 3600)) for i in range(3)]
    left = list_backups(root)
    assert [i.id for i in left] == [made[2].id, made[1].id, old_green.id]
    assert not made[0].path.exists()
    assert old_green.path.exists()
    assert made[2].id == "20231115T001320Z-blue"
    # the same second again: the id takes a -2
    again = await backup(pg_server, blue, None, root, site="odoo", color="blue", keep=5,
                         clock=clock_at(1_700_000_000 + 2 * 3600))
    assert again.id == "20231115T001320Z-blue-2"


async def test_a_missing_database_fails_with_nothing_left(
        pg_server: Server, pg_names: Callable[[str], str], tmp_path: Path) -> None:
    missing = pg_names("typo")
    root = tmp_path / "b"
    with pytest.raises(StepFailed) as failed:
        await backup(pg_server, missing, None, root, site="odoo", color="blue", keep=2)
    assert f"database {missing} does not exist on {pg_server.label}" in str(failed.value)
    assert list(root.iterdir()) == []


async def test_a_corrupted_or_unverified_backup_is_refused_by_restore(
        postgres: PostgresLab, pg_server: Server, site_db: str, tmp_path: Path) -> None:
    info = await backup(pg_server, site_db, None, tmp_path / "b", site="odoo", color="blue",
                        keep=5)
    postgres.psql("DELETE FROM res_partner WHERE id > 100", dbname=site_db)
    before = postgres.psql(CHECKSUM, dbname=site_db)
    dump = info.path / "database.dump"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))
    with pytest.raises(StepFailed, match=r"damaged, refused: the sha256 of database.dump"):
        await restore(pg_server, info, site_db, None)
    unverified = BackupInfo(**{**info.__dict__, "verified": False})
    with pytest.raises(StepFailed, match="never verified"):
        await restore(pg_server, unverified, site_db, None)
    assert postgres.psql(CHECKSUM, dbname=site_db) == before
    assert databases(postgres, site_db) == [site_db]


async def test_a_failing_pg_restore_leaves_the_database_and_filestore_as_they_were(
        postgres: PostgresLab, pg_server: Server, site_db: str, tmp_path: Path) -> None:
    store = tmp_path / "filestore"
    info = await backup(pg_server, site_db, store, tmp_path / "b", site="odoo", color="blue",
                        keep=5)
    files = make_filestore(store, 5)
    before = postgres.psql(CHECKSUM, dbname=site_db)
    # a dump pg_restore cannot read, with a manifest that matches it
    dump = info.path / "database.dump"
    dump.write_bytes(b"PGDMP" + b"\0" * 200)
    manifest = dict(info.manifest)
    manifest["files"] = {**manifest["files"], "database.dump": {
        "bytes": dump.stat().st_size, "sha256": hashlib.sha256(dump.read_bytes()).hexdigest()}}
    (info.path / "manifest.json").write_text(json.dumps(manifest))
    broken = find_backup(info.path.parent, info.id)
    assert broken is not None
    with pytest.raises(StepFailed, match=r"pg_restore of backup .* exited 1") as failed:
        await restore(pg_server, broken, site_db, store)
    assert failed.value.exit_code == 1 and failed.value.output
    assert postgres.psql(CHECKSUM, dbname=site_db) == before
    assert tree(store) == files
    assert databases(postgres, site_db) == [site_db]


async def test_restore_is_refused_while_a_session_is_connected_and_forced_ends_it(
        postgres: PostgresLab, pg_server: Server, site_db: str, tmp_path: Path) -> None:
    info = await backup(pg_server, site_db, None, tmp_path / "b", site="odoo", color="blue",
                        keep=5)
    before = postgres.psql(CHECKSUM, dbname=site_db)
    postgres.psql("DELETE FROM res_partner WHERE id > 10", dbname=site_db)
    changed = postgres.psql(CHECKSUM, dbname=site_db)
    odoo = await pg_server.connect(site_db, application_name="odoo-blue-worker")
    try:
        pid = odoo.info.backend_pid
        with pytest.raises(StepFailed) as failed:
            await restore(pg_server, info, site_db, None)
        message = str(failed.value)
        assert f"pid {pid} (odoo-blue-worker, from 127.0.0.1" in message
        assert "--force" in message
        assert postgres.psql(CHECKSUM, dbname=site_db) == changed
        assert databases(postgres, site_db) == [site_db]

        lines: list[str] = []
        result = await restore(pg_server, info, site_db, None, force=True, progress=lines.append)
        assert result.terminated == 1
        assert any("ending 1 session(s)" in line and "odoo-blue-worker" in line
                   for line in lines), lines
        assert postgres.psql(CHECKSUM, dbname=site_db) == before
        with pytest.raises(psycopg.OperationalError):
            await odoo.execute("SELECT 1")
    finally:
        await odoo.close()


async def test_cancelling_a_backup_mid_dump_stops_pg_dump_and_leaves_no_partial_dir(
        postgres: PostgresLab, pg_server: Server, site_db: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backups, "PROGRESS_INTERVAL", 0.1)
    root = tmp_path / "b"
    # pg_dump waits for its ACCESS SHARE lock while this session holds res_partner
    holder = await pg_server.connect(site_db, application_name="test-holder", autocommit=False)
    lines: list[str] = []
    try:
        await holder.execute("LOCK TABLE res_partner IN ACCESS EXCLUSIVE MODE")
        task = asyncio.ensure_future(backup(pg_server, site_db, None, root, site="odoo",
                                            color="blue", keep=2, progress=lines.append))
        dumping = ("SELECT count(*) FROM pg_stat_activity WHERE application_name = "  # noqa: S608
                   f"'{backups.APP}' AND wait_event_type = 'Lock'")
        deadline = time.monotonic() + 10
        while postgres.psql(dumping).strip() != "1":
            assert time.monotonic() < deadline, "pg_dump never waited on the lock"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        (partial,) = root.iterdir()
        assert re.fullmatch(r"\.\d{8}T\d{6}Z-blue\.partial", partial.name), partial.name
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert list(root.iterdir()) == []
        assert any(re.fullmatch(r"backup: \d+ bytes written", line) for line in lines), lines
        gone = ("SELECT count(*) FROM pg_stat_activity WHERE application_name = "  # noqa: S608
                f"'{backups.APP}'")
        deadline = time.monotonic() + 5
        while postgres.psql(gone).strip() != "0":
            assert time.monotonic() < deadline, "pg_dump still connected after the cancel"
            await asyncio.sleep(0.05)
    finally:
        await holder.close()


async def test_cleanup_partial_removes_only_half_written_backups(
        pg_server: Server, site_db: str, tmp_path: Path) -> None:
    root = tmp_path / "b"
    info = await backup(pg_server, site_db, None, root, site="odoo", color="blue", keep=5)
    crashed = root / ".20240101T000000Z-blue.partial"
    crashed.mkdir()
    (crashed / "database.dump").write_bytes(b"half")
    assert cleanup_partial(root) == [crashed]
    assert [p.name for p in root.iterdir()] == [info.id]
    assert list_backups(root) == [info]
    assert cleanup_partial(tmp_path / "nothing") == []


async def test_cleanup_restore_leftovers_puts_back_a_database_renamed_aside(
        postgres: PostgresLab, pg_server: Server, pg_names: Callable[[str], str]) -> None:
    # a crash between the renames: <db> missing, <db>_wdold the original, _wdrestore half made
    db = pg_names("crash")
    odoo_db(postgres, db + "_wdold", 20)
    before = postgres.psql(CHECKSUM, dbname=db + "_wdold")
    postgres.psql(f'CREATE DATABASE "{db}_wdrestore"')
    done = await cleanup_restore_leftovers(pg_server, db)
    assert len(done) == 2 and "renamed back" in done[1]
    assert databases(postgres, db) == [db]
    assert postgres.psql(CHECKSUM, dbname=db) == before
    assert await cleanup_restore_leftovers(pg_server, db) == []

    # a crash after the swap: <db> is the restored one, <db>_wdold is dropped
    postgres.psql(f'CREATE DATABASE "{db}_wdold"')
    done = await cleanup_restore_leftovers(pg_server, db)
    assert done == [f"database {db}_wdold, left by an interrupted restore, dropped"]
    assert databases(postgres, db) == [db]
    assert postgres.psql(CHECKSUM, dbname=db) == before


async def test_a_filestore_that_cannot_be_written_leaves_the_database_as_it_was(
        postgres: PostgresLab, pg_server: Server, site_db: str, tmp_path: Path) -> None:
    make_filestore(tmp_path / "filestore", 3)
    info = await backup(pg_server, site_db, tmp_path / "filestore", tmp_path / "b", site="odoo",
                        color="blue", keep=5)
    postgres.psql("DELETE FROM res_partner WHERE id > 10", dbname=site_db)
    before = postgres.psql(CHECKSUM, dbname=site_db)
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(StepFailed, match=r"restore of the filestore into .* failed"):
        await restore(pg_server, info, site_db, tmp_path / "a-file" / "filestore")
    assert postgres.psql(CHECKSUM, dbname=site_db) == before
    assert databases(postgres, site_db) == [site_db]
