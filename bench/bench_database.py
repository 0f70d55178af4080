"""The database half of a rollout, timed: backup, clone by template, clone by dump|restore and
the runbook's own `pg_dump | psql`, side by side on one generated database, in one run.

The lab: PostgreSQL 15 (Debian's) in a temporary cluster on loopback (`PostgresLab`), with the
lab's settings `fsync=off`, `synchronous_commit=off`, `full_page_writes=off`: durability is off
for every row of the table alike, ours and the runbook's. The database (`bench_live`) is
generated to at least `--size-gb` (pg_database_size): a `res_partner`-like table of a few
million rows (name, email, phone, street, city, zip, comment, dates...) with btree indexes on
name, email and commercial_partner_id and a partial one, plus Odoo's small tables
(`ir_module_module`, `ir_config_parameter` with `database.secret` / `database.uuid`,
`ir_attachment` naming every filestore file), then VACUUM ANALYZE. Its filestore: `--files`
files in Odoo's layout (`ab/abcdef...`, the sha1 of the content), 2 to 150 kB of random
(incompressible, like PDFs and JPEGs) bytes.

Timed, each into a fresh destination database on the same server:
1. backup: `watchdog.steps.backup.backup` (pg_dump -Fc, filestore tar, sha256, verification),
   beside the runbook's phase 1 backup (`pg_dump -Fc > file`), both under the live load below;
2. clone by template: `watchdog.steps.clone.clone`, nothing else connected to the source;
3. clone by dump|restore: the same while a psycopg connection to the source stays open;
4. the runbook's clone, the baseline: `pg_dump SRC | psql DST` (plain SQL into psql, two
   processes and a pipe, no filestore);
5. the filestore: `copy_filestore` (hard links) against `cp -a` (the runbook copies none);
6. restore: `watchdog.steps.backup.restore` of the backup over the dump clone, against the
   runbook's rollback_database.sh (DROP, CREATE, `pg_restore -d`) over the pipe's clone.
The clones 2 and 3 also copy the filestore (by hard links): the runbook's pipe does not. Two
reference rows, not steps, tell where the time goes: `pg_dump -Fc -Z0 | pg_restore` through
an OS pipe, and `CREATE DATABASE ... TEMPLATE ... STRATEGY FILE_COPY` (PostgreSQL 15's default
is WAL_LOG).
Every clone is checked against the source: rows, a checksum of res_partner, its indexes,
database.secret and database.uuid.

The backup's cost on the live colour: an Odoo stand-in (loopback) under constant load from a
separate process (GET /web/login), and, since the stand-in sends no query to PostgreSQL,
a separate process querying the live database at a fixed rate (a SELECT by the indexed name;
an UPDATE of one row in a transaction): p50/p95 for the seconds before the backups, during
the watchdog backup's pg_dump and during the runbook's.

    .venv/bin/python bench/bench_database.py [--size-gb 1.0] [--files 2000] [--quick]

Measured on 2 cores (AMD EPYC, 25 GB RAM, the database in the page cache), PostgreSQL 15.20,
bench_live 1,013 MB (2,300,000 res_partner rows, 5 indexes), filestore 2,000 files, 152 MB;
the whole run 222 s:

| step                                                      | seconds | vs baseline  | goal       |
|-----------------------------------------------------------|--------:|--------------|------------|
| backup: watchdog (pg_dump -Fc, tar, sha256, verify) 341MB |   21.86 |              |            |
| backup: runbook phase 1 (pg_dump -Fc > file) 188 MB       |   23.33 |              |            |
| clone by template: watchdog (+ filestore by links)        |    3.93 | 4.95x faster | >=5x FAIL  |
| reference: CREATE DATABASE ... STRATEGY FILE_COPY         |    3.37 | 5.76x faster |            |
| clone by dump: watchdog (pg_dump -Fc | pg_restore + fs)   |   37.84 | 1.95x slower | slower FAIL |
| clone: runbook phase 1 (pg_dump | psql) BASELINE          |   19.42 | 1.0x         |            |
| reference: pg_dump -Fc -Z0 | pg_restore (OS pipe)         |   17.03 | 0.88x        |            |
| restore: watchdog (pg_restore beside, filestore, swap)    |   17.71 | 1.01x slower |            |
| restore: runbook rollback_database.sh BASELINE            |   17.60 | 1.0x         |            |
| filestore: copy_filestore (hard links)                    |    0.10 | 8x vs cp -a  | <1 s PASS  |
| filestore: cp -a (the runbook copies none)                |    0.76 |              |            |

The live colour, p50 / p95 in ms: before (10 s), during the watchdog backup's pg_dump (20 s),
during the runbook's (23 s):
- HTTP GET /web/login on the stand-in: 2.20 / 4.26, 3.09 / 7.69, 3.80 / 10.47
- SELECT res_partner by name (index):  0.50 / 0.70, 0.52 / 3.29, 0.51 / 5.85
- UPDATE one row (a transaction):      0.46 / 1.37, 0.61 / 5.25, 0.54 / 5.91
Every clone and restore had the source's rows, checksum, indexes, secret and uuid. Between
runs on this machine the pipe took 19-22 s and the template clone 3.9-4.6 s (4.75x, 4.95x).
The dump clone's cost is pg_dump -Fc's compression (the -Z0 reference matches the pipe).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from watchdog.lab.load import read_samples
from watchdog.lab.postgres import PostgresLab
from watchdog.lab.standin import StandinProcess
from watchdog.steps.filestore import copy_filestore, list_files
from watchdog.steps.pg import Server, program, quote_ident

PROJECT = Path(__file__).resolve().parent.parent
SRC = "bench_live"
PROBE_APP = "bench-live-probe"
HOLD_APP = "bench-live-colour"
BATCH = 400_000  # res_partner rows per INSERT ... SELECT
HEAP_SHARE = 0.62  # of the target size, before the indexes are built (indexes: ~40%)
LOAD_PATH = "/web/login"
PROBE_RATE = 20.0  # rounds per second (one SELECT + one UPDATE transaction each)
GOAL_TEMPLATE = 5.0  # the template clone at least this many times faster than the pipe
GOAL_LINKS = 1.0  # seconds, the filestore by hard links

FIRST = ["Anna", "Bruno", "Chloé", "David", "Emma", "Farid", "Greta", "Hugo", "Inès", "Jan",
         "Katrin", "Lucas", "Marie", "Nils", "Olga", "Pierre", "Quentin", "Rosa", "Sven", "Yara"]
LAST = ["Martin", "Dubois", "Peeters", "Janssens", "Müller", "Schmidt", "Rossi", "Garcia",
        "Novak", "Smith", "Jones", "Lefèvre", "Moreau", "Laurent", "Simon", "Michel", "Leroy",
        "Roux", "David", "Bertrand", "Morel", "Fournier", "Girard", "Bonnet", "Dupont",
        "Lambert", "Fontaine", "Rousseau", "Vincent", "Maes"]
CITIES = ["Brussels", "Antwerp", "Ghent", "Liège", "Namur", "Leuven", "Paris", "Lyon",
          "Lille", "Amsterdam", "Rotterdam", "Berlin", "Munich", "Madrid", "Milan"]
STREETS = ["Rue de la Loi", "Avenue Louise", "Meir", "Grote Markt", "Rue Neuve", "Kerkstraat",
           "Stationsstraat", "Hauptstraße", "Via Roma", "Calle Mayor", "Boulevard Anspach",
           "Chaussée de Waterloo"]


def _array(values: list[str]) -> str:
    return "ARRAY[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


SCHEMA = """
CREATE TABLE res_company (id serial PRIMARY KEY, name varchar NOT NULL,
    create_date timestamp DEFAULT now(), write_date timestamp DEFAULT now());
