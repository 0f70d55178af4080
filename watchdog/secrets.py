"""Secrets kept in files (`api.token_file`, a notify target's `url_file`), not in the config.

One reader for all of them, so each says the same thing when it fails: the config key, the
file, and what is wrong with it. A relative path is relative to the config's directory.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["SecretError", "read_secret", "secret_path"]


class SecretError(ValueError):
    """A secret file that is missing, unreadable or empty; the message names key and path."""


def secret_path(path: Path, config_dir: Path) -> Path:
    return path if path.is_absolute() else config_dir / path


def read_secret(path: Path, config_dir: Path, key: str) -> str:
    """The file's content without surrounding whitespace; SecretError if there is none.

    `key` names the setting in messages, e.g. `api.token_file`.
    """
    full = secret_path(path, config_dir)
    try:
        text = full.read_text().strip()
    except OSError as exc:
        raise SecretError(f"{key} {full}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SecretError(f"{key} {full}: not a text file") from None
    if not text:
        raise SecretError(f"{key} {full} is empty")
    return text
