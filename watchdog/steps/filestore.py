"""A colour's filestore: copied by hard links for a clone, tarred for a backup, untarred for a
restore; always built beside its destination and swapped in by rename.

Why hard links: Odoo's filestore files are content-addressed (`ab/abcdef...`, the name is the
sha1 of the content) and never rewritten in place, so two colours may share a file's inode
safely, and linking 2,000 files takes milliseconds where copying gigabytes takes minutes. A
file that cannot be linked (another filesystem: EXDEV, or a filesystem or policy that refuses
links: EPERM) is copied instead.

Why never the same directory (or one inside the other): Odoo queues an attachment's file for
its garbage collector when the attachment changes, so one colour's cleanup would delete files
that only the other colour's database still references (ODOO.md "Backup and clone").

Why build beside and rename: a crash or failure never leaves a half-copied tree under the
destination's name; the old tree is removed only after the new one is in place.

Why GNU tar for backups: measured on 2,000 files (90 MB), `tar` creates the archive in 0.07 s
against 0.22 s for Python's `tarfile`, lists it in 0.015 s against 0.14 s and extracts it in
0.24 s against 0.96 s; and as a command it stops with the step when the step is cancelled.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from watchdog.steps import command
from watchdog.steps.base import Progress, StepFailed, quiet

TEMP = ".wdtmp"  # a tree being built: .<name>.wdtmp beside the destination
ASIDE = ".wdold"  # the previous tree while the new one is swapped in
TAR = "tar"


@dataclass(frozen=True)
class Copied:
    files: int
    linked: bool  # every file is a hard link of its source


def temp_path(dst: Path) -> Path:
    return dst.parent / f".{dst.name}{TEMP}"


def aside_path(dst: Path) -> Path:
    return dst.parent / f".{dst.name}{ASIDE}"


def check_separate(src: Path, dst: Path) -> None:
    """Refuse a source and destination that are one directory or nested in each other."""
    a, b = src.resolve(), dst.resolve()
    if a == b or a.is_relative_to(b) or b.is_relative_to(a):
        raise StepFailed(
            f"the filestores {src} and {dst} are the same directory or one holds the other: "
            "Odoo's attachment garbage collector in one colour would delete files the other "
            "uses; give each colour its own filestore path (database.filestore)")


def list_files(root: Path) -> list[str]:
    """The regular files under `root`, as sorted relative POSIX paths ([] when missing)."""
    found: list[str] = []
    if not root.is_dir():
        return found
    for base, dirs, files in os.walk(root):
        dirs.sort()
        rel = Path(base).relative_to(root)
        for name in files:
            path = Path(base) / name
            if path.is_file() and not path.is_symlink():
                found.append((rel / name).as_posix())
    return sorted(found)


def link_tree(src: Path, dst: Path, stop: threading.Event | None = None) -> Copied:
    """Make `dst` (which must not exist) a tree of hard links to `src`'s files (a copy per
    file where a link is refused). `stop` set: give up between two files (StepFailed)."""
    dst.mkdir(parents=True)
    files, linked = 0, True
    for base, dirs, names in os.walk(src):
        rel = Path(base).relative_to(src)
        for d in dirs:
            (dst / rel / d).mkdir(exist_ok=True)
        for name in names:
            if stop is not None and stop.is_set():
                raise StepFailed("the filestore copy was cancelled")
            source, target = Path(base) / name, dst / rel / name
            if source.is_symlink() or not source.is_file():
                continue
            try:
                os.link(source, target)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
                shutil.copy2(source, target)
                linked = False
            files += 1
    return Copied(files, linked)


def swap_in(built: Path, dst: Path) -> None:
    """Put the tree `built` at `dst`: the old `dst` renamed aside first, removed last."""
    aside = aside_path(dst)
    if aside.exists():
        shutil.rmtree(aside)
    had_old = dst.exists()
    if had_old:
        dst.rename(aside)
    try:
        built.rename(dst)
    except OSError:
        if had_old:
            aside.rename(dst)
        raise
    if had_old:
        shutil.rmtree(aside, ignore_errors=True)


def copy_filestore(src: Path | None, dst: Path, *, progress: Progress = quiet,
                   stop: threading.Event | None = None) -> Copied:
    """The clone's filestore: `src` into `dst` by hard links, built beside and swapped in.

    A missing source is an empty filestore (a database without attachments on disk yet)."""
    if src is not None:
        check_separate(src, dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(dst)
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        if src is None or not src.is_dir():
            progress("no filestore to copy: the copy starts empty" if src is None
                     else f"filestore {src} does not exist: the copy starts empty")
            tmp.mkdir()
            result = Copied(0, True)
        else:
            result = link_tree(src, tmp, stop)
        swap_in(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def cleanup_filestore_leftovers(path: Path) -> list[Path]:
    """What a crash left beside the filestore `path`: the tree being built is removed; a tree
    renamed aside is put back when `path` itself is missing (the crash fell between the two
    renames), else removed. Returns the paths removed."""
    removed: list[Path] = []
    tmp, aside = temp_path(path), aside_path(path)
    restore = restore_temp_path(path)
    if aside.exists() and not path.exists():
        aside.rename(path)
    for leftover in (tmp, restore, aside):
        if leftover.exists():
            shutil.rmtree(leftover, ignore_errors=True)
            removed.append(leftover)
    return removed


def restore_temp_path(dst: Path) -> Path:
    return dst.parent / f".{dst.name}.wdrestore"


# ---------------------------------------------------------------- tar, for backup and restore

def _tar_listing(src: Path | None, tar_path: Path) -> tuple[list[str], Path, Path]:
    """The names to archive, written NUL-separated beside the archive, and tar's -C."""
    names = list_files(src) if src is not None else []
    listing = tar_path.with_name(tar_path.name + ".list")
    listing.write_bytes(b"".join(n.encode() + b"\0" for n in names))
    base = src if src is not None and src.is_dir() else tar_path.parent
    return names, listing, base


