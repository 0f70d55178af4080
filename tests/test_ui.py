"""The daemon's web page (/ui, /ui/rollouts/{id}; DESIGN.md §16, docs/ui.md) in a real headless
Chromium during a lab rollout: the daemon as a process on a LabStack (HAProxy, two stand-ins,
Prometheus), load through the proxy, Debian's `chromium` run as a program (`--dump-dom` after
the page's JS has run, `--screenshot`), no selenium.

The DOM shows the site, its phase, the split and every rule the API reports, and it changes
when the rollout moves to the next step; screenshots (desktop and phone width) are saved under
the test's tmp_path; the rollout page of the finished rollout holds every rule and every audit
event of it; neither the pages nor their assets name another host; GET /api/v1/rollouts/{id}
of an unknown id is a JSON 404.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import struct
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import post, site
from tests.polling import until
from watchdog.lab.load import LoadClient
from watchdog.lab.screenshot import QUIET as CHROMIUM_QUIET
from watchdog.lab.stack import LabStack

pytestmark = pytest.mark.lab

CHROMIUM = shutil.which("chromium")
STEPS = [{"weight": 10, "hold": "6s"}, {"weight": 50, "hold": "6s"}, {"weight": 100}]
FINAL = {"promoted", "rolled_back", "aborted"}
# Chromium talks to nobody but the page: no updater, sync, crash reporter or field trials.
QUIET = CHROMIUM_QUIET

needs_chromium = pytest.mark.skipif(CHROMIUM is None,
                                    reason="chromium is not installed (make deps installs it)")


# ---------------------------------------------------------------- Chromium as a program


def chromium(*args: str, timeout: float = 45) -> str:
    """Run headless Chromium with a throwaway profile; its stdout."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        done = subprocess.run([CHROMIUM, *QUIET, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def dump(url: str, budget_ms: int = 2500) -> Node:
    """The DOM after the page's JS has run (virtual time lets its first fetches finish)."""
    html = chromium(f"--virtual-time-budget={budget_ms}", "--dump-dom", url)
    assert "<body" in html, html[:500]
    return parse(html)