CREATE TABLE res_partner (
    id serial PRIMARY KEY, name varchar NOT NULL, display_name varchar, ref varchar,
    email varchar, phone varchar, mobile varchar, street varchar, street2 varchar,
    city varchar, zip varchar, country_id integer, company_id integer REFERENCES res_company,
    commercial_partner_id integer, is_company boolean NOT NULL DEFAULT false,
    active boolean NOT NULL DEFAULT true, lang varchar DEFAULT 'en_US', comment text,
    create_uid integer, write_uid integer, create_date timestamp, write_date timestamp);
CREATE TABLE ir_module_module (id serial PRIMARY KEY, name varchar NOT NULL UNIQUE,
    state varchar NOT NULL, latest_version varchar, author varchar, summary text,
    create_date timestamp DEFAULT now(), write_date timestamp DEFAULT now());
CREATE TABLE ir_config_parameter (id serial PRIMARY KEY, key varchar NOT NULL UNIQUE,
    value text NOT NULL, create_date timestamp DEFAULT now(), write_date timestamp DEFAULT now());
CREATE TABLE ir_attachment (id serial PRIMARY KEY, name varchar NOT NULL, res_model varchar,
    res_id integer, type varchar NOT NULL DEFAULT 'binary', store_fname varchar,
    file_size integer, checksum varchar(40), mimetype varchar,
    create_date timestamp DEFAULT now());
CREATE INDEX ir_attachment_res_idx ON ir_attachment (res_model, res_id);
CREATE INDEX ir_attachment_checksum_index ON ir_attachment (checksum);
INSERT INTO res_company (name) VALUES ('My Company'), ('My Company (Branch)');
"""

# One batch of partners: rows lo..hi. The name is `First Last g`: the probe rebuilds it in
# Python (partner_name) to look one up by the index.
PARTNERS = f"""
INSERT INTO res_partner (name, display_name, ref, email, phone, mobile, street, street2,
    city, zip, country_id, company_id, commercial_partner_id, is_company, active, comment,
    create_uid, write_uid, create_date, write_date)
SELECT n, CASE WHEN mod(g, 10) = 0 THEN n ELSE 'Company ' || (g / 10) || ', ' || n END,
    'P' || g, lower(f) || '.' || lower(l) || '.' || g || '@example.com',
    '+32 2 ' || lpad(mod(g::bigint * 7919, 1000000)::text, 6, '0'),
    CASE WHEN mod(g, 3) = 0
         THEN '+32 470 ' || lpad(mod(g::bigint * 104729, 1000000)::text, 6, '0') END,
    mod(g, 499) + 1 || ' ' || ({_array(STREETS)})[1 + mod(g, {len(STREETS)})],
    CASE WHEN mod(g, 7) = 0 THEN 'Box ' || mod(g, 97) END,
    ({_array(CITIES)})[1 + mod(g / 3, {len(CITIES)})],
    lpad(mod(g * 31, 9000)::text, 4, '0'), 1 + mod(g, 250), 1 + mod(g, 2),
    CASE WHEN mod(g, 10) = 0 THEN g ELSE g - mod(g, 10) END, mod(g, 10) = 0,
    mod(g, 50) <> 0,
    CASE WHEN mod(g, 2) = 0 THEN 'Customer since ' || (2010 + mod(g, 14)) || '. '
         || md5(g::text) || ' ' || md5((g * 3)::text) || ' ' || md5((g * 7)::text) END,
    2, 2, timestamp '2016-01-01' + mod(g, 250000) * interval '17 minutes',
    timestamp '2023-01-01' + mod(g, 90000) * interval '5 minutes'
