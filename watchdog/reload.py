"""Reloading: noticing edits to the config and its rule files, re-reading them, and keeping the
last good set when the new one is wrong.

Polling a signature of the files (every second by default) needs no inotify, works on every
file system and through config-management tools that replace files by rename; the files are
re-validated only when the signature changes, or on SIGHUP. A failed load changes nothing and
says so in `odoo_watchdog_config_last_reload_successful` and the API's `config` view, like
Prometheus' own reload.

Secrets that live outside the config (the API token) are re-read by `rereads` hooks on every
reload, also one whose config is wrong: rotating a token must not wait for a good config. A
hook returns None when done, or its problem; a problem keeps that secret as it was and makes
the reload count as failed (the metric at 0, the problem in `errors`) even when the config
part was applied, so the usual alert on that metric catches a rotation that did not happen.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from watchdog.config import ConfigError, LoadedConfig, load
from watchdog.metrics import Metrics
from watchdog.rulefiles import rule_paths

__all__ = ["Reloader", "Signature", "rule_paths", "signature"]

log = structlog.get_logger("odoo_watchdog")
Signature = tuple[tuple[str, int, int], ...]


def signature(paths: list[Path]) -> Signature:
    """(path, mtime_ns, size) of each file; a missing file counts as (-1, -1)."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append((str(path), st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((str(path), -1, -1))
    return tuple(out)


class Reloader:
    """Owns the config in force. `apply(new)` is the daemon's part of a good reload (swap the
    rules and the site settings between ticks); `failed(problems)` tells the operators of a
    bad one. `on_reload(done)` is the sd_notify hook (RELOADING=1, then READY=1)."""

    def __init__(self, loaded: LoadedConfig, metrics: Metrics,
                 apply: Callable[[LoadedConfig], Awaitable[list[str]]],
                 failed: Callable[[list[str]], None],
                 clock: Callable[[], float] = time.time) -> None:
        self.loaded = loaded
        self.metrics = metrics
        self.apply = apply
        self.failed = failed
        self.clock = clock
        self.errors: list[str] | None = None
        self.warnings: list[str] = []
        self.on_reload: Callable[[bool], None] | None = None
        self.rereads: list[Callable[[], Awaitable[str | None]]] = []
        self._signature = self.files_signature()
        self._lock = asyncio.Lock()
        self._succeeded()

    def files_signature(self) -> Signature:
        return signature([self.loaded.path,
                          *rule_paths(self.loaded.path, self.loaded.config.rule_files)])

    async def watch(self, every: float = 1.0) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                if await asyncio.to_thread(self.files_signature) != self._signature:
                    await self.reload("file changed")
            except Exception:
                log.exception("reload_watch_failed")

    async def reload(self, reason: str = "SIGHUP") -> bool:
        async with self._lock:
            if self.on_reload:
                self.on_reload(False)
            try:
                return await self._reload(reason)
            finally:
                if self.on_reload:
                    self.on_reload(True)

    async def _reload(self, reason: str) -> bool:
        self._signature = await asyncio.to_thread(self.files_signature)
        try:
            new = await asyncio.to_thread(load, self.loaded.path)
        except ConfigError as exc:
            problems = [str(p) for p in exc.problems]
            self.errors = problems + await self._reread()
            self.metrics.config_last_reload_successful.set(0)
            log.error("reload_failed", reason=reason, problems=self.errors)
            self.failed(problems)
            return False
        warnings = await self.apply(new)
        self.loaded = new
        self.warnings = warnings + new.warnings
        kept = await self._reread()
        if kept:
            self.errors = kept
            self.metrics.config_last_reload_successful.set(0)
            log.error("reload_failed", reason=reason, problems=kept, config_applied=True)
            return False
        self.errors = None
        self._succeeded()
        log.info("reloaded", reason=reason, rules=len(new.rules), warnings=warnings)
        return True

    async def _reread(self) -> list[str]:
        problems = []
        for hook in self.rereads:
            try:
                problem = await hook()
            except Exception as exc:  # a hook's bug must not stop the reload
                log.exception("reread_failed")
                problem = f"re-reading a secret failed: {type(exc).__name__}"
            if problem:
                problems.append(problem)
        return problems

    def _succeeded(self) -> None:
        self.last_reload_at = self.clock()
        self.metrics.config_last_reload_successful.set(1)
        self.metrics.config_last_reload_success_timestamp_seconds.set(self.last_reload_at)

    def view(self) -> dict[str, Any]:
        return {"path": str(self.loaded.path), "last_reload_successful": not self.errors,
                "last_reload_at": self.last_reload_at, "errors": self.errors or [],
                "warnings": self.warnings, "rules": len(self.loaded.rules)}
