"""The Traefik router: the dynamic file it writes, read back and checked against Traefik's schema.

Traefik cannot be installed here, so no request goes through it. What is checked: every file
written is valid YAML that matches the shape Traefik documents for the file provider's HTTP
services (`tests/data/traefik/dynamic-http-services.schema.json`, written from the docs), the
split reads back exactly, and the file is replaced atomically.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from watchdog import routers
from watchdog.config import SiteConfig
from watchdog.routers import RouterError, WeightsError
from watchdog.routers.traefik import TraefikRouter

DATA = Path(__file__).parent / "data" / "traefik"
DEPLOY = Path(__file__).parent.parent / "deploy" / "traefik"
SCHEMA: dict[str, Any] = json.loads((DATA / "dynamic-http-services.schema.json").read_text())
SPLITS = [(100, 0), (90, 10), (50, 50), (1, 99), (0, 100), (100, 0)]


# A JSON Schema subset, checked with plain Python: enough for the schema above, and loud about
# any keyword it does not know (so the schema cannot silently ask for something unchecked).
_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "integer": (int,), "boolean": (bool,),
}
_KNOWN = {"$comment", "$defs", "$ref", "type", "properties", "required", "additionalProperties",
          "propertyNames", "minProperties", "maxProperties", "items", "minItems", "minLength",
          "pattern", "enum"}


def schema_errors(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    unknown = set(schema) - _KNOWN
    if unknown:
        raise ValueError(f"schema keyword(s) not supported: {sorted(unknown)}")
    if "$ref" in schema:
        node: Any = SCHEMA
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        return schema_errors(value, node, path)
    if "type" in schema:
        wanted = _TYPES[schema["type"]]
        is_bool = isinstance(value, bool)
        if not isinstance(value, wanted) or (is_bool and schema["type"] != "boolean"):
            return [f"{path}: expected {schema['type']}, got {value!r}"]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: empty string")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{path}: needs at least {schema['minItems']} item(s)")
        for index, item in enumerate(value):
            errors += schema_errors(item, schema.get("items", {}), f"{path}[{index}]")
    if isinstance(value, dict):
        if not schema.get("minProperties", 0) <= len(value) <= schema.get("maxProperties", 1e9):
            errors.append(f"{path}: {len(value)} keys, allowed "
                          f"{schema.get('minProperties', 0)}..{schema.get('maxProperties', 'n')}")
        errors += [f"{path}: missing {key!r}" for key in schema.get("required", [])
                   if key not in value]
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if "propertyNames" in schema:
                errors += schema_errors(key, schema["propertyNames"], f"{path} key {key!r}")
            if key in properties:
                errors += schema_errors(item, properties[key], f"{path}.{key}")
            elif extra is False:
                errors.append(f"{path}: unknown key {key!r}")
            elif isinstance(extra, dict):
                errors += schema_errors(item, extra, f"{path}.{key}")
    return errors


def read(path: Path) -> str:
    return path.read_text()


def write(path: Path, text: str) -> None:
    path.write_text(text)


def snapshot(path: Path) -> tuple[bytes, int, int]:
    """Content, inode and mtime: a file replaced or rewritten changes one of them."""
    stat = path.stat()
    return path.read_bytes(), stat.st_ino, stat.st_mtime_ns


def load_valid(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert schema_errors(data, SCHEMA) == []
    assert isinstance(data, dict)
    return data


def site(path: Path, *, blue: str = "odoo-blue", green: str = "odoo-green",
         sticky: str | None = None, service: str = "odoo") -> SiteConfig:
    router: dict[str, Any] = {"kind": "traefik", "dynamic_file": str(path), "service": service}
    if sticky is not None:
        router["sticky_cookie"] = sticky
    return SiteConfig.model_validate({
        "router": router,
        "colors": {
            "blue": {"server": blue, "url": "http://127.0.0.1:8069"},
            "green": {"server": green, "url": "http://127.0.0.1:9069"},
        },
    })


@pytest.fixture
def dynamic_file(tmp_path: Path) -> Path:
    return tmp_path / "dynamic" / "odoo.yml"


@pytest.fixture
def router(dynamic_file: Path) -> Iterator[TraefikRouter]:
    dynamic_file.parent.mkdir()
    made = routers.create("odoo", site(dynamic_file))
    assert isinstance(made, TraefikRouter)
    yield made


def weighted(data: dict[str, Any], service: str = "odoo") -> dict[str, Any]:
    result: dict[str, Any] = data["http"]["services"][service]["weighted"]
    return result


@pytest.mark.parametrize(("blue", "green"), SPLITS)
async def test_each_split_round_trips_through_a_valid_file(
    router: TraefikRouter, dynamic_file: Path, blue: int, green: int
) -> None:
    assert await router.set_weights({"blue": blue, "green": green}) == {
        "blue": blue, "green": green}
    assert await router.get_weights() == {"blue": blue, "green": green}
    data = load_valid(dynamic_file)
    wanted = [{"name": name, "weight": weight}
              for name, weight in (("odoo-blue", blue), ("odoo-green", green)) if weight]
    assert weighted(data)["services"] == wanted
    assert data["http"]["services"]["odoo-blue"] == {
        "loadBalancer": {"servers": [{"url": "http://127.0.0.1:8069"}]}}
    assert data["http"]["services"]["odoo-green"] == {
        "loadBalancer": {"servers": [{"url": "http://127.0.0.1:9069"}]}}


async def test_successive_splits_round_trip_in_one_file(
    router: TraefikRouter, dynamic_file: Path
) -> None:
    assert len(SPLITS) >= 3 and (0, 100) in SPLITS  # a canary split and a full switch
    for blue, green in SPLITS:
        await router.set_weights({"blue": blue, "green": green})
        assert await router.get_weights() == {"blue": blue, "green": green}
        text = read(dynamic_file)
        assert text.startswith("# Managed by odoo-watchdog for site 'odoo'")
        assert f"# split: blue={blue} green={green}\n" in text


async def test_colour_at_0_is_left_out_of_the_weighted_list_but_stays_defined(
    router: TraefikRouter, dynamic_file: Path
) -> None:
    await router.set_weights({"blue": 100, "green": 0})
    data = load_valid(dynamic_file)
    assert weighted(data)["services"] == [{"name": "odoo-blue", "weight": 100}]
    assert "odoo-green" in data["http"]["services"]  # ready to be put back
    assert "weight: 0" not in read(dynamic_file)


async def test_sticky_cookie_is_written_when_configured(dynamic_file: Path) -> None:
    dynamic_file.parent.mkdir()
    router = TraefikRouter("odoo", site(dynamic_file, sticky="odoo_color"))
    await router.set_weights({"blue": 90, "green": 10})
    assert weighted(load_valid(dynamic_file))["sticky"] == {
        "cookie": {"name": "odoo_color", "httpOnly": True}}


async def test_no_sticky_section_without_a_cookie_name(
    router: TraefikRouter, dynamic_file: Path
) -> None:
    await router.set_weights({"blue": 90, "green": 10})
    assert "sticky" not in weighted(load_valid(dynamic_file))
    assert "sticky" not in read(dynamic_file)


async def test_services_of_another_provider_are_referenced_not_defined(dynamic_file: Path) -> None:
    dynamic_file.parent.mkdir()
    router = TraefikRouter("odoo", site(dynamic_file, blue="odoo-blue@docker"))
    assert await router.set_weights({"blue": 10, "green": 90}) == {"blue": 10, "green": 90}
    data = load_valid(dynamic_file)
    assert sorted(data["http"]["services"]) == ["odoo", "odoo-green"]
    assert weighted(data)["services"] == [
        {"name": "odoo-blue@docker", "weight": 10}, {"name": "odoo-green", "weight": 90}]
    assert await router.get_weights() == {"blue": 10, "green": 90}


async def test_a_reader_never_sees_a_half_written_file(
    router: TraefikRouter, dynamic_file: Path
) -> None:
    """200 writes while another thread reads the file as fast as it can, as Traefik would."""
    await router.set_weights({"blue": 100, "green": 0})
    stop = threading.Event()
    seen: list[tuple[int, int]] = []
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                data = yaml.load(dynamic_file.read_text(), Loader=yaml.CSafeLoader)
                raw = {s["name"]: s["weight"] for s in weighted(data)["services"]}
                seen.append((raw.get("odoo-blue", 0), raw.get("odoo-green", 0)))
            except (OSError, yaml.YAMLError, TypeError, KeyError) as exc:
                problems.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.0002)  # let the writer have the GIL now and then

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(200):
            blue = (i * 37) % 101
            await router.set_weights({"blue": blue, "green": 100 - blue})
            load_valid(dynamic_file)  # every written file against the schema
    finally:
        stop.set()
        thread.join(timeout=10)
    assert problems == []
    assert len(seen) >= 200, "the reader did not overlap the writes"
    assert len(set(seen)) > 20
    assert all(b + g == 100 for b, g in seen)
    assert os.listdir(dynamic_file.parent) == [dynamic_file.name]  # no temp file left


async def test_bad_weights_are_refused_before_the_file_is_touched(
    router: TraefikRouter, dynamic_file: Path
) -> None:
    await router.set_weights({"blue": 90, "green": 10})
    before = snapshot(dynamic_file)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"blue": 90, "green": 20}, "sum to 100"),
        ({"blue": 90, "red": 10}, "unknown colour 'red'"),
        ({"blue": 110, "green": -10}, "between 0 and 100"),
        ({"blue": 50.0, "green": 50}, "whole number"),
    ]
    for bad, message in cases:
        with pytest.raises(WeightsError, match=message):
            await router.set_weights(bad)
    assert snapshot(dynamic_file) == before


async def test_bad_weights_do_not_create_a_missing_file(
    router: TraefikRouter, dynamic_file: Path
) -> None:
    with pytest.raises(WeightsError):
        await router.set_weights({"blue": 60, "green": 60})
    assert os.listdir(dynamic_file.parent) == []


async def test_get_weights_of_a_missing_file_says_so(
    router: TraefikRouter, dynamic_file: Path
) -> None:
    with pytest.raises(RouterError, match=f"dynamic file {dynamic_file} does not exist"):
        await router.get_weights()


async def test_get_weights_of_a_file_without_the_service_says_so(
    router: TraefikRouter, dynamic_file: Path
) -> None:
    write(dynamic_file, "http:\n  services:\n    erp:\n      weighted:\n"
                        "        services: [{name: a, weight: 1}]\n")
    with pytest.raises(RouterError, match="has no weighted service 'odoo'"):
        await router.get_weights()
    write(dynamic_file, "http: [not, a, mapping\n")
    with pytest.raises(RouterError, match="is not valid YAML"):
        await router.get_weights()


async def test_get_weights_refuses_a_service_that_is_no_colour(
    router: TraefikRouter, dynamic_file: Path
) -> None:
    write(dynamic_file, "http:\n  services:\n    odoo:\n      weighted:\n        services:\n"
                        "          - {name: odoo-blue, weight: 1}\n"
                        "          - {name: odoo-red, weight: 1}\n")
    with pytest.raises(RouterError, match="'odoo-red' is no colour of site 'odoo'"):
        await router.get_weights()


async def test_get_weights_uses_traefiks_defaults_for_hand_written_files(
    router: TraefikRouter, dynamic_file: Path
) -> None:
    # no weight = 1; weight 0 = skipped; any scale becomes percentages
    write(dynamic_file, "http:\n  services:\n    odoo:\n      weighted:\n        services:\n"
                        "          - {name: odoo-blue}\n"
                        "          - {name: odoo-green, weight: 3}\n")
    assert await router.get_weights() == {"blue": 25, "green": 75}
    write(dynamic_file, "http:\n  services:\n    odoo:\n      weighted:\n        services:\n"
                        "          - {name: odoo-blue, weight: 0}\n"
                        "          - {name: odoo-green, weight: 5}\n")
    assert await router.get_weights() == {"blue": 0, "green": 100}


async def test_check_needs_a_writable_directory(router: TraefikRouter, tmp_path: Path) -> None:
    await router.check()  # the file need not exist yet
    await router.set_weights({"blue": 100, "green": 0})
    await router.check()
    nowhere = TraefikRouter("odoo", site(tmp_path / "absent" / "odoo.yml"))
    with pytest.raises(RouterError, match=r"directory of .* does not exist"):
        await nowhere.check()


def test_service_name_with_a_provider_suffix_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RouterError, match="cannot name another provider"):
        TraefikRouter("odoo", site(tmp_path / "odoo.yml", service="odoo@file"))


@pytest.mark.parametrize(("document", "problem"), [
    ({"http": {"services": {"odoo": {"weighted": {"services": [{"name": "a", "weight": "9"}]}}}}},
     "expected integer"),
    ({"http": {"services": {"odoo": {"weighted": {"services": [{"name": "a", "weigth": 9}]}}}}},
     "unknown key 'weigth'"),
    ({"http": {"services": {"odoo": {"weighted": {"services": [{"name": "a"}]},
                                     "loadBalancer": {"servers": [{"url": "http://a"}]}}}}},
     "2 keys"),
    ({"http": {"services": {"odoo@file": {"loadBalancer": {"servers": [{"url": "http://a"}]}}}}},
     "does not match"),
    ({"http": {"services": {"odoo": {"weighted": {"services": [],
                                                  "sticky": {"cookie": {"httpOnly": "yes"}}}}}}},
     "at least 1"),
    ({"http": {"services": {"odoo": {"loadBalancer": {"servers": [{"address": "a:1"}]}}}}},
     "missing 'url'"),
])
def test_the_schema_check_rejects_what_traefik_would_not_load(
    document: dict[str, Any], problem: str
) -> None:
    errors = schema_errors(document, SCHEMA)
    assert any(problem in error for error in errors), errors


def test_the_shipped_examples_match_what_the_router_writes(tmp_path: Path) -> None:
    example = DEPLOY / "dynamic" / "odoo.yml"
    router = TraefikRouter("odoo", site(tmp_path / "odoo.yml", sticky="odoo_color"))
    rendered = router.render({"blue": 90, "green": 10})
    assert load_valid(example) == yaml.safe_load(rendered)
    assert rendered in example.read_text()  # the header too, below the EXAMPLE note
    routes = load_valid(DEPLOY / "dynamic" / "odoo-routers.yml")
    assert routes["http"]["routers"]["odoo"]["service"] == "odoo"
    static = yaml.safe_load((DEPLOY / "traefik.yml").read_text())
    assert static["providers"]["file"] == {"directory": "/etc/traefik/dynamic", "watch": True}