FROM (SELECT g, ({_array(FIRST)})[1 + mod(g, {len(FIRST)})] AS f,
             ({_array(LAST)})[1 + mod(g / {len(FIRST)}, {len(LAST)})] AS l
      FROM generate_series(%(lo)s::integer, %(hi)s::integer) AS g) AS s,
     LATERAL (SELECT f || ' ' || l || ' ' || g AS n) AS x
"""  # noqa: S608 (constants only; lo and hi are query parameters)

INDEXES = [
    ("res_partner_name_index", "CREATE INDEX res_partner_name_index ON res_partner (name)"),
    ("res_partner_email_index", "CREATE INDEX res_partner_email_index ON res_partner (email)"),
    ("res_partner_commercial_partner_id_index",
     "CREATE INDEX res_partner_commercial_partner_id_index "
     "ON res_partner (commercial_partner_id)"),
    ("res_partner_company_partial_index",
     "CREATE INDEX res_partner_company_partial_index ON res_partner (company_id, ref) "
     "WHERE is_company AND active"),
]

MODULES = ["base", "web", "bus", "mail", "contacts", "product", "uom", "sale", "sale_management",
           "account", "account_payment", "stock", "purchase", "crm", "hr", "hr_expense",
           "project", "website", "portal", "payment", "analytic", "calendar", "resource",
           "digest", "auth_signup", "base_import", "web_editor", "utm", "sms", "iap"]


def partner_name(g: int) -> str:
    """The `name` the generator gave partner `g` (its id too)."""
    return f"{FIRST[g % len(FIRST)]} {LAST[(g // len(FIRST)) % len(LAST)]} {g}"


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB" if n >= 10e6 else f"{n / 1e6:,.1f} MB"


# ---------------------------------------------------------------- the generated database

@dataclass
class Source:
    rows: int = 0
    size: int = 0
    files: int = 0
    file_bytes: int = 0
    indexes: int = 0
    seconds: float = 0.0


async def generate(server: Server, size_gb: float, filestore: Path, files: int) -> Source:
    t0 = time.monotonic()
    target = int(size_gb * 1e9)
    admin = await server.connect("postgres")
    try:
        await admin.execute(f"CREATE DATABASE {quote_ident(SRC)} TEMPLATE template0 "
                            "ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'")
    finally:
        await admin.close()
    src = Source()
    conn = await server.connect(SRC, application_name="bench-generator")
    try:
        await conn.execute("SET maintenance_work_mem = '512MB'")
        await conn.execute(SCHEMA)
        await odoo_tables(conn)

        async def size() -> int:
            cur = await conn.execute("SELECT pg_database_size(current_database())")
            row = await cur.fetchone()
            assert row is not None
            return int(row[0])

        async def insert(count: int) -> None:
            lo = src.rows + 1
            await conn.execute(PARTNERS, {"lo": lo, "hi": lo + count - 1})
            src.rows += count
            say(f"  res_partner: {src.rows:,} rows, database {mb(await size())} "
                f"({time.monotonic() - t0:.0f} s)")

        say(f"generating {SRC}: res_partner until {mb(target * HEAP_SHARE)} before indexes")
        while await size() < target * HEAP_SHARE:
            await insert(BATCH if size_gb >= 0.5 else BATCH // 8)
        for name, ddl in INDEXES:
            t1 = time.monotonic()
            await conn.execute(ddl)
            say(f"  index {name} built ({time.monotonic() - t1:.1f} s)")
        while await size() < target:  # indexes in place: top up in smaller batches
            await insert(BATCH // 8)
        say(f"  filestore: writing {files:,} files into {filestore}")
        src.files, src.file_bytes = await write_filestore(conn, filestore, files)
        t1 = time.monotonic()
        await conn.execute("VACUUM ANALYZE")
        await conn.execute("CHECKPOINT")
        say(f"  VACUUM ANALYZE, CHECKPOINT ({time.monotonic() - t1:.1f} s)")
        src.size = await size()
        cur = await conn.execute("SELECT count(*) FROM pg_indexes WHERE tablename = "
                                 "'res_partner'")
        row = await cur.fetchone()
        src.indexes = int(row[0]) if row else 0
    finally:
        await conn.close()
    src.seconds = time.monotonic() - t0
    return src


async def odoo_tables(conn: psycopg.AsyncConnection[Any]) -> None:
    """ir_module_module (base on 17.0) and ir_config_parameter with the two keys a clone
    must keep."""
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO ir_module_module (name, state, latest_version, author, summary) "
            "VALUES (%s, 'installed', %s, 'Odoo S.A.', %s)",
            [(m, f"17.0.1.{i % 4}", f"The {m} module") for i, m in enumerate(MODULES)])
        await cur.executemany(
            "INSERT INTO ir_module_module (name, state, author) VALUES (%s, 'uninstalled', "
            "'Odoo S.A.')", [(f"l10n_{c}",) for c in ("be", "fr", "nl", "de", "es", "it")])
        await cur.executemany(
            "INSERT INTO ir_config_parameter (key, value) VALUES (%s, %s)",
            [("database.secret", uuid.uuid4().hex + uuid.uuid4().hex),
             ("database.uuid", str(uuid.uuid1())),
             ("database.create_date", "2016-01-01 09:00:00"),
             ("web.base.url", "https://odoo.example.com"),
             ("base.login_cooldown_after", "10")])


async def write_filestore(conn: psycopg.AsyncConnection[Any], root: Path,
                          count: int) -> tuple[int, int]:
    """`count` files in Odoo's layout under `root`, and an ir_attachment row for each."""
    rng = random.Random(11)
    rows: list[tuple[str, str, int, str, str, int]] = []
    total = 0
    for i in range(count):
        data = rng.randbytes(rng.randint(2_000, 150_000))
        sha = hashlib.sha1(data, usedforsecurity=False).hexdigest()
        path = root / sha[:2] / sha
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        total += len(data)
        rows.append((f"document-{i}.pdf", "res.partner", 1 + i * 97, f"{sha[:2]}/{sha}", sha,
                     len(data)))
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO ir_attachment (name, res_model, res_id, store_fname, checksum, "
            "file_size, mimetype) VALUES (%s, %s, %s, %s, %s, %s, 'application/pdf')",
            [(n, m, r, f, c, s) for n, m, r, f, c, s in rows])
    return count, total


