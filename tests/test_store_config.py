"""`store:` and `api.advertise` in the config (DESIGN.md §15): bad values are named with
file:line by `odoo-watchdog check`, and a daemon whose PostgreSQL store cannot be reached
refuses to start with a message that names the store but never its password."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from watchdog.lab.procs import free_port

BASE = """\
api:
  listen: 127.0.0.1:{port}
{api_extra}state_dir: {state}
{store}sites:
  odoo:
    router: {{kind: haproxy, socket: /run/haproxy/admin.sock, backend: odoo}}
    colors:
      blue: {{server: odoo-blue, url: http://127.0.0.1:8069}}
      green: {{server: odoo-green, url: http://127.0.0.1:9069}}
"""


def write(tmp_path: Path, store: str = "", api_extra: str = "") -> Path:
    path = tmp_path / "watchdog.yml"
    path.write_text(BASE.format(port=free_port(), state=tmp_path / "state", store=store,
                                api_extra=api_extra))
    return path


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "watchdog.cli", "check", "-c", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(("store", "words"), [
    ("store:\n  kind: postgresql\n", "kind postgresql needs dsn_file"),
    ("store:\n  kind: sqlite\n  dsn_file: dsn\n", "dsn_file is for kind postgresql"),
    ("store:\n  kind: postgresql\n  dsn_file: dsn\n  lease: 500ms\n",
     "lease must be between 1s and 5m"),
    ("store:\n  kind: mysql\n", "kind"),
    ("store:\n  kind: postgresql\n  dsn_file: dsn\n  instance: 'a b'\n", "instance 'a b'"),
    ("store:\n  kind: postgresql\n  dsn_file: dsn\n  leese: 10s\n", "leese"),
])
def test_a_bad_store_section_is_named_with_its_line(tmp_path: Path, store: str,
                                                     words: str) -> None:
    result = check(write(tmp_path, store))
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout + result.stderr
    assert words in out
    assert "watchdog.yml:4" in out or "watchdog.yml:5" in out or "watchdog.yml:6" in out \
        or "watchdog.yml:7" in out, out
    assert "Traceback" not in out


def test_a_postgresql_store_and_an_advertised_url_check_clean(tmp_path: Path) -> None:
    (tmp_path / "dsn").write_text("postgresql://watchdog:s3cret@127.0.0.1:1/wd\n")
    result = check(write(tmp_path, "store:\n  kind: postgresql\n  dsn_file: dsn\n"
                                   "  lease: 5s\n  instance: wd-a\n",
                         "  advertise: http://10.0.0.11:9721/\n"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_advertised_url_that_is_not_http_is_refused(tmp_path: Path) -> None:
    result = check(write(tmp_path, api_extra="  advertise: ftp://10.0.0.11\n"))
    assert result.returncode == 1
    assert "advertise" in result.stdout + result.stderr


def test_an_unreachable_store_stops_the_start_naming_it_without_the_password(
        tmp_path: Path) -> None:
    dead = free_port()
    (tmp_path / "dsn").write_text(
        f"postgresql://watchdog:s3cret-pw@127.0.0.1:{dead}/wd?connect_timeout=2\n")
    path = write(tmp_path, "store:\n  kind: postgresql\n  dsn_file: dsn\n")
    result = subprocess.run([sys.executable, "-m", "watchdog.cli", "run", "-c", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"127.0.0.1:{dead}/wd" in out, out
    assert "s3cret-pw" not in out
    assert "Traceback" not in out
