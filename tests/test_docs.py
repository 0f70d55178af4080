"""Every YAML example in docs/*.md and README.md is checked by `odoo-watchdog check`.

A ```yaml block must be preceded (on the line before the fence, blank lines allowed) by a marker
that says what it is; a block without one fails, so no example escapes checking:

- `<!-- check: config -->`: a whole daemon config. It is written as `watchdog.yml` next to a
  copy of the shipped `rules/`, so `rule_files: [rules/odoo.yml]` finds real rules.
- `<!-- check: rules -->`: a rule file. It is written as `rules/example.yml` and named by
  `MINIMAL_CONFIG` (one site `odoo`, whose colours have containers, so logs rules load).
- `<!-- check: fragment -->`: some top-level keys of a config (`sites:`, `notify:` ...). Each
  replaces the same key of `MINIMAL_CONFIG` (a shallow merge), and the result is checked.
- `<!-- check: yaml -->`: YAML for another program (Alertmanager, Prometheus); it must parse.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
KINDS = ("config", "rules", "fragment", "yaml")
MIN_BLOCKS = 11

MINIMAL_CONFIG = {
    "api": {"listen": "127.0.0.1:9721"},
    "state_dir": "state",
    "rule_files": ["rules/odoo.yml"],
    "access_log": {"listen": "127.0.0.1:5140"},  # for the examples of source: traffic
    "sites": {
        "odoo": {
            "router": {"kind": "haproxy", "socket": "/run/haproxy/admin.sock",
                       "backend": "odoo"},
            "colors": {
                "blue": {"server": "odoo-blue", "url": "http://127.0.0.1:8069",
                         "container": "odoo-blue"},
                "green": {"server": "odoo-green", "url": "http://127.0.0.1:9069",
                          "container": "odoo-green"},
            },
        },
    },
}

_FENCE = re.compile(r"^```yaml[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_MARKER = re.compile(r"<!--\s*check:\s*(\S+?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    file: Path
    line: int
    kind: str | None  # None: no marker before the block
    text: str

    @property
    def id(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"


def blocks_of(path: Path) -> list[Block]:
    text = path.read_text()
    out = []
    for match in _FENCE.finditer(text):
        before = text[:match.start()].rstrip("\n").splitlines()
        previous = before[-1].strip() if before else ""
        marker = _MARKER.search(previous)
        line = len(before) + 2  # 1-based line of the first line inside the fence
        out.append(Block(path, line, marker.group(1) if marker else None, match.group(1)))
    return out


def documents() -> list[Path]:
    return [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]


BLOCKS = [block for doc in documents() for block in blocks_of(doc)]


def run_check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "watchdog.cli", "check", "-c", str(config)],
        cwd=config.parent, capture_output=True, text=True, timeout=60, check=False,
    )


def dump(data: object) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def test_the_docs_have_examples_and_every_block_is_marked() -> None:
    assert (DOCS / "README.md").is_file()
    assert len(BLOCKS) >= MIN_BLOCKS, [b.id for b in BLOCKS]
    unmarked = [b.id for b in BLOCKS if b.kind is None]
    assert not unmarked, f"```yaml blocks without a <!-- check: ... --> marker: {unmarked}"
    unknown = [(b.id, b.kind) for b in BLOCKS if b.kind not in (None, *KINDS)]
    assert not unknown, f"unknown check kinds (known: {', '.join(KINDS)}): {unknown}"
    kinds = {b.kind for b in BLOCKS}
    assert {"config", "rules", "fragment"} <= kinds


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind in KINDS], ids=lambda b: b.id)
def test_yaml_example_is_valid(block: Block, tmp_path: Path) -> None:
    try:
        data = yaml.safe_load(block.text)
    except yaml.YAMLError as exc:
        pytest.fail(f"{block.id}: not YAML: {exc}")
    if block.kind == "yaml":
        assert data is not None, f"{block.id}: empty block"
        return
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    config = tmp_path / "watchdog.yml"
    if block.kind == "config":
        config.write_text(block.text)
    elif block.kind == "rules":
        shutil.rmtree(tmp_path / "rules")
        (tmp_path / "rules").mkdir()
        (tmp_path / "rules" / "odoo.yml").write_text(block.text)  # the file the config names
        config.write_text(dump(MINIMAL_CONFIG))
    else:
        assert isinstance(data, dict), f"{block.id}: a fragment is a mapping of top-level keys"
        config.write_text(dump({**MINIMAL_CONFIG, **data}))
    result = run_check(config)
    shown = f"{block.id} ({block.kind}):\n{config.read_text()}\n{result.stdout}{result.stderr}"
    assert result.returncode == 0, shown
    assert "SUCCESS" in result.stdout, shown
    assert "matches no file" not in result.stderr, shown
    if block.kind == "rules":
        count = len(data["rules"])
        assert f"  {count} rules from 1 file" in result.stdout, shown


def test_the_checker_refuses_a_broken_example(tmp_path: Path) -> None:
    """The harness itself: a fragment with a typo must fail, or the test above proves nothing."""
    sites = {"odoo": {**MINIMAL_CONFIG["sites"]["odoo"], "rollout": {"intervall": "30s"}}}  # type: ignore[dict-item]
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    config = tmp_path / "watchdog.yml"
    config.write_text(dump({**MINIMAL_CONFIG, "sites": sites}))
    result = run_check(config)
    assert result.returncode == 1
    assert "intervall" in result.stderr


def test_links_between_pages_resolve() -> None:
    """Relative links in docs/ and the README name files that exist (architecture.md is
    written by another change, so it may be missing for now)."""
    missing = []
    for doc in documents():
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            path = (doc.parent / target).resolve()
            if not path.exists() and path.name != "architecture.md":
                missing.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not missing