@dataclass(frozen=True)
class Fingerprint:
    rows: int
    checksum: str
    indexes: int
    secret: str
    uuid: str
    attachments: int


async def fingerprint(server: Server, database: str) -> Fingerprint:
    conn = await server.connect(database, application_name="bench-check")
    try:
        cur = await conn.execute(
            "SELECT count(*), md5(sum(hashtext(name || coalesce(email, '') || id))::text), "
            "(SELECT count(*) FROM pg_indexes WHERE tablename = 'res_partner'), "
            "(SELECT value FROM ir_config_parameter WHERE key = 'database.secret'), "
            "(SELECT value FROM ir_config_parameter WHERE key = 'database.uuid'), "
            "(SELECT count(*) FROM ir_attachment) FROM res_partner")
        row = await cur.fetchone()
        assert row is not None
        return Fingerprint(int(row[0]), str(row[1]), int(row[2]), str(row[3]), str(row[4]),
                           int(row[5]))
    finally:
        await conn.close()


async def create_empty(server: Server, name: str) -> None:
    conn = await server.connect("postgres")
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)}")
        await conn.execute(f"CREATE DATABASE {quote_ident(name)}")
    finally:
        await conn.close()


# ---------------------------------------------------------------- programs, by pid

@contextlib.asynccontextmanager
async def started(argv: list[str], **kwargs: Any) -> Any:
    """A subprocess that is ended (SIGTERM, then SIGKILL, by its pid) when the block is left
    before it has exited: Ctrl-C or an error never leaves one running."""
    proc = await asyncio.create_subprocess_exec(*argv, **kwargs)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


async def runbook_pipe(server: Server, src: str, dst: str) -> float:
    """The runbook's clone: `pg_dump -U odoo postgres | psql -U odoo postgres`, as two
    processes joined by a pipe (no shell). Its psql goes on past errors, as the runbook's
    does; an error line in its output is reported."""
    read, write = os.pipe()
    env = server.env()
    t0 = time.monotonic()
    try:
        async with started([program("pg_dump"), "-d", src], stdout=write, env=env) as dump, \
                started([program("psql"), "-X", "-d", dst], stdin=read,
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env) as psql:
            os.close(write)
            os.close(read)
            write = read = -1
            assert psql.stderr is not None
            err, _ = await asyncio.gather(psql.stderr.read(), dump.wait())
            await psql.wait()
    finally:
        for fd in (read, write):
            if fd >= 0:
                os.close(fd)
    seconds = time.monotonic() - t0
    if dump.returncode != 0 or psql.returncode != 0 or b"ERROR" in err:
        raise RuntimeError(f"the runbook's pipe failed (pg_dump {dump.returncode}, psql "
                           f"{psql.returncode}): {err.decode(errors='replace')[-400:]}")
    return seconds


async def uncompressed_pipe(server: Server, src: str, dst: str) -> float:
    """A reference, not a step: `pg_dump -Fc -Z0 | pg_restore -d DST` through an OS pipe,
    to tell the archive's compression from the rest of the dump clone's cost."""
    read, write = os.pipe()
    env = server.env()
    t0 = time.monotonic()
    try:
        async with started([program("pg_dump"), "-Fc", "-Z0", "-d", src], stdout=write,
                           env=env) as dump, \
                started([program("pg_restore"), "--no-owner", "--exit-on-error", "-d", dst],
                        stdin=read, stderr=subprocess.PIPE, env=env) as restore:
            os.close(write)
            os.close(read)
            write = read = -1
            assert restore.stderr is not None
            err, _ = await asyncio.gather(restore.stderr.read(), dump.wait())
            await restore.wait()
    finally:
        for fd in (read, write):
            if fd >= 0:
                os.close(fd)
    if dump.returncode != 0 or restore.returncode != 0:
        raise RuntimeError(f"pg_dump -Z0 | pg_restore failed: {err.decode(errors='replace')}")
    return time.monotonic() - t0


async def runbook_backup(server: Server, src: str, out: Path) -> tuple[float, float, int]:
    """`pg_dump -U odoo -Fc postgres > /backups/odoo_pre_deploy_<date>.dump`: its start and
    end (monotonic) and the dump's bytes."""
    with out.open("wb") as sink:
        t0 = time.monotonic()
        async with started([program("pg_dump"), "-Fc", "-d", src], stdout=sink,
                           env=server.env()) as dump:
            code = await dump.wait()
        t1 = time.monotonic()
        size = os.fstat(sink.fileno()).st_size
    if code != 0:
        raise RuntimeError(f"the runbook's pg_dump -Fc exited {code}")
    return t0, t1, size


async def cp_a(src: Path, dst: Path) -> float:
    t0 = time.monotonic()
    async with started(["cp", "-a", str(src), str(dst)]) as cp:
        code = await cp.wait()
    if code != 0:
        raise RuntimeError(f"cp -a exited {code}")
    return time.monotonic() - t0


# ---------------------------------------------------------------- the live colour's latency

@dataclass
class Sessions:
    """When sessions other than the probe's were seen on the live database (the dump's)."""
    first: float | None = None
    last: float | None = None
    names: set[str] = field(default_factory=set)


