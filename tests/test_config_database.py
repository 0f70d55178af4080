"""The `database:` and `prepare:` settings (DESIGN.md §12): a good one loads and `check` prints
its steps; a bad one is refused with file:line naming what is wrong, as the rest of the config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from watchdog.config import ConfigError, load

SITE = """\
sites:
  odoo:
    router: {{kind: haproxy, socket: /run/haproxy/admin.sock, backend: odoo}}
    colors:
      blue: {{server: odoo-blue, url: "http://127.0.0.1:8069"}}
      green: {{server: odoo-green, url: "http://127.0.0.1:9069"}}
    database:
      strategy: {strategy}
      dsn_file: pg.dsn
      names: {names}
{extra}    prepare:
{prepare}
"""

SEPARATE = "{blue: odoo_blue, green: odoo_green}"
SHARED = "{blue: odoo, green: odoo}"


def write(tmp_path: Path, prepare: str, *, strategy: str = "separate", names: str = SEPARATE,
          extra: str = "") -> Path:
    (tmp_path / "pg.dsn").write_text("host=127.0.0.1 port=5432 user=odoo password=s3cret\n")
    path = tmp_path / "watchdog.yml"
    path.write_text(SITE.format(strategy=strategy, names=names, extra=extra, prepare=prepare))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(path)
    return [str(p) for p in caught.value.problems]


def test_every_step_loads_in_order_and_check_prints_them(tmp_path: Path) -> None:
    path = write(tmp_path, "      - backup\n      - clone\n"
                 "      - migrate: {command: [odoo, -d, \"{{ database }}\", -u, all, "
                 "--stop-after-init], timeout: 10m}\n      - gate\n")
    site = load(path).config.sites["odoo"]
    assert site.steps == ("backup", "clone", "migrate", "gate") or list(site.steps) == [
        "backup", "clone", "migrate", "gate"]
    done = subprocess.run([sys.executable, "-m", "watchdog.cli", "check", "-c", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "prepare: backup -> clone -> migrate -> gate" in done.stdout
    assert "s3cret" not in done.stdout + done.stderr


def test_clone_is_refused_with_a_shared_database(tmp_path: Path) -> None:
    found = problems(write(tmp_path, "      - backup\n      - clone\n", strategy="shared",
                           names=SHARED))
    assert len(found) == 1
    assert "watchdog.yml:11: sites.odoo.prepare:" in found[0]
    assert "clone needs strategy separate" in found[0]


def test_migration_kind_is_refused_with_separate_databases(tmp_path: Path) -> None:
    found = problems(write(tmp_path, "      - gate\n", extra="      migration: breaking\n"))
    assert any("migration: only means something with strategy shared" in p for p in found)


def test_steps_out_of_order_twice_or_unknown_are_named(tmp_path: Path) -> None:
    assert any("order" in p for p in problems(write(tmp_path, "      - gate\n      - backup\n")))
    assert any("given twice" in p for p in problems(write(tmp_path,
                                                          "      - gate\n      - gate\n")))
    unknown = problems(write(tmp_path, "      - snapshot\n"))
    assert any("prepare[0]: input should be 'backup', 'clone', 'migrate' or 'gate' (got "
               "'snapshot')" in p for p in unknown), unknown


def test_unknown_key_in_database_names_its_line(tmp_path: Path) -> None:
    found = problems(write(tmp_path, "      - gate\n", extra="      dsn: postgres://x\n"))
    assert any(":11:" in p and "dsn" in p for p in found), found


def test_steps_without_database_settings_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "watchdog.yml"
    text = SITE.format(strategy="separate", names=SEPARATE, extra="", prepare="")
    path.write_text(text.split("    database:")[0] + "    prepare: [backup]\n")
    found = problems(path)
    assert any("backup needs the site's database: settings" in p for p in found), found