def screenshot(url: str, path: Path, width: int, height: int) -> Path:
    chromium("--virtual-time-budget=2500", f"--window-size={width},{height}",
             f"--screenshot={path}", url)
    return path


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# ---------------------------------------------------------------- the dumped DOM


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        parts = list(self.texts) + [c.text for c in self.children]
        return "".join(parts)

    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def all(self, tag: str | None = None, cls: str | None = None,
            **attrs: str) -> list[Node]:
        found: list[Node] = []
        for child in self.children:
            if ((tag is None or child.tag == tag) and (cls is None or cls in child.classes())
                    and all(child.attrs.get(k.replace("_", "-")) == v
                            for k, v in attrs.items())):
                found.append(child)
            found.extend(child.all(tag, cls, **attrs))
        return found

    def one(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> Node:
        found = self.all(tag, cls, **attrs)
        assert len(found) == 1, (tag, cls, attrs, len(found))
        return found[0]


VOID = {"meta", "link", "br", "img", "input", "hr", "area", "base", "col", "source", "wbr"}


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        # Text is kept in order: a child's text follows the parent's text before it.
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        # Kept as a child so that `text` reads in document order.
        self.stack[-1].children.append(Node("#text", {}, texts=[data]))


def parse(html: str) -> Node:
    builder = _Builder()
    builder.feed(html)
    return builder.root


def rendered(dom: Node) -> dict[str, Any]:
    """What the overview shows of site odoo."""
    card = dom.one("section", "site", data_site="odoo")
    return {
        "site": card.one(cls="site-name").text,
        "phase": card.one(cls="phase").attrs["data-phase"],
        "phase_text": card.one(cls="phase").text,
        "weights": {seg.attrs["data-color"]: int(seg.attrs["data-weight"])
                    for seg in card.all(cls="seg")},
        "step": card.one(cls="step").text if card.all(cls="step") else None,
        "rules": {(tr.attrs["data-rule"], tr.attrs["data-color"]):
                  (tr.one(cls="threshold").text, tr.one(cls="state").text)
                  for tr in card.all("tr") if "data-rule" in tr.attrs},
        "events": [li.attrs["data-kind"] for li in card.all("li") if "data-kind" in li.attrs],
        "link": card.one("a", "rollout-link").attrs["href"] if card.all(cls="rollout-link")
        else None,
        "warnings": [w.text for w in card.all(cls="warn")],
    }


# ---------------------------------------------------------------- the lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabStack]:
    stack = LabStack(tmp_path_factory.mktemp("ui-lab"), steps=STEPS, bake="2s")
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


async def wait_step(lab: LabStack, phase: str, step: int | None, timeout: float) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        view = await site(lab)
        ro = view["rollout"] or {}
        if view["phase"] == phase and (step is None or ro.get("step") == step):
            return view
        if view["phase"] in FINAL and view["phase"] != phase:
            raise AssertionError(f"the rollout ended {view['phase']}: {view['rules']}")
        return None

    return await until(probe, timeout, f"{phase} step {step}", every=0.1)


def rule_keys(view: dict[str, Any]) -> dict[tuple[str, str], tuple[str, str]]:
    return {(r["name"], r["color"]): (r["threshold"] or "\u2013", r["state"])
            for r in view["rules"]}


async def dump_at_step(lab: LabStack, url: str, step: int) -> tuple[Node, dict[str, Any]]:
    """A dump taken while the daemon reports `step` before and after it (else it is retried:
    a step that ended during the dump proves nothing)."""
    for _ in range(3):
        before = await site(lab)
        dom = await asyncio.to_thread(dump, url)
        after = await site(lab)
        if before["rollout"]["step"] == after["rollout"]["step"] == step \
                and before["phase"] == after["phase"] and before["rules"] and \
                rule_keys(before) == rule_keys(after):
            return dom, after
    raise AssertionError(f"step {step} did not hold still for a dump")


# ---------------------------------------------------------------- tests


@needs_chromium
async def test_the_page_shows_the_rollout_and_follows_its_steps(lab: LabStack,
                                                                tmp_path: Path) -> None:
    url = f"{lab.api_url}/ui"
    async with LoadClient(lab.proxy_url, "/web/login", concurrency=2, max_seconds=90) as load:
        await load.wait_count(10)
        rid = (await post(lab, "rollouts", {"to": "green", "version": "17.0"}))["rollout"]["id"]
        await wait_step(lab, "progressing", 1, timeout=15)
        dom, view = await dump_at_step(lab, url, 1)
        first = rendered(dom)
        assert first["site"] == "odoo"
        assert first["phase"] == first["phase_text"] == "progressing"
        assert first["weights"] == view["weights"] == {"blue": 90, "green": 10}
        assert first["step"] == "step 1/3 (10%)"
        assert first["rules"] == rule_keys(view)  # every rule, its threshold and state
        assert {name for name, _ in first["rules"]} >= {"error_rate", "health"}
        assert "started" in first["events"]
        assert first["link"] == f"/ui/rollouts/{rid}"
        assert first["warnings"] == []  # the router applies the split, the store writes
        # The value of each rule as the API gave it (numbers are shortened to 4 digits).
        card = dom.one("section", "site", data_site="odoo")
        assert all(tr.one(cls="value").text for tr in card.all("tr") if "data-rule" in tr.attrs)

        await wait_step(lab, "progressing", 2, timeout=15)
        dom, view = await dump_at_step(lab, url, 2)
        second = rendered(dom)
        assert second["weights"] == view["weights"] == {"blue": 50, "green": 50}
        assert second["step"] == "step 2/3 (50%)"
        assert second["rules"] == rule_keys(view)
        assert second != first
        shots = [await asyncio.to_thread(screenshot, url, tmp_path / "ui-desktop.png", 1200, 900),
                 await asyncio.to_thread(screenshot, url, tmp_path / "ui-phone.png", 390, 844)]
        for shot in shots:
            print(f"screenshot: {shot}")
        assert png_size(shots[0]) == (1200, 900)
        assert png_size(shots[1]) == (390, 844)
        assert all(s.stat().st_size > 10_000 for s in shots)
        await wait_step(lab, "promoted", None, timeout=25)


@needs_chromium
async def test_the_rollout_page_of_a_finished_rollout_has_every_rule_and_event(
        lab: LabStack, tmp_path: Path) -> None:
    view = await site(lab)
    if view["phase"] not in FINAL:  # run alone: a rollout of its own
        async with LoadClient(lab.proxy_url, "/web/login", concurrency=2, max_seconds=60) as load:
            await load.wait_count(10)
            to = "green" if view["live"] == "blue" else "blue"
            await post(lab, "rollouts", {"to": to, "version": "17.0"})
            view = await wait_step(lab, "promoted", None, timeout=40)
    rid = view["rollout"]["id"]
    status, _, body = await asyncio.to_thread(get, f"{lab.api_url}/api/v1/rollouts/{rid}")
    assert status == 200
    ro = json.loads(body)
    assert (ro["id"], ro["site"], ro["phase"], ro["outcome"]) == (rid, "odoo", "promoted",
                                                                  "promoted")
    assert ro["from"] != ro["to"] and ro["ticks"] and ro["events"]
    assert ro["ticks"][-1]["weights"][ro["to"]] == 100
    kinds = [e["kind"] for e in ro["events"]]
    assert kinds[0] == "started" and kinds[-1] == "promoted" and "step" in kinds
    rules = {(r["name"], r["color"]) for t in ro["ticks"] for r in t["rules"]}
    assert {name for name, _ in rules} >= {"error_rate", "health"}

    url = f"{lab.api_url}/ui/rollouts/{rid}"
    dom = await asyncio.to_thread(dump, url)
    assert dom.one(id="rollout-id").text == rid
    assert dom.one(cls="outcome").text == "promoted"
    charts = {(c.attrs["data-rule"], c.attrs["data-color"]): c
              for c in dom.all("section", data_chart="rule")}
    assert set(charts) == rules
    table = {(tr.attrs["data-rule"], tr.attrs["data-color"])
             for tr in dom.one(id="rules").all("tr") if "data-rule" in tr.attrs}
    assert table == rules
    for key, chart in charts.items():  # the value over time, against its threshold
        (graph,) = chart.all("svg")
        assert graph.all("polyline") or len(graph.all("circle")) == 1, key
        assert len(graph.all("circle")) == sum(
            1 for t in ro["ticks"] for r in t["rules"]
            if (r["name"], r["color"]) == key and r["value"] is not None)
        thresholds = ro["ticks"][-1]["rules"]
        if any(r["name"] == key[0] and r["threshold"] for r in thresholds):
            assert graph.all("line", cls="threshold"), key
        assert len(graph.all("line", cls="event")) == len(ro["events"])
    weights = dom.one("section", data_chart="weights")
    assert len(weights.one("svg").all("line", cls="event")) == len(ro["events"])
    rows = {tr.attrs["data-event-id"]: tr for tr in dom.one(id="events").all("tr")
            if "data-event-id" in tr.attrs}
    assert set(rows) == {str(e["id"]) for e in ro["events"]}
    for e in ro["events"]:
        row = rows[str(e["id"])]
        assert row.one(cls="kind").text == e["kind"]
        assert row.one(cls="message").text == e["message"]
    shot = await asyncio.to_thread(screenshot, url, tmp_path / "rollout.png", 1200, 1600)
    print(f"screenshot: {shot}")
    assert png_size(shot) == (1200, 1600)


URL = re.compile(r"""(?:https?:)?//[A-Za-z0-9.\-\[\]:]+""")


def test_the_pages_name_no_other_host(lab: LabStack) -> None:
    own = lab.api_url
    for path in ["/ui", "/ui/", "/ui/rollouts/x", "/ui/static/ui.js", "/ui/static/ui.css"]:
        status, headers, body = get(f"{own}{path}")
        assert status == 200, path
        text = body.decode()
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        # Any absolute or protocol-relative URL (not the JS's `//` comments: those follow
        # whitespace or start a line, an URL follows a quote, `(` or `=`).
        found = [m.group(0) for m in URL.finditer(text)
                 if text[max(0, m.start() - 1)] in "\"'(=`" and not m.group(0).startswith(own)]
        assert found == [], (path, found)
        if path.endswith((".js", ".css")):
            continue
        dom = parse(text)
        refs = [n.attrs[k] for n in dom.all() for k in ("src", "href") if k in n.attrs]
        assert refs and all(r.startswith("/") and not r.startswith("//") for r in refs), refs
    status, _, body = get(f"{own}/ui/static/..%2Fstore.py")
    assert status == 404 and "error" in json.loads(body)


def test_an_unknown_rollout_is_a_json_404(lab: LabStack) -> None:
    status, headers, body = get(f"{lab.api_url}/api/v1/rollouts/nosuchrollout")
    assert status == 404
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(body) == {"error": "no rollout 'nosuchrollout' (the store keeps the "
                                         "last 50 of each site)"}


def test_the_pages_are_package_data() -> None:
    """`pip install .` ships them: setuptools' package-data names watchdog/ui."""
    import tomllib

    root = Path(__file__).resolve().parent.parent
    data = tomllib.loads((root / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["watchdog"]
    ui = sorted(p.name for p in (root / "watchdog" / "ui").iterdir())
    assert ui == ["index.html", "rollout.html", "ui.css", "ui.js"]
    assert any(p.startswith("ui/") for p in patterns), patterns