async def watch_sessions(server: Server, database: str, seen: Sessions,
                         stop: asyncio.Event) -> None:
    conn = await server.connect("postgres", application_name="bench-watch")
    try:
        while not stop.is_set():
            cur = await conn.execute(
                "SELECT application_name FROM pg_stat_activity WHERE datname = %s "
                "AND backend_type = 'client backend' AND application_name <> %s "
                "AND pid <> pg_backend_pid()", (database, PROBE_APP))
            names = [str(r[0]) for r in await cur.fetchall()]
            if names:
                now = time.monotonic()
                seen.first = seen.first if seen.first is not None else now
                seen.last = now
                seen.names.update(names)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)
    finally:
        await conn.close()


def probe(port: int, database: str, out: str, seconds: float, rows: int) -> int:
    """The live colour's queries, as a process of its own: PROBE_RATE rounds a second of
    a SELECT by the indexed name and an UPDATE of one row in a transaction; at SIGTERM (or
    after `seconds`) the samples go to `out` as JSON lines [end, kind, latency, found]."""
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    rng = random.Random(5)
    samples: list[tuple[float, str, float, int]] = []
    period = 1.0 / PROBE_RATE
    with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname=database,
                         application_name=PROBE_APP, autocommit=True) as conn:
        due = time.monotonic()
        deadline = due + seconds
        while not stop and time.monotonic() < deadline:
            g = rng.randint(1, rows)
            t0 = time.monotonic()
            found = conn.execute("SELECT id, email, phone FROM res_partner WHERE name = %s",
                                 (partner_name(g),)).fetchall()
            t1 = time.monotonic()
            with conn.transaction():
                conn.execute("UPDATE res_partner SET write_date = now(), write_uid = 2 "
                             "WHERE id = %s", (g,))
            t2 = time.monotonic()
            samples.append((t1, "select", t1 - t0, len(found)))
            samples.append((t2, "update", t2 - t1, 1))
            due += period
            if due < t2 - period:  # fell behind (a stall): no burst to catch up
                due = t2
            time.sleep(max(0.0, due - time.monotonic()))
    with open(out, "w") as sink:
        for s in samples:
            sink.write(json.dumps(s) + "\n")
    return 0


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))]


@dataclass
class Latency:
    name: str
    windows: dict[str, list[float]] = field(default_factory=dict)  # window -> seconds
    failed: dict[str, int] = field(default_factory=dict)


@dataclass
class LiveCost:
    windows: dict[str, tuple[float, float]]  # window name -> (start, end), monotonic
    latencies: list[Latency]
    dump_seen: str  # how the watchdog backup's pg_dump window was found
    not_found: int  # probe SELECTs that found no row (must be 0)


def split(samples: list[tuple[float, float, bool]], windows: dict[str, tuple[float, float]],
          name: str) -> Latency:
    result = Latency(name)
    for label, (start, end) in windows.items():
        inside = [s for s in samples if start <= s[0] <= end]
        result.windows[label] = [lat for _, lat, failed in inside if not failed]
        result.failed[label] = sum(1 for s in inside if s[2])
    return result


# ---------------------------------------------------------------- the run

@dataclass
class Row:
    what: str
    seconds: float | None
    detail: str = ""
    vs: str = ""
    goal: str = ""


