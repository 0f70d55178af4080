"""The PostgreSQL server a colour's database lives on, from the site's `dsn_file`.

The conninfo is libpq's (`host=... port=... user=... password=...` or a `postgresql://` URL);
its `dbname` is ignored (the names come from `database.names`). Programs (pg_dump,
pg_restore) get it as PG* environment variables, never in argv where `ps` shows it, and
nothing here ever prints it: `Server.label` is host:port/user only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import conninfo as _conninfo
from psycopg import sql

BIN = "/usr/lib/postgresql/15/bin"  # Debian's postgresql-15; else the PATH's programs

_ENV = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD",
        "sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT",
        "sslkey": "PGSSLKEY", "connect_timeout": "PGCONNECT_TIMEOUT", "hostaddr": "PGHOSTADDR",
        "passfile": "PGPASSFILE", "service": "PGSERVICE", "options": "PGOPTIONS"}


class DsnError(ValueError):
    """A conninfo libpq cannot parse; the message never contains the conninfo itself."""


@dataclass(frozen=True)
class Server:
    params: Mapping[str, str]  # libpq keywords, without dbname

    @classmethod
    def parse(cls, text: str) -> Server:
        try:
            params = _conninfo.conninfo_to_dict(text.strip())
        except psycopg.ProgrammingError:
            raise DsnError("not a libpq conninfo (host=... port=... user=... or "
                           "postgresql://user@host:port)") from None
        params.pop("dbname", None)
        return cls({k: str(v) for k, v in params.items() if v is not None})

    @property
    def label(self) -> str:
        """host:port (user): what events and errors may show."""
        host = self.params.get("host", "localhost")
        user = self.params.get("user", "default user")
        return f"{host}:{self.params.get('port', '5432')} ({user})"

    def conninfo(self, dbname: str, **extra: Any) -> str:
        return _conninfo.make_conninfo("", **{**self.params, "dbname": dbname, **extra})

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment for libpq programs: `base` (else ours) with this server's PG*."""
        env = {k: v for k, v in (os.environ if base is None else base).items()
               if not k.startswith("PG")}
        for key, value in self.params.items():
            name = _ENV.get(key)
            if name is not None:
                env[name] = value
        return env

    async def connect(self, dbname: str = "postgres", *,
                      application_name: str = "odoo-watchdog",
                      autocommit: bool = True) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            self.conninfo(dbname, application_name=application_name,
                          connect_timeout=self.params.get("connect_timeout", "10")),
            autocommit=autocommit)


def program(name: str) -> str:
    """pg_dump, pg_restore, psql: Debian's PostgreSQL 15 build when present (a client older
    than the server cannot dump it), else the PATH's."""
    path = os.path.join(BIN, name)
    return path if os.access(path, os.X_OK) else name


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# ---------------------------------------------------------------- databases, by name

async def existing(conn: psycopg.AsyncConnection[Any], *names: str) -> set[str]:
    """Which of `names` are databases on the server of `conn`."""
    async with conn.cursor() as cur:
        await cur.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)",
                          (list(names),))
        return {row[0] for row in await cur.fetchall()}


async def drop(conn: psycopg.AsyncConnection[Any], name: str) -> None:
    """Drop a database of ours (a temporary or set-aside one), ending its sessions."""
    await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
        sql.Identifier(name)))


async def rename(conn: psycopg.AsyncConnection[Any], src: str, dst: str) -> None:
    await conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
        sql.Identifier(src), sql.Identifier(dst)))


async def undo_swap(conn: psycopg.AsyncConnection[Any], database: str, tmp: str, old: str,
                    job: str) -> list[str]:
    """What a crash left of a build-beside-and-swap (clone, restore): `tmp` (the database
    being built) is dropped; `old` (the one set aside) is renamed back when `database` is
    missing (the crash fell between the two renames), else dropped. One line per act."""
    done: list[str] = []
    found = await existing(conn, database, tmp, old)
    if tmp in found:
        await drop(conn, tmp)
        done.append(f"database {tmp}, left by an interrupted {job}, dropped")
    if old in found:
        if database not in found:
            await rename(conn, old, database)
            done.append(f"database {old} renamed back to {database} (a {job} was "
                        "interrupted between its renames)")
        else:
            await drop(conn, old)
            done.append(f"database {old}, left by an interrupted {job}, dropped")
    return done
