"""The Grafana dashboard, the compose stack and the configs it mounts are valid for the real
programs that read them (Prometheus 2.42, promtool, amtool, `odoo-watchdog check`), and they
use only the metric names and labels of docs/metrics.md."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from watchdog.accesslog_metrics import FAMILIES
from watchdog.durations import parse_duration
from watchdog.lab.prometheus import PrometheusLab
from watchdog.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "grafana/odoo-watchdog.json"
COMPOSE = ROOT / "docker-compose.yml"
PROM_DIR = ROOT / "deploy/prometheus"
ALERTMANAGER = ROOT / "deploy/alertmanager/alertmanager.yml"
COMPOSE_WATCHDOG = ROOT / "deploy/compose/watchdog.yml"

# Grafana variables replaced by concrete values before Prometheus sees an expression.
GRAFANA_VARS = {"site": "odoo", "__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
METRIC_RE = re.compile(r"\bodoo_watchdog_[a-zA-Z0-9_]+")
# metric{label=..., label=~...}: the label names of every selector on one of our metrics.
SELECTOR_RE = re.compile(r"\b(odoo_watchdog_[a-zA-Z0-9_]+)\s*\{([^}]*)\}")
MATCHER_RE = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


# ---------------------------------------------------------------------------------- helpers

def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    out: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in all_panels(dashboard) if p.get("type") != "row"]


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title / refId, PromQL) of every target."""
    return [(f"{p['title']} / {t['refId']}", t["expr"])
            for p in query_panels(load_dashboard()) for t in p["targets"]]