@dataclass
class Report:
    source: Source
    rows: list[Row] = field(default_factory=list)
    live: LiveCost | None = None
    backup: Any = None  # the watchdog backup's BackupInfo, restored later
    runbook_dump: Path | None = None
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def have(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


async def live_backups(server: Server, port: int, fs: Path, work: Path, report: Report,
                       before: float) -> None:
    """Both backups under the live colour's load, the load measured before and during."""
    from watchdog.steps.backup import backup

    standin = StandinProcess("blue", work / "standin").start()
    load_out, probe_out = work / "load.jsonl", work / "probe.jsonl"
    windows: dict[str, tuple[float, float]] = {}
    seen, stop = Sessions(), asyncio.Event()
    watcher: asyncio.Task[None] | None = None
    try:
        async with started([sys.executable, "-m", "watchdog.lab.load", standin.url,
                            "--path", LOAD_PATH, "--concurrency", "2", "--delay", "0.1",
                            "--seconds", "1800", "--out", str(load_out)],
                           env={**os.environ, "PYTHONPATH": str(PROJECT)}
                           ) as load, \
                started([sys.executable, __file__, "--probe", str(port), SRC, str(probe_out),
                         str(report.source.rows)]) as prober:
            say(f"live colour: stand-in {standin.url} under load ({LOAD_PATH}, 2 clients, "
                f"100 ms apart) and {PROBE_RATE:g} query rounds/s on {SRC}; {before:g} s "
                "before the backups")
            await asyncio.sleep(1.0)  # both warm up
            t_before = time.monotonic()
            await asyncio.sleep(before)
            windows["before"] = (t_before, time.monotonic())
            watcher = asyncio.create_task(watch_sessions(server, SRC, seen, stop))
            say("backup (watchdog.steps.backup.backup) ...")
            t0 = time.monotonic()
            info = await backup(server, SRC, fs, work / "backups", site="odoo", color="blue",
                                keep=2, progress=lambda line: say(f"  {line}"))
            took = time.monotonic() - t0
            stop.set()
            await watcher
            if seen.first is not None and seen.last is not None and seen.last > seen.first:
                windows["during watchdog pg_dump"] = (seen.first, seen.last)
                dump_seen = (f"its pg_dump's session ({', '.join(sorted(seen.names))}) seen on "
                             f"{SRC} for {seen.last - seen.first:.1f} s")
            else:
                windows["during watchdog pg_dump"] = (t0, t0 + took)
                dump_seen = "no session of the dump seen (too short): the whole backup call"
            files = info.manifest.get("files", {})
            parts = ", ".join(f"{name} {mb(int(f['bytes']))}" for name, f in files.items())
            report.rows.append(Row("backup: watchdog (pg_dump -Fc, filestore tar, sha256, "
                                   "verify)", took,
                                   f"{mb(info.bytes)} ({parts}); verified: {info.verified}"))
            await asyncio.sleep(2.0)
            say("backup the runbook's way (pg_dump -Fc > file) ...")
            report.backup = info
            report.runbook_dump = work / "odoo_pre_deploy.dump"
            r0, r1, size = await runbook_backup(server, SRC, report.runbook_dump)
            windows["during runbook pg_dump"] = (r0, r1)
            report.rows.append(Row("backup: runbook phase 1 (pg_dump -Fc > file, no "
                                   "filestore)", r1 - r0, mb(size)))
            await asyncio.sleep(1.0)
            for proc in (load, prober):
                proc.terminate()
                await proc.wait()
    finally:
        stop.set()
        if watcher is not None and not watcher.done():
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        standin.stop()
    http = [(s.at, s.latency, s.failed) for s in read_samples(str(load_out))]
    raw = [json.loads(line) for line in probe_out.read_text().splitlines() if line.strip()]
    queries = {kind: [(at, lat, False) for at, k, lat, _ in raw if k == kind]
               for kind in ("select", "update")}
    report.live = LiveCost(windows, [
        split(http, windows, f"HTTP GET {LOAD_PATH} on the stand-in"),
        split(queries["select"], windows, "SELECT res_partner by name (index)"),
        split(queries["update"], windows, "UPDATE one res_partner row (a transaction)"),
    ], dump_seen, sum(1 for _, k, _, found in raw if k == "select" and found != 1))


async def clones(server: Server, fs: Path, work: Path, report: Report,
                 source: Fingerprint) -> dict[str, float]:
    """The template clone, the dump clone (a connection to the source held open), the
    runbook's pipe; each into a fresh database, each checked against the source."""
    from watchdog.steps.clone import clone

    took: dict[str, float] = {}
    filestores = work / "filestore"

    async def check(name: str) -> str:
        got = await fingerprint(server, name)
        if got.rows != source.rows or got.checksum != source.checksum:
            report.failures.append(f"{name}: res_partner differs from the source "
                                   f"({got.rows:,} rows against {source.rows:,})")
            return "rows DIFFER"
        problems = [what for what, ok in (
            ("indexes", got.indexes == source.indexes),
            ("database.secret", got.secret == source.secret),
            ("database.uuid", got.uuid == source.uuid),
            ("ir_attachment", got.attachments == source.attachments)) if not ok]
        if problems:
            report.failures.append(f"{name}: differs from the source in {', '.join(problems)}")
            return "DIFFERS in " + ", ".join(problems)
        return "rows, checksum, indexes, secret and uuid as the source"

    async def file_copy() -> None:
        """A reference, not a step: PostgreSQL 15's CREATE DATABASE defaults to STRATEGY
        WAL_LOG (every block through the WAL); FILE_COPY copies the files after a
        checkpoint (which, on a busy server, is an I/O burst of its own)."""
        conn = await server.connect("postgres")
        try:
            say("reference: CREATE DATABASE bench_fc TEMPLATE bench_live STRATEGY FILE_COPY")
            t0 = time.monotonic()
            await conn.execute(f"CREATE DATABASE bench_fc TEMPLATE {quote_ident(SRC)} "
                               "STRATEGY FILE_COPY")
            seconds = time.monotonic() - t0
        finally:
            await conn.close()
        report.rows.append(Row("reference: CREATE DATABASE ... TEMPLATE ... STRATEGY FILE_COPY "
                               "(no filestore, not a step)", seconds, await check("bench_fc")))

    for label, name, hold in (("template", "bench_tpl", False), ("dump", "bench_dump", True)):
        conn = await server.connect(SRC, application_name=HOLD_APP) if hold else None
        try:
            others = ("a connection to the source held open" if hold
                      else "nothing else connected to the source")
            say(f"clone into {name} ({others}) ...")
            t0 = time.monotonic()
            result = await clone(server, SRC, server, name, src_filestore=fs,
                                 dst_filestore=filestores / name,
                                 progress=lambda line: say(f"  {line}"))
            seconds = time.monotonic() - t0
        finally:
            if conn is not None:
                await conn.close()
        took[label] = seconds
        method = getattr(result, "method", "?")
        if method != label:
            report.failures.append(f"the clone into {name} took the {method} route, "
                                   f"{label} was expected")
        files = getattr(result, "files", "?")
        linked = getattr(result, "linked", None)
        how = {"template": "CREATE DATABASE ... TEMPLATE", "dump": "pg_dump -Fc | pg_restore"}
        report.rows.append(Row(
            f"clone by {label}: watchdog ({how.get(str(method), method)} + filestore)",
            seconds, f"method {method} ({getattr(result, 'why', '?')}); {files} files"
            f"{' hard-linked' if linked else ''}; " + await check(name)))
        if label == "template":
            await file_copy()
    await create_empty(server, "bench_pipe")
    say("clone the runbook's way: pg_dump bench_live | psql bench_pipe ...")
    took["pipe"] = await runbook_pipe(server, SRC, "bench_pipe")
    report.rows.append(Row("clone: runbook phase 1 (pg_dump | psql, no filestore) BASELINE",
                           took["pipe"], await check("bench_pipe")))
    await create_empty(server, "bench_z0")
    say("reference: pg_dump -Fc -Z0 | pg_restore into bench_z0 (an OS pipe) ...")
    z0 = await uncompressed_pipe(server, SRC, "bench_z0")
    report.rows.append(Row("reference: pg_dump -Fc -Z0 | pg_restore (OS pipe, not a step)", z0,
                           await check("bench_z0"),
                           f"{z0 / took['pipe']:.2f}x the pipe's"))
    return took


async def runbook_rollback(server: Server, dump: Path, database: str) -> float:
    """The runbook's rollback_database.sh: `psql -c "DROP DATABASE IF EXISTS ..."`, `psql -c
    "CREATE DATABASE ..."`, `pg_restore -d ... backup.dump` (its `docker cp` of the dump has
    no equivalent here; nor does it restore a filestore)."""
    env = server.env()
    t0 = time.monotonic()
    for argv in ([program("psql"), "-X", "-d", "postgres", "-c",
                  f"DROP DATABASE IF EXISTS {quote_ident(database)};"],
                 [program("psql"), "-X", "-d", "postgres", "-c",
                  f"CREATE DATABASE {quote_ident(database)};"],
                 [program("pg_restore"), "-d", database, str(dump)]):
        async with started(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           env=env) as proc:
            _, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"the runbook's rollback: {Path(argv[0]).name} exited "
                               f"{proc.returncode}: {err.decode(errors='replace')[-400:]}")
    return time.monotonic() - t0