async def write_tar(src: Path | None, tar_path: Path, *, timeout: float | None = None) -> list[str]:
    """Archive `src`'s regular files (a missing `src`: none) into `tar_path`; returns the
    names put in. The names are listed first and given to tar, so a file Odoo adds meanwhile
    is simply not in this backup (harmless: the dump, taken before, does not reference it)."""
    names, listing, base = _tar_listing(src, tar_path)
    try:
        done = await command.run(
            [TAR, "-cf", str(tar_path), "-C", str(base), "--null", "--no-recursion",
             "-T", str(listing)], timeout=timeout)
    finally:
        listing.unlink(missing_ok=True)
    if done.exit_code != 0:
        raise StepFailed(f"tar of the filestore {src} failed"
                         + (" (timed out)" if done.timed_out else ""),
                         exit_code=done.exit_code, output=done.tail)
    return names


async def list_tar(tar_path: Path) -> list[str]:
    """The regular files in `tar_path`, sorted; StepFailed when tar cannot read it."""
    names: list[str] = []

    def keep(line: str) -> None:
        if line and not line.endswith("/"):
            names.append(line)

    # literal: GNU tar otherwise escapes non-ASCII names in the C locale (é as \303\251).
    done = await command.run([TAR, "--quoting-style=literal", "-tf", str(tar_path)],
                             on_line=keep)
    if done.exit_code != 0:
        raise StepFailed(f"tar cannot read {tar_path.name}", exit_code=done.exit_code,
                         output=done.tail)
    return sorted(names)


async def extract_tar(tar_path: Path, dst: Path, *, progress: Progress = quiet) -> int:
    """Unpack the backup's filestore into a tree beside `dst`, then swap it in; returns the
    number of files. The previous filestore stays in place until the archive is unpacked."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = restore_temp_path(dst)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        progress(f"filestore: unpacking {tar_path.name} beside {dst}")
        done = await command.run([TAR, "-xf", str(tar_path), "-C", str(tmp),
                                  "--no-overwrite-dir"])
        if done.exit_code != 0:
            raise StepFailed(f"tar could not unpack {tar_path.name} into {tmp}",
                             exit_code=done.exit_code, output=done.tail)
        files = len(list_files(tmp))
        swap_in(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
    progress(f"filestore: {files} files restored into {dst}")
    return files
