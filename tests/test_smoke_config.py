"""`rollout.smoke` and `smoke_settings` in the config, and the smoke user's credentials file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from watchdog.config import ConfigError, load
from watchdog.secrets import SecretError
from watchdog.smoke import SmokeCredentials, load_credentials

SITE = """\
sites:
  odoo:
    router: {{kind: haproxy, socket: /run/haproxy/admin.sock, backend: odoo}}
    colors:
      blue: {{server: odoo-blue, url: http://127.0.0.1:8069}}
      green: {{server: odoo-green, url: http://127.0.0.1:9069}}
    rollout:
      smoke: {smoke}
{settings}"""


def problems(tmp_path: Path, smoke: str, settings: str = "") -> list[str]:
    path = tmp_path / "watchdog.yml"
    path.write_text(SITE.format(smoke=smoke, settings=settings))
    with pytest.raises(ConfigError) as err:
        load(path)
    return [str(p).replace(str(tmp_path) + "/", "") for p in err.value.problems]


def test_every_check_and_setting_loads(tmp_path: Path) -> None:
    path = tmp_path / "watchdog.yml"
    path.write_text(SITE.format(
        smoke="[health, login, rpc, workflow, latency, sessions, http]", settings="""\
    smoke_settings:
      credentials_file: smoke.json
      latency: {requests: 10, path: /web/health, p95: 250ms}
      sessions: require
      http:
        - {name: db_manager_hidden, path: /web/database/manager, status: [403, 404]}
        - {name: login_form, path: /web/login, body: oe_login_form}
"""))
    site = load(path).config.sites["odoo"]
    settings = site.smoke_settings
    assert site.rollout.smoke[-4:] == ["workflow", "latency", "sessions", "http"]
    assert (settings.latency.requests, settings.latency.p95) == (10, 0.25)
    assert settings.sessions == "require"
    assert [(h.name, h.status, h.body) for h in settings.http] == [
        ("db_manager_hidden", [403, 404], None), ("login_form", [200], "oe_login_form")]


def test_defaults(tmp_path: Path) -> None:
    path = tmp_path / "watchdog.yml"
    path.write_text(SITE.format(smoke="[health, latency]", settings=""))
    settings = load(path).config.sites["odoo"].smoke_settings
    assert (settings.latency.requests, settings.latency.path, settings.latency.p95) == \
        (20, "/web/login", 0.5)
    assert settings.sessions == "warn" and settings.http == []


@pytest.mark.parametrize("smoke", ["[health, workflow]", "[sessions]", "[workflow, sessions]"])
def test_checks_that_log_in_need_a_credentials_file(tmp_path: Path, smoke: str) -> None:
    [problem] = problems(tmp_path, smoke)
    # No smoke_settings at all: the site's line.
    assert problem.startswith("watchdog.yml:2: sites.odoo: rollout.smoke lists ")
    assert "set smoke_settings.credentials_file" in problem


def test_the_missing_credentials_point_at_smoke_settings_when_given(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, "[workflow]", "    smoke_settings: {sessions: warn}\n")
    assert problem.startswith("watchdog.yml:9: sites.odoo.smoke_settings: rollout.smoke lists "
                              "workflow, which logs in: set smoke_settings.credentials_file")


@pytest.mark.parametrize(("settings", "expected"), [
    ("    smoke_settings: {http: [{name: a, path: /x}, {name: a, path: /y}]}\n",
     "watchdog.yml:9: sites.odoo.smoke_settings.http: http check 'a' is named twice"),
    ("    smoke_settings: {http: [{name: a, path: x}]}\n",
     "watchdog.yml:9: sites.odoo.smoke_settings.http[0].path: path 'x': give a path"),
    ("    smoke_settings: {http: [{name: a, path: /x, status: [99]}]}\n",
     "watchdog.yml:9: sites.odoo.smoke_settings.http[0].status: status 99 is not an HTTP"),
    ("    smoke_settings: {http: [{name: 'a b', path: /x}]}\n",
     "watchdog.yml:9: sites.odoo.smoke_settings.http[0].name: http check name 'a b'"),
    ("    smoke_settings: {http: [{name: a, path: /x, stauts: [200]}]}\n",
     "watchdog.yml:9: sites.odoo.smoke_settings.http[0].stauts: unknown key"),
    ("    smoke_settings: {latency: {requests: 0}}\n",
     "watchdog.yml:9: sites.odoo.smoke_settings.latency.requests:"),
    ("    smoke_settings: {latency: {p95: 500}}\n",
     "watchdog.yml:9: sites.odoo.smoke_settings.latency.p95:"),
    ("    smoke_settings: {sessions: maybe}\n",
     "watchdog.yml:9: sites.odoo.smoke_settings.sessions:"),
    ("    smoke_settings: {credentials: smoke.json}\n",
     "watchdog.yml:9: sites.odoo.smoke_settings.credentials: unknown key"),
])
def test_bad_settings_fail_with_file_and_line(tmp_path: Path, settings: str,
                                              expected: str) -> None:
    found = problems(tmp_path, "[health]", settings)
    assert len(found) == 1 and found[0].startswith(expected), found


def test_http_listed_without_any_check_is_refused(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, "[http]")
    assert "rollout.smoke lists http but smoke_settings.http names no check" in problem


def test_an_unknown_check_is_refused(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, "[health, workfow]")
    assert problem.startswith("watchdog.yml:8: sites.odoo.rollout.smoke[1]:")


# ---------------------------------------------------------------------- the credentials file

SECRET = "hunter2-Very-Secret"


@pytest.mark.parametrize(("content", "message"), [
    (None, "No such file"),
    ("", "is empty"),
    ("db=odoo password=" + SECRET, "not JSON"),
    (json.dumps(["odoo", SECRET]), "give a JSON object"),
    (json.dumps({"login": "smoke", "password": SECRET}), "db is missing"),
    (json.dumps({"db": "odoo", "password": SECRET}), "login is missing"),
    (json.dumps({"db": "odoo", "login": "smoke"}), "give password or api_key"),
    (json.dumps({"db": "odoo", "login": "smoke", "pasword": SECRET}), "unknown key 'pasword'"),
    (json.dumps({"db": "odoo", "login": "smoke", "password": 12}), "password must be a"),
])
def test_a_bad_credentials_file_says_what_without_the_secret(
        tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "smoke.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SecretError) as err:
        load_credentials(Path("smoke.json"), tmp_path, "sites.odoo.smoke_settings.credentials_file")
    text = str(err.value)
    assert text.startswith(f"sites.odoo.smoke_settings.credentials_file {path}")
    assert message in text
    assert SECRET not in text


def test_credentials_are_read_relative_to_the_config_and_never_shown(tmp_path: Path) -> None:
    (tmp_path / "smoke.json").write_text(json.dumps(
        {"db": "odoo", "login": "smoke", "password": SECRET, "api_key": SECRET + "k"}))
    path = tmp_path / "watchdog.yml"
    path.write_text(SITE.format(smoke="[workflow]",
                                settings="    smoke_settings: {credentials_file: smoke.json}\n"))
    loaded = load(path)
    holder = SmokeCredentials()
    holder.configure("odoo", loaded.config.sites["odoo"], tmp_path)
    creds = holder.get("odoo")
    assert creds is not None and (creds.db, creds.login) == ("odoo", "smoke")
    assert creds.secrets == (SECRET, SECRET + "k")
    assert SECRET not in repr(creds) and SECRET not in str(creds)
    # A file gone bad on reload: configure raises and the old credentials stay.
    (tmp_path / "smoke.json").write_text("{")
    with pytest.raises(SecretError):
        holder.configure("odoo", loaded.config.sites["odoo"], tmp_path)
    assert holder.get("odoo") == creds