async def restores(server: Server, work: Path, report: Report, source: Fingerprint) -> None:
    """The watchdog backup restored over the dump clone (bench_dump), the runbook's dump
    over the pipe's clone (bench_pipe): a colour's database rolled back, both ways."""
    from watchdog.steps.backup import restore

    say("restore (watchdog.steps.backup.restore) of the backup over bench_dump ...")
    t0 = time.monotonic()
    result = await restore(server, report.backup, "bench_dump", work / "filestore" / "bench_dump",
                           progress=lambda line: say(f"  {line}"))
    ours = time.monotonic() - t0
    got = await fingerprint(server, "bench_dump")
    ok = got.rows == source.rows and got.checksum == source.checksum
    if not ok:
        report.failures.append("the restored bench_dump differs from the source")
    report.rows.append(Row("restore: watchdog (pg_restore beside, filestore, swap in)", ours,
                           f"{result.files:,} files; "
                           + ("rows and checksum as the source" if ok else "DIFFERS")))
    assert report.runbook_dump is not None
    say("restore the runbook's way (rollback_database.sh) over bench_pipe ...")
    theirs = await runbook_rollback(server, report.runbook_dump, "bench_pipe")
    got = await fingerprint(server, "bench_pipe")
    ok = got.rows == source.rows and got.checksum == source.checksum
    if not ok:
        report.failures.append("the runbook's restored bench_pipe differs from the source")
    report.rows[-1].vs = (f"{theirs / ours:.2f}x faster" if ours <= theirs
                          else f"{ours / theirs:.2f}x slower")
    report.rows.append(Row("restore: runbook rollback_database.sh (no filestore) BASELINE",
                           theirs,
                           "rows and checksum as the source" if ok else "DIFFERS", "1.0x"))


async def bench(args: argparse.Namespace, pg: PostgresLab, work: Path) -> Report:
    server = Server.parse(f"host=127.0.0.1 port={pg.port} user=postgres")
    fs = work / "filestore" / SRC
    source = await generate(server, args.size_gb, fs, args.files)
    report = Report(source)
    say(f"generated {SRC}: {source.rows:,} res_partner rows, {source.indexes} indexes on it, "
        f"{mb(source.size)} (pg_database_size); filestore {source.files:,} files, "
        f"{mb(source.file_bytes)}; in {source.seconds:.0f} s")
    reference = await fingerprint(server, SRC)
    if have("watchdog.steps.backup"):
        await live_backups(server, pg.port, fs, work, report, args.before)
    else:
        report.rows.append(Row("backup: watchdog", None, "watchdog/steps/backup.py not built"))
    reference = await fingerprint(server, SRC)  # the probe's UPDATEs changed write dates only
    took: dict[str, float] = {}
    if have("watchdog.steps.clone"):
        took = await clones(server, fs, work, report, reference)
    else:
        report.rows.append(Row("clone: watchdog", None, "watchdog/steps/clone.py not built"))
        await create_empty(server, "bench_pipe")
        say("clone the runbook's way: pg_dump bench_live | psql bench_pipe ...")
        took["pipe"] = await runbook_pipe(server, SRC, "bench_pipe")
        got = await fingerprint(server, "bench_pipe")
        report.rows.append(Row("clone: runbook phase 1 (pg_dump | psql, no filestore) "
                               "BASELINE", took["pipe"],
                               f"{got.rows:,} rows, {got.indexes} indexes"))
    pipe = took["pipe"]
    for row in report.rows:
        if row.what.startswith("clone by template") and row.seconds:
            ratio = pipe / row.seconds
            row.vs = f"{ratio:.2f}x faster" if ratio < 10 else f"{ratio:.0f}x faster"
            row.goal = (f">= {GOAL_TEMPLATE:g}x faster: "
                        + ("PASS" if ratio >= GOAL_TEMPLATE else "FAIL"))
        elif row.what.startswith("clone by dump") and row.seconds:
            row.vs = (f"{pipe / row.seconds:.2f}x faster" if row.seconds <= pipe
                      else f"{row.seconds / pipe:.2f}x slower")
            row.goal = "no slower: " + ("PASS" if row.seconds <= pipe else "FAIL")
        elif row.what.startswith("clone: runbook"):
            row.vs = "1.0x"
        elif row.what.startswith("reference: CREATE DATABASE") and row.seconds:
            row.vs = f"{pipe / row.seconds:.2f}x faster"

    if report.backup is not None and report.runbook_dump is not None:
        await restores(server, work, report, reference)

    say("filestore: copy_filestore (hard links) and cp -a ...")
    links = work / "filestore" / "bench_links"
    t0 = time.monotonic()
    copied = copy_filestore(fs, links)
    linked_s = time.monotonic() - t0
    cp_s = await cp_a(fs, work / "filestore" / "bench_cp")
    same = list_files(links) == list_files(fs) == list_files(work / "filestore" / "bench_cp")
    if not same:
        report.failures.append("a filestore copy does not list the source's files")
    report.rows.append(Row("filestore: watchdog copy_filestore (hard links)", linked_s,
                           f"{copied.files:,} files, linked: {copied.linked}",
                           f"{cp_s / linked_s:.0f}x faster than cp -a",
                           f"< {GOAL_LINKS:g} s: " + ("PASS" if linked_s < GOAL_LINKS
                                                      else "FAIL")))
    report.rows.append(Row("filestore: cp -a (the runbook copies none)", cp_s,
                           f"{len(list_files(work / 'filestore' / 'bench_cp')):,} files, "
                           f"{mb(source.file_bytes)}"))
    return report


