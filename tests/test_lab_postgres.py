"""The lab's PostgreSQL 15: a cluster of its own, queried through Debian's psql, stopped by pid."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from watchdog.lab.postgres import PostgresLab
from watchdog.lab.procs import port_open

pytestmark = pytest.mark.lab


def test_a_lab_cluster_answers_on_loopback_and_is_gone_after_stop(tmp_path: Path) -> None:
    pg = PostgresLab(tmp_path / "pg")
    with pg:
        assert pg.running() and pg.pid is not None
        version = pg.psql("SHOW server_version").strip()
        assert version.startswith("15."), version
        assert pg.psql("SHOW listen_addresses").strip() == "127.0.0.1"
        pg.psql("CREATE DATABASE odoo")
        pg.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)", dbname="odoo")
        assert pg.psql("SELECT sum(x) FROM t", dbname="odoo").strip() == "3"
        assert (pg.socket_dir / f".s.PGSQL.{pg.port}").exists()
        assert pg.dsn("odoo") == f"postgresql://postgres@127.0.0.1:{pg.port}/odoo"
        cluster, pid = pg.cluster, pg.pid
    assert not pg.running()
    assert not port_open("127.0.0.1", pg.port)
    assert not cluster.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_cluster_killed_with_sigkill_starts_again_from_its_files(tmp_path: Path) -> None:
    pg = PostgresLab(tmp_path / "pg")
    try:
        pg.start()
        pg.psql("CREATE DATABASE kept")
        pg.kill()
        assert not pg.running()
        pg.start()  # crash recovery from the same data directory, then it answers again
        assert "kept" in pg.psql("SELECT datname FROM pg_database").split()
    finally:
        pg.stop()
