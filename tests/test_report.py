"""`odoo-watchdog report ROLLOUT -o FILE.html|FILE.png` (DESIGN.md §16, docs/report.md).

Lab tests: a rollout through the real daemon (a LabStack: HAProxy, two stand-ins, Prometheus),
one promoted and one rolled back by an injected fault; then the report as a subprocess. The
HTML holds every rule and every event of the API's JSON, names no other file or host, and in a
real headless Chromium (Debian's `chromium`, from a file:// URL) draws one chart per rule; the
PNG is a PNG of a sensible size. Without a daemon: an unknown id gives the API's 404 message,
an unreachable daemon one line, a PNG without matplotlib one line naming the extra (exit 2), and
a rollout whose messages hold `</script>` and URLs survives the inlining.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import post, site
from tests.test_ui import (
    CHROMIUM,
    FINAL,
    URL,
    Node,
    dump,
    get,
    needs_chromium,
    parse,
    png_size,
    wait_step,
)
from watchdog.lab.load import LoadClient
from watchdog.lab.procs import free_port
from watchdog.lab.stack import LabStack
from watchdog.lab.standin import clear_faults, set_faults
from watchdog.report import MISSING_MATPLOTLIB, render_html

STEPS = [{"weight": 10, "hold": "3s"}, {"weight": 50, "hold": "3s"}, {"weight": 100}]


def report(*args: str, pre: str = "") -> subprocess.CompletedProcess[str]:
    """`odoo-watchdog report ARGS` in a fresh interpreter (`pre`: Python run before main)."""
    code = f"{pre}\nimport sys\nfrom watchdog.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, "report", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def no_reference(text: str) -> None:
    """No http(s):// at all, no protocol-relative URL, and no src/href but in-page anchors."""
    assert "http://" not in text and "https://" not in text
    found = [m.group(0) for m in URL.finditer(text) if text[max(0, m.start() - 1)] in "\"'(=`"]
    assert found == []
    dom = parse(text)
    refs = [n.attrs[k] for n in dom.all() for k in ("src", "href") if k in n.attrs]
    assert refs == [], refs
    assert "url(" not in text.lower() and "@import" not in text.lower()


def rules_of(ro: dict[str, Any]) -> set[tuple[str, str]]:
    return {(r["name"], r["color"]) for t in ro["ticks"] for r in t["rules"]}


def check_drawn(dom: Node, ro: dict[str, Any]) -> None:
    """What the page draws from the file: the same as /ui/rollouts/{id} from the API."""
    assert dom.one(id="rollout-id").text == ro["id"]
    assert dom.one(cls="outcome").text == (ro["outcome"] or "running")
    charts = {(c.attrs["data-rule"], c.attrs["data-color"]): c
              for c in dom.all("section", data_chart="rule")}
    assert set(charts) == rules_of(ro)  # one chart per rule
    for key, chart in charts.items():
        (graph,) = chart.all("svg")
        assert len(graph.all("circle")) == sum(
            1 for t in ro["ticks"] for r in t["rules"]
            if (r["name"], r["color"]) == key and r["value"] is not None), key
        assert len(graph.all("line", cls="event")) == len(ro["events"]), key
    weights = dom.one("section", data_chart="weights").one("svg")
    assert weights.all("polyline") and len(weights.all("line", cls="event")) == len(ro["events"])
    rows = {tr.attrs["data-event-id"]: tr for tr in dom.one(id="events").all("tr")
            if "data-event-id" in tr.attrs}
    assert set(rows) == {str(e["id"]) for e in ro["events"]}
    for e in ro["events"]:
        assert rows[str(e["id"])].one(cls="kind").text == e["kind"]
        assert rows[str(e["id"])].one(cls="message").text == e["message"]