# ---------------------------------------------------------------- the output

def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1e6:.0f} GB RAM"
    return f"{os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), {model}{mem}"


def print_report(report: Report, pg_version: str, wall: float) -> None:
    src = report.source
    print()
    print(f"database {SRC}: {mb(src.size)} (pg_database_size), {src.rows:,} res_partner rows, "
          f"{src.indexes} indexes on it; filestore {src.files:,} files, {mb(src.file_bytes)}")
    print(f"PostgreSQL {pg_version}, lab cluster: fsync=off, synchronous_commit=off, "
          "full_page_writes=off: durability off for both sides equally; data in the page "
          "cache for all rows")
    print()
    widths = (max(len(r.what) for r in report.rows), 9, 20, 24)
    head = (f"| {'step':<{widths[0]}} | {'seconds':>{widths[1]}} | {'vs baseline':<{widths[2]}}"
            f" | {'goal':<{widths[3]}} | detail")
    print(head)
    print(f"|{'-' * (widths[0] + 2)}|{'-' * (widths[1] + 1)}:|{'-' * (widths[2] + 2)}|"
          f"{'-' * (widths[3] + 2)}|{'-' * 8}")
    for row in report.rows:
        secs = f"{row.seconds:.2f}" if row.seconds is not None else "n/a"
        print(f"| {row.what:<{widths[0]}} | {secs:>{widths[1]}} | {row.vs:<{widths[2]}} | "
              f"{row.goal:<{widths[3]}} | {row.detail}")
    live = report.live
    if live is not None:
        print()
        spans = "; ".join(f"{name} {end - start:.1f} s" for name, (start, end)
                          in live.windows.items())
        print(f"the backup's cost on the live colour (ms; windows: {spans}; {live.dump_seen})")
        print()
        labels = list(live.windows)
        cells = "".join(f" | {label + ' p50 / p95':>33}" for label in labels)
        print(f"| {'load':<44}{cells} | p95 during / before")
        print(f"|{'-' * 46}" + f"|{'-' * 34}:" * len(labels) + f"|{'-' * 20}")
        for lat in live.latencies:
            line = f"| {lat.name:<44}"
            for label in labels:
                values = lat.windows[label]
                pair = f"{quantile(values, 0.5) * 1000:.2f} / {quantile(values, 0.95) * 1000:.2f}"
                line += f" | {pair:>33}"
            before = quantile(lat.windows["before"], 0.95)
            ratios = ", ".join(f"{quantile(lat.windows[label], 0.95) / before:.1f}x"
                               for label in labels[1:]) if before else "n/a"
            failed = sum(lat.failed.values())
            counts = "/".join(str(len(lat.windows[label])) for label in labels)
            print(f"{line} | {ratios} (n {counts}{f', {failed} failed' if failed else ''})")
        if live.not_found:
            report.failures.append(f"{live.not_found} probe SELECTs found no partner")
    print()
    for note in report.notes:
        print(note)
    print(f"machine: {machine()}; total wall time {wall:.0f} s")
    for failure in report.failures:
        print(f"CHECK FAILED: {failure}")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        port, database, out, rows = sys.argv[2:6]
        return probe(int(port), database, out, 3600.0, int(rows))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=None,
                        help="generate at least this much database (default 1.0; --quick 0.1)")
    parser.add_argument("--files", type=int, default=None,
                        help="filestore files (default 2000; --quick 200)")
    parser.add_argument("--before", type=float, default=None,
                        help="seconds of load measured before the backups (default 10; "
                             "--quick 3)")
    parser.add_argument("--quick", action="store_true", help="a smoke run in under a minute")
    args = parser.parse_args()
    quick = {"size_gb": 0.1, "files": 200, "before": 3.0}
    full = {"size_gb": 1.0, "files": 2000, "before": 10.0}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.size_gb <= 0 or args.files < 1 or args.before <= 0:
        parser.error("--size-gb, --files and --before must be positive")
    wall = time.monotonic()
    signal.signal(signal.SIGTERM, _interrupted)
    work = Path(tempfile.mkdtemp(prefix="bench-database-"))
    pg = PostgresLab(work / "pg")
    try:
        say(f"starting PostgreSQL 15 (lab cluster in {pg.cluster}, port {pg.port})")
        pg.start()
        pg_version = pg.psql("SHOW server_version").strip()
        report = asyncio.run(bench(args, pg, work))
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        say(f"stopping PostgreSQL (pid {pg.pid}) and removing {work}")
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    print_report(report, pg_version, time.monotonic() - wall)
    return 1 if report.failures else 0


def _interrupted(*_: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
