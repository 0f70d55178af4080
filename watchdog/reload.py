"""Noticing edits: a signature of the config and every rule file it names, polled.

Polling (every second by default) needs no inotify, works on every file system and through
config-management tools that replace files by rename; the daemon re-validates only when the
signature changes.
"""

from __future__ import annotations

import os
from pathlib import Path

from watchdog.rulefiles import rule_paths

__all__ = ["Signature", "rule_paths", "signature"]

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