def check_html(path: Path, ro: dict[str, Any]) -> Node:
    text = path.read_text()
    no_reference(text)
    # The data as the API gave it, inlined once.
    (data,) = parse(text).all("script", id="rollout-data")
    assert json.loads(data.text) == ro
    if CHROMIUM is not None:
        dom = dump(path.resolve().as_uri(), budget_ms=1500)
        check_drawn(dom, ro)
        return dom
    return parse(text)


def check_png(path: Path, ro: dict[str, Any]) -> None:
    width, height = png_size(path)
    panels = 1 + len(rules_of(ro))
    assert width == 1100 and 150 * panels < height < 300 * panels + 200, (width, height)
    assert path.stat().st_size > 20_000


# ---------------------------------------------------------------- the lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Any:
    stack = LabStack(tmp_path_factory.mktemp("report-lab"), steps=STEPS, bake="2s",
                     health_for="60s")
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def api_rollout(lab: LabStack, rid: str) -> dict[str, Any]:
    status, _, body = get(f"{lab.api_url}/api/v1/rollouts/{rid}")
    assert status == 200, body
    ro: dict[str, Any] = json.loads(body)
    return ro


async def finished(lab: LabStack, final: str, fault: bool) -> dict[str, Any]:
    view = await site(lab)
    assert view["phase"] in FINAL | {"idle"}, view["phase"]
    to = "green" if view["live"] == "blue" else "blue"
    standin = lab.standin(to)
    async with LoadClient(lab.proxy_url, "/web/login", concurrency=2, max_seconds=50) as load:
        await load.wait_count(10)
        rid = (await post(lab, "rollouts", {"to": to, "version": "17.0"}))["rollout"]["id"]
        if fault:
            await wait_step(lab, "progressing", 1, timeout=15)
            await asyncio.to_thread(set_faults, standin.url, error_rate=0.5)
        try:
            view = await wait_step(lab, final, None, timeout=30)
        finally:
            if fault:
                await asyncio.to_thread(clear_faults, standin.url)
    assert view["rollout"]["id"] == rid
    await asyncio.sleep(1.5)  # the tick after the end is written too
    return api_rollout(lab, rid)


@pytest.mark.lab
@needs_chromium
async def test_report_of_a_promoted_rollout_html_and_png(lab: LabStack, tmp_path: Path) -> None:
    ro = await finished(lab, "promoted", fault=False)
    assert ro["outcome"] == "promoted" and rules_of(ro) and ro["events"]
    html = tmp_path / "promoted.html"
    done = report(ro["id"], "--url", lab.api_url, "-o", str(html))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{html}: rollout {ro['id']} (promoted)")
    assert api_rollout(lab, ro["id"]) == ro  # a finished rollout does not change any more
    check_html(html, ro)
    png = tmp_path / "promoted.png"
    done = report(ro["id"], "-c", str(lab.config_path), "-o", str(png))  # the API from -c
    assert done.returncode == 0, done.stderr
    check_png(png, ro)
    print(f"report: {html} {png}")


@pytest.mark.lab
@needs_chromium
async def test_report_of_a_rolled_back_rollout_shows_the_firing_rule(
        lab: LabStack, tmp_path: Path) -> None:
    ro = await finished(lab, "rolled_back", fault=True)
    kinds = [e["kind"] for e in ro["events"]]
    assert "rolling_back" in kinds and kinds[-1] == "rolled_back"
    html = tmp_path / "rolled-back.html"
    done = report(ro["id"], "--url", lab.api_url, "-o", str(html))
    assert done.returncode == 0, done.stderr
    dom = check_html(html, ro)
    fired = next(e for e in ro["events"] if e["kind"] == "rolling_back")
    chart = dom.one("section", data_chart="rule", data_rule=fired["rule"], data_color=ro["to"])
    assert chart.one("svg").all("circle", cls="pt-firing")  # the tick that fired, in red
    assert chart.all(cls="state-firing")
    png = tmp_path / "rolled-back.png"
    done = report(ro["id"], "--url", lab.api_url, "-o", str(png))
    assert done.returncode == 0, done.stderr
    check_png(png, ro)


