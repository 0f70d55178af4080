"""YAML documents that remember where each value came from, so every error names `file:line`.

The config and rule files are parsed once into plain Python data for validation, and once into
a map from each value's path (`("sites", "odoo", "rollout", "steps", 2)`) to its line. A
validation error's location is walked down that map to the deepest line that exists: the
offending key when there is one, the enclosing mapping when a key is missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

Path_ = tuple[str | int, ...]


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong in one file, printed like promtool: `file:line: message`."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class ConfigError(Exception):
    """Raised with every problem found in a file (or a set of files), not just the first."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass
class Document:
    file: str
    data: Any
    lines: dict[Path_, int]

    def line_of(self, path: Sequence[object]) -> int:
        """Line of the deepest prefix of `path` present in the document."""
        best = self.lines.get((), 1)
        node: Any = self.data
        walked: list[str | int] = []
        for part in path:
            key = _child_key(node, part)
            if key is None:
                continue  # a union tag or validator name that is not in the data
            walked.append(key)
            best = self.lines.get(tuple(walked), best)
            node = node[key]
        return best


def _child_key(node: Any, part: object) -> str | int | None:
    if isinstance(node, Mapping):
        if part in node:
            return part  # type: ignore[return-value]
        if isinstance(part, str):
            for key in node:
                if str(key) == part:
                    return key  # type: ignore[no-any-return]
        return None
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return part
    return None


def parse(text: str, file: str) -> Document:
    """Parse one YAML document; raise ConfigError on syntax errors and duplicate keys."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        what = exc.problem or exc.context or "invalid YAML"
        raise ConfigError([Problem(file, line, f"YAML syntax error: {what}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(file, 1, f"YAML syntax error: {exc}")]) from None
    finally:
        loader.dispose()
    lines: dict[Path_, int] = {}
    problems: list[Problem] = []
    if node is not None:
        _walk(node, (), lines, problems, file)
    if problems:
        raise ConfigError(problems)
    return Document(file, data, lines)


def _walk(
    node: yaml.Node, path: Path_, lines: dict[Path_, int], problems: list[Problem], file: str
) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            line = key_node.start_mark.line + 1
            if key in seen and key != "<<":
                problems.append(
                    Problem(file, line, f"duplicate key {key!r} (first at line {seen[key]})")
                )
                continue
            seen[key] = line
            child = (*path, key)
            lines[child] = line
            _walk(value_node, child, lines, problems, file)
            lines[child] = line  # the key's line, even when the value starts below it
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*path, index), lines, problems, file)


def display_name(path: Path) -> str:
    """How `path` is named in problems: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def read(path: Path, display: str | None = None) -> Document:
    name = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem(name, 0, "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(name, 0, f"cannot read file: {exc}")]) from None
    return parse(text, name)


def dotted(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def problems_from(
    exc: ValidationError, doc: Document, prefix: Path_ = (), describe: Any = None
) -> list[Problem]:
    """Turn pydantic's errors into `file:line: where: what` problems.

    `describe(path)` may return a friendlier name for the start of a path (a rule's name).
    """
    problems = []
    for err in exc.errors(include_url=False):
        loc = (*prefix, *err["loc"])
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc = (*loc, _discriminator(err))
        data_path = _data_path(doc.data, loc, err["type"])
        where = describe(data_path) if describe else dotted(data_path)
        problems.append(Problem(doc.file, doc.line_of(loc), _message(err, where)))
    return problems


def validate(model: type[BaseModel], doc: Document, describe: Any = None) -> Any:
    """`doc` as a `model`, or ConfigError with every problem at its `file:line`."""
    if not isinstance(doc.data, dict):
        got = "an empty file" if doc.data is None else f"a {type(doc.data).__name__}"
        raise ConfigError([Problem(doc.file, 1, f"expected a mapping at the top, got {got}")])
    try:
        return model.model_validate(doc.data)
    except ValidationError as exc:
        raise ConfigError(problems_from(exc, doc, describe=describe)) from None


_NAMES_A_KEY = frozenset({"missing", "union_tag_invalid", "union_tag_not_found"})


def _discriminator(err: Any) -> str:
    return str((err.get("ctx") or {}).get("discriminator", "kind")).strip("'")


def _data_path(data: Any, loc: Sequence[object], kind: str) -> list[str | int]:
    """The part of a pydantic location that names real keys, plus a trailing missing key."""
    out: list[str | int] = []
    node = data
    for index, part in enumerate(loc):
        key = _child_key(node, part)
        if key is not None:
            out.append(key)
            node = node[key]
        elif kind in _NAMES_A_KEY and index == len(loc) - 1 and isinstance(part, str):
            out.append(part)  # a missing key: name it
    return out


def _message(err: Any, where: str) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    got = err.get("input")
    lead = f"{where}: " if where else ""
    if kind == "extra_forbidden":
        return f"{lead.removesuffix(': ')}: unknown key" if where else "unknown key"
    if kind == "missing":
        return f"{where}: missing required key"
    if kind == "union_tag_invalid":
        expected = str(ctx.get("expected_tags", "")).replace("'", "")
        return f"{lead}unknown value {ctx.get('tag')!r} (expected {expected})"
    if kind == "union_tag_not_found":
        return f"{where}: missing required key"
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        return lead + msg.removeprefix("Value error, ")
    if kind == "model_type" or kind == "dict_type":
        return f"{lead}expected a mapping, got {_shown(got)}"
    if kind == "too_short":
        return f"{lead}needs at least {ctx.get('min_length', 1)} entry, found none"
    if kind == "list_type":
        return f"{lead}expected a list, got {_shown(got)}"
    return f"{lead}{msg[0].lower()}{msg[1:]} (got {_shown(got)})"


def _shown(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