def substitute(expr: str) -> str:
    def repl(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in GRAFANA_VARS:
            raise AssertionError(f"unknown Grafana variable ${name} in {expr!r}")
        return GRAFANA_VARS[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, expr)


def exposed_metrics() -> dict[str, set[str]]:
    """Every series name the daemon exposes -> the label names it may carry.

    Built from the real Metrics(): counters are exposed as NAME_total, histograms as
    NAME_bucket (with `le`), NAME_count and NAME_sum. `_created` series are left out on purpose:
    a dashboard should not depend on them.
    """
    out: dict[str, set[str]] = {}
    for obj in vars(Metrics()).values():
        if not isinstance(obj, MetricWrapperBase):
            continue
        name, labels, kind = obj._name, set(obj._labelnames), obj._type
        if kind == "counter":
            out[f"{name}_total"] = labels
        elif kind == "histogram":
            out[f"{name}_bucket"] = labels | {"le"}
            out[f"{name}_count"] = labels
            out[f"{name}_sum"] = labels
        else:
            out[name] = labels
    # The access-log families come from a custom collector (watchdog/accesslog_metrics.py).
    for name, (kind, _, names) in FAMILIES.items():
        if kind == "counter":  # these names already end in _total
            out[name] = set(names)
        else:
            out[f"{name}_bucket"] = set(names) | {"le"}
            out[f"{name}_count"] = out[f"{name}_sum"] = set(names)
    assert FAMILIES and "odoo_watchdog_http_requests_total" in out
    return out


def prometheus_accepts(url: str, expr: str) -> tuple[int, str]:
    qs = urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query?{qs}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def local_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of the bind mounts of a service (short and long syntax)."""
    out: list[tuple[str, str]] = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            target = rest.split(":")[0]
        else:
            source, target = volume.get("source", ""), volume.get("target", "")
        if source.startswith((".", "/", "~")):
            out.append((source, target))
    return out


# ---------------------------------------------------------------------- 1. Grafana dashboard

def test_dashboard_structure() -> None:
    dash = load_dashboard()
    assert dash["schemaVersion"] >= 37
    assert dash["uid"] and dash["title"]
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert "${DS_PROMETHEUS}" in json.dumps(variables["datasource"]["current"])
    site = variables["site"]
    assert site["type"] == "query"
    assert site["definition"] == "label_values(odoo_watchdog_traffic_weight, site)"
    assert site["datasource"]["uid"] == "${datasource}"

    panels = all_panels(dash)
    assert query_panels(dash), "no panel with a query: the loop below would check nothing"
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    for panel in panels:
        if panel["type"] == "row":
            assert not panel.get("targets"), f"row {panel['title']!r} has targets"
            continue
        title = panel.get("title")
        assert title, f"panel {panel['id']} has no title"
        assert panel.get("datasource", {}).get("uid") == "${datasource}", title
        assert panel.get("targets"), f"panel {title!r} has no target"
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), f"panel {title!r} has an empty target"
            assert target.get("datasource", {}).get("uid") == "${datasource}", title
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), f"panel {title!r}: duplicate refIds"


def test_dashboard_has_the_panels_asked_for() -> None:
    exprs = "\n".join(expr for _, expr in dashboard_exprs())
    for needle in [
        "odoo_watchdog_traffic_weight", "odoo_watchdog_rollout_phase{", "== 1",
        "odoo_watchdog_rollout_step", "odoo_watchdog_rule_state", "odoo_watchdog_rule_value",
        "increase(odoo_watchdog_rollouts_total", "odoo_watchdog_rollbacks_total",
        "odoo_watchdog_router_operations_total",
        "histogram_quantile(0.99, sum by (le, router) "
        "(rate(odoo_watchdog_router_operation_seconds_bucket",
        "odoo_watchdog_router_drift_total", "odoo_watchdog_alerts_received_total",
        "odoo_watchdog_config_last_reload_successful", "odoo_watchdog_http_requests_total",
        'code=~"5.."', "odoo_watchdog_http_request_duration_seconds_bucket",
    ]:
        assert needle in exprs, f"no panel uses {needle!r}"
    # The rule-state panel maps the four states to their names.
    state = next(p for p in query_panels(load_dashboard())
                 if "odoo_watchdog_rule_state" in p["targets"][0]["expr"])
    mappings = state["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert {k: v["text"] for k, v in mappings.items()} == {
        "0": "ok", "1": "pending", "2": "firing", "3": "holding"}


def test_dashboard_uses_only_metrics_and_labels_the_daemon_exposes() -> None:
    exposed = exposed_metrics()
    assert "odoo_watchdog_rollouts_total" in exposed  # the helper itself works
    assert "odoo_watchdog_router_operation_seconds_bucket" in exposed
    text = json.dumps(load_dashboard()["templating"]) + "\n".join(
        expr for _, expr in dashboard_exprs())
    used = set(METRIC_RE.findall(text))
    assert used, "the dashboard uses no odoo_watchdog_* metric"
    unknown = sorted(used - set(exposed))
    assert not unknown, f"not exposed by watchdog/metrics.py: {unknown}"
    # Label matchers must name labels the metric has (router_operation_seconds has no site).
    checked = 0
    for where, expr in dashboard_exprs():
        for name, body in SELECTOR_RE.findall(expr):
            for label in MATCHER_RE.findall(body):
                assert label in exposed[name], f"{where}: {name} has no label {label!r}"
                checked += 1
    assert checked, "no label matcher found: SELECTOR_RE or MATCHER_RE matches nothing"


@pytest.fixture(scope="module")
def bare_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusLab]:
    """A real Prometheus 2.42 with no scrape jobs: only its PromQL parser is needed."""
    lab = PrometheusLab(tmp_path_factory.mktemp("prometheus-parse"), jobs=[])
    lab.start()
    try:
        yield lab
    finally:
        lab.stop()


@pytest.mark.lab
def test_every_dashboard_expression_parses_in_prometheus_242(
    bare_prometheus: PrometheusLab,
) -> None:
    # The check can fail: a broken expression is a 400 from this Prometheus.
    status, body = prometheus_accepts(bare_prometheus.url, "sum by (le (rate(x[1m]))")
    assert status == 400 and "bad_data" in body, (status, body)
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    failures = []
    for where, expr in exprs:
        concrete = substitute(expr)
        assert "$" not in concrete, concrete
        status, body = prometheus_accepts(bare_prometheus.url, concrete)
        if status != 200:
            failures.append(f"{where}: HTTP {status} {body} for {concrete!r}")
    assert not failures, "\n".join(failures)


# ------------------------------------------------------------------- 2. Prometheus configs

def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=False)


def test_prometheus_config_passes_promtool() -> None:
    # check config also checks the rule files it names (alerts.yml, relative to the config).
    result = run(promtool(), "check", "config", str(PROM_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr
    jobs = {j["job_name"]: j for j in yaml.safe_load(
        (PROM_DIR / "prometheus.yml").read_text())["scrape_configs"]}
    assert set(jobs) >= {"haproxy", "odoo-watchdog"}


def test_alert_rules_pass_promtool_and_carry_site_color_severity() -> None:
    result = run(promtool(), "check", "rules", str(PROM_DIR / "alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    rules = [r for g in yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"]
             for r in g["rules"]]
    candidate = [r for r in rules if "odoo_watchdog_http_requests_total" in r["expr"]
                 and '"5.."' in r["expr"]]
    assert candidate, "no alert on the 5xx share"
    for rule in candidate:
        # The daemon's webhook needs site and color to act (alerts.py), severity to match.
        assert rule["labels"]["severity"] == "critical"
        assert "by (site, color)" in rule["expr"]
    used = set(METRIC_RE.findall("\n".join(r["expr"] for r in rules)))
    assert not used - set(exposed_metrics()), used - set(exposed_metrics())


# --------------------------------------------------------------------------- 3. Alertmanager

def test_alertmanager_config_passes_amtool() -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip("amtool is not installed (Debian package prometheus-alertmanager)")
    result = run(amtool, "check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_alertmanager_webhook_reads_the_token_from_a_compose_secret() -> None:
    config = yaml.safe_load(ALERTMANAGER.read_text())
    hooks = [w for r in config["receivers"] for w in r.get("webhook_configs", [])]
    assert hooks
    secrets = set(compose()["services"]["alertmanager"]["secrets"])
    for hook in hooks:
        assert hook["url"].endswith("/api/v1/alertmanager")
        auth = hook["http_config"]["authorization"]
        assert "credentials" not in auth, "token inline in alertmanager.yml"
        path = auth["credentials_file"]
        assert path.startswith("/run/secrets/") and path.removeprefix("/run/secrets/") in secrets


# ---------------------------------------------------------------------- 4. the daemon config

def test_compose_daemon_config_passes_odoo_watchdog_check(tmp_path: Path) -> None:
    # `rule_files: [rules/odoo.yml]` is relative to the config file, and in the stack the config
    # is /etc/odoo-watchdog/watchdog.yml with ./rules mounted at /etc/odoo-watchdog/rules. In
    # the repo it lives in deploy/compose/, which has no rules/ next to it, so the check runs
    # on a copy placed beside a copy of rules/: the same layout as in the container.
    etc = tmp_path / "etc-odoo-watchdog"
    etc.mkdir()
    shutil.copy(COMPOSE_WATCHDOG, etc / "watchdog.yml")
    shutil.copytree(ROOT / "rules", etc / "rules")
    result = run(sys.executable, "-m", "watchdog.cli", "check", "-c", str(etc / "watchdog.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert "haproxy router" in result.stdout
    assert "matches no file" not in result.stderr  # the rules were really found
    shipped = len(yaml.safe_load((ROOT / "rules/odoo.yml").read_text())["rules"])
    assert f"{shipped} rules" in result.stdout


def test_compose_daemon_config_matches_the_compose_mounts() -> None:
    config = yaml.safe_load(COMPOSE_WATCHDOG.read_text())
    service = compose()["services"]["odoo-watchdog"]
    mounts = dict(local_mounts(service))
    config_target = Path(mounts["./deploy/compose/watchdog.yml"])
    assert config_target == Path("/etc/odoo-watchdog/watchdog.yml")  # the ENTRYPOINT's -c
    assert config["rule_files"] == ["rules/odoo.yml"]
    assert Path(mounts["./rules"]) == config_target.parent / "rules"
    token = config["api"]["token_file"]
    assert token.startswith("/run/secrets/")
    assert token.removeprefix("/run/secrets/") in service["secrets"]
    # The socket and the state file are on volumes shared with the haproxy service.
    router = config["sites"]["odoo"]["router"]
    named = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]
             if not v.startswith((".", "/"))}
    haproxy = {v.split(":")[1]: v.split(":")[0]
               for v in compose()["services"]["haproxy"]["volumes"] if not v.startswith(".")}
    for path in (router["socket"], router["state_file"]):
        directory = str(Path(path).parent)
        assert named.get(directory) and named.get(directory) == haproxy.get(directory), path
    haproxy_cfg = (ROOT / "deploy/compose/haproxy.cfg").read_text()
    assert f"stats socket {router['socket']} " in haproxy_cfg
    assert f"server-state-file {router['state_file']}" in haproxy_cfg
    assert set(config["sites"]["odoo"]["colors"]) == {"blue", "green"}
    for color in config["sites"]["odoo"]["colors"].values():
        assert f"server {color['server']} " in haproxy_cfg


# ----------------------------------------------------------------------- 5. docker-compose

def test_compose_odoo_services_have_a_health_check_and_a_dated_image() -> None:
    """The official image has no HEALTHCHECK (ODOO.md): the deploy step waits for docker's
    health, so the compose file gives one on /web/health, with a start period; and a moving
    tag (odoo:17.0, rebuilt nightly) would make a rollback land on another build."""
    services = compose()["services"]
    for name in ("odoo-blue", "odoo-green"):
        check = services[name]["healthcheck"]
        assert "http://localhost:8069/web/health" in check["test"], name
        assert parse_duration(check["start_period"]) >= 60, name
        assert re.fullmatch(r"odoo:\d+\.0-\d{8}", services[name]["image"]), name


def test_compose_file_is_sound() -> None:
    data = compose()
    services = data["services"]
    assert set(services) >= {"db", "odoo-blue", "odoo-green", "haproxy", "prometheus",
                             "alertmanager", "grafana", "odoo-watchdog"}
    for name, service in services.items():
        assert not service.get("privileged"), f"{name} is privileged"
        assert service.get("network_mode") != "host", f"{name} uses the host network"
        for source, _ in local_mounts(service):
            assert (ROOT / source).exists(), f"{name} mounts {source}, missing from the repo"
        build = service.get("build")
        if build is not None:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get(
                "dockerfile", "Dockerfile")
            assert (context / dockerfile).is_file(), f"{name}: no {context / dockerfile}"
        for secret in service.get("secrets", []):
            secret_name = secret if isinstance(secret, str) else secret["source"]
            assert secret_name in data["secrets"], f"{name}: undeclared secret {secret_name}"
        environment = service.get("environment", {})
        assert isinstance(environment, dict), f"{name}: use the mapping form of environment"
        for key in environment:
            if re.search(r"PASSWORD|TOKEN|SECRET", key):
                assert key.endswith("_FILE"), f"{name}: {key} is a secret given inline"
    assert data["secrets"]
    for name, secret in data["secrets"].items():
        assert set(secret) == {"file"}, f"secret {name} is not a file: {secret}"
        assert secret["file"].startswith("./secrets/"), secret
    # the daemon's image, as asked: non-root, pip install ., the fixed entrypoint
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM python:3.11-slim" in dockerfile
    assert "pip install ." in dockerfile
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
    assert users and users[-1] not in {"root", "0"}
    assert ('ENTRYPOINT ["odoo-watchdog", "run", "-c", "/etc/odoo-watchdog/watchdog.yml"]'
            in dockerfile)


def test_every_compose_service_is_commented() -> None:
    lines = COMPOSE.read_text().splitlines()
    services = compose()["services"]
    assert services
    for name in services:
        index = lines.index(f"  {name}:")
        assert lines[index - 1].strip().startswith("#"), f"service {name} has no comment"


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus() -> None:
    prov = ROOT / "grafana/provisioning"
    sources = yaml.safe_load((prov / "datasources.yml").read_text())["datasources"]
    assert [(s["type"], s["url"]) for s in sources] == [("prometheus", "http://prometheus:9090")]
    providers = yaml.safe_load((prov / "dashboards.yml").read_text())["providers"]
    folder = providers[0]["options"]["path"]
    mounts = dict(local_mounts(compose()["services"]["grafana"]))
    assert str(Path(mounts["./grafana/odoo-watchdog.json"]).parent) == folder
    assert mounts["./grafana/provisioning/datasources.yml"].startswith(
        "/etc/grafana/provisioning/datasources/")
    assert mounts["./grafana/provisioning/dashboards.yml"].startswith(
        "/etc/grafana/provisioning/dashboards/")


def test_compose_haproxy_cfg_is_valid_for_haproxy_26() -> None:
    result = subprocess.run(["haproxy", "-c", "-f", str(ROOT / "deploy/compose/haproxy.cfg")],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_daemon_shares_haproxys_network_so_access_logs_stay_on_loopback() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["odoo-watchdog"]["network_mode"] == "service:haproxy"
    assert "log 127.0.0.1:5140 " in (ROOT / "deploy/compose/haproxy.cfg").read_text()
    config = yaml.safe_load((ROOT / "deploy/compose/watchdog.yml").read_text())
    assert config["access_log"]["listen"] == "127.0.0.1:5140"