@pytest.mark.lab
def test_an_unknown_rollout_gives_the_apis_message(lab: LabStack, tmp_path: Path) -> None:
    out = tmp_path / "x.html"
    done = report("nosuchrollout", "--url", lab.api_url, "-o", str(out))
    assert done.returncode == 1
    assert done.stderr == ("error: no rollout 'nosuchrollout' (the store keeps the last 50 of "
                           "each site)\n")
    assert not out.exists()


# ---------------------------------------------------------------- no daemon


def test_an_unreachable_daemon_is_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = report("abc", "--url", url, "-o", str(tmp_path / "x.html"))
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: cannot reach the daemon at {url}: ")
    assert done.stderr.count("\n") == 1


def test_a_png_without_matplotlib_names_the_extra(tmp_path: Path) -> None:
    done = report("abc", "--url", "http://127.0.0.1:1", "-o", str(tmp_path / "x.png"),
                  pre="import sys; sys.modules['matplotlib'] = None")
    assert done.returncode == 2
    assert done.stderr == f"error: {MISSING_MATPLOTLIB}\n"
    assert "pip install 'odoo-watchdog[report]'" in done.stderr


def test_an_unknown_format_is_a_usage_error(tmp_path: Path) -> None:
    done = report("abc", "--url", "http://127.0.0.1:1", "-o", str(tmp_path / "x.pdf"))
    assert done.returncode == 2
    assert done.stderr == f"error: {tmp_path / 'x.pdf'}: the report is FILE.html or FILE.png\n"


def synthetic() -> dict[str, Any]:
    t0 = 1764770668.0
    ticks = [{"at": t0 + i, "weights": {"blue": 100 - w, "green": w},
              "rules": [{"name": "error_rate", "color": "green", "value": v, "threshold": "<= 0.05",
                         "state": s, "outcome": "breach" if s != "ok" else "ok"},
                        {"name": "health", "color": "green", "value": None, "threshold": ">= 1",
                         "state": "ok", "outcome": "no_data"}]}
             for i, (w, v, s) in enumerate([(10, 0.0, "ok"), (10, 0.2, "pending"),
                                            (10, 0.3, "firing"), (0, 0.0, "ok")])]
    events = [{"id": i + 1, "at": t0 + i * 1.5, "site": "odoo", "kind": kind, "phase_from": "x",
               "phase_to": "y", "weights": {"blue": 100, "green": 0}, "rule": None,
               "value": None, "threshold": None, "actor": "root@vm", "message": message}
              for i, (kind, message) in enumerate([
                  ("started", "rollout </script><script>alert(1)</script> & <b>"),
                  ("rolling_back", "notify https://example.invalid/hook failed; //cdn.x/y"),
                  ("rolled_back", "back on blue")])]
    return {"id": "r1", "site": "odoo", "from": "blue", "to": "green", "version": "17.0",
            "strategy": "canary", "phase": "rolled_back", "outcome": "rolled_back",
            "reason": "error_rate fired", "step": 1, "steps": 3, "step_label": "10%",
            "started_at": t0, "finished_at": t0 + 3, "ticks": ticks, "ticks_recorded": 4,
            "ticks_kept": 5000, "events": events}


def test_messages_with_markup_and_urls_survive_the_inlining(tmp_path: Path) -> None:
    ro = synthetic()
    path = tmp_path / "r1.html"
    path.write_text(render_html(ro))
    check_html(path, ro)  # the JSON round-trips, no reference, and Chromium draws it
    text = path.read_text()
    assert "alert(1)" in text and "<script>alert" not in text
    assert text.count("</script>") == 2  # the data's and the code's


def test_a_png_of_a_synthetic_rollout(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from watchdog.report import write_report

    ro = synthetic()
    write_report(ro, tmp_path / "r1.png")
    check_png(tmp_path / "r1.png", ro)
    assert not list(tmp_path.glob("*.tmp"))
