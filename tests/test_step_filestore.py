"""A colour's filestore (watchdog/steps/filestore.py) on real directories: hard-linked copies
built beside and swapped in, a copy where a link is refused, GNU tar for backups and restores,
and what a crash leaves beside a filestore."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from tests.test_step_backup import make_filestore, tree
from watchdog.steps import filestore as filestores
from watchdog.steps.base import StepFailed
from watchdog.steps.filestore import (
    Copied,
    aside_path,
    check_separate,
    cleanup_filestore_leftovers,
    copy_filestore,
    extract_tar,
    list_files,
    list_tar,
    restore_temp_path,
    temp_path,
    write_tar,
)


def beside(path: Path) -> list[str]:
    """What is in the filestore's parent directory."""
    return sorted(p.name for p in path.parent.iterdir())


def test_a_copy_is_hard_links_of_every_file(tmp_path: Path) -> None:
    src, dst = tmp_path / "blue", tmp_path / "green"
    files = make_filestore(src)
    (src / "checklist").mkdir()  # Odoo's own empty directory: kept
    lines: list[str] = []
    assert copy_filestore(src, dst, progress=lines.append) == Copied(50, True)
    assert tree(dst) == files
    for name in files:
        a, b = (src / name).stat(), (dst / name).stat()
        assert a.st_ino == b.st_ino and a.st_dev == b.st_dev, name
        assert b.st_nlink == 2
    assert (dst / "checklist").is_dir()
    assert beside(dst) == ["blue", "green"]  # nothing of .green.wdtmp / .green.wdold left


def test_an_existing_destination_is_replaced_with_nothing_of_the_old_left(
        tmp_path: Path) -> None:
    src, dst = tmp_path / "blue", tmp_path / "green"
    files = make_filestore(src, 10)
    make_filestore(dst, 5)
    (dst / "zz").mkdir()
    (dst / "zz" / "zzonly-in-green").write_text("old")
    (dst / "empty").mkdir()
    old_ino = (dst / "zz" / "zzonly-in-green").stat().st_ino
    assert copy_filestore(src, dst) == Copied(10, True)
    assert tree(dst) == files
    assert not (dst / "zz").exists() and not (dst / "empty").exists()
    assert all(p.stat().st_ino != old_ino for p in dst.rglob("*"))
    assert beside(dst) == ["blue", "green"]


@pytest.mark.parametrize("source", ["missing", "none"])
def test_a_missing_source_gives_an_empty_destination(tmp_path: Path, source: str) -> None:
    dst = tmp_path / "green"
    make_filestore(dst, 3)
    src = tmp_path / "blue" if source == "missing" else None
    lines: list[str] = []
    assert copy_filestore(src, dst, progress=lines.append) == Copied(0, True)
    assert dst.is_dir() and list(dst.iterdir()) == []
    assert lines and "the copy starts empty" in lines[0]
    assert not temp_path(dst).exists() and not aside_path(dst).exists()


@pytest.mark.parametrize("where", ["same", "inside", "around", "through a symlink"])
def test_the_same_or_nested_directories_are_refused(tmp_path: Path, where: str) -> None:
    src = tmp_path / "filestore" / "blue"
    files = make_filestore(src, 5)
    (tmp_path / "link").symlink_to(src)
    dst = {"same": src, "inside": src / "green", "around": src.parent,
           "through a symlink": tmp_path / "link"}[where]
    with pytest.raises(StepFailed, match="same directory or one holds the other"):
        check_separate(src, dst)
    with pytest.raises(StepFailed, match="same directory or one holds the other"):
        copy_filestore(src, dst)
    assert tree(src) == files
    assert not (src / "green").exists()
    # siblings whose names share a prefix are separate
    check_separate(src, src.parent / "blue2")


def test_where_links_are_refused_the_files_are_copied(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def cross_device(src: object, dst: object, **_: object) -> None:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(filestores.os, "link", cross_device)
    src, dst = tmp_path / "blue", tmp_path / "green"
    files = make_filestore(src, 20)
    assert copy_filestore(src, dst) == Copied(20, False)
    assert tree(dst) == files
    for name in files:
        a, b = (src / name).stat(), (dst / name).stat()
        assert a.st_ino != b.st_ino and b.st_nlink == 1
        assert a.st_mtime == b.st_mtime  # copy2 keeps the times


def test_another_link_error_fails_with_the_destination_as_it_was(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(src: object, dst: object, **_: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    src, dst = tmp_path / "blue", tmp_path / "green"
    make_filestore(src, 5)
    old = make_filestore(dst, 2)
    monkeypatch.setattr(filestores.os, "link", full)
    with pytest.raises(OSError, match="No space left"):
        copy_filestore(src, dst)
    assert tree(dst) == old
    assert beside(dst) == ["blue", "green"]


def test_a_stopped_copy_leaves_the_destination_as_it_was(tmp_path: Path) -> None:
    src, dst = tmp_path / "blue", tmp_path / "green"
    make_filestore(src, 5)
    old = make_filestore(dst, 2)
    stop = threading.Event()
    stop.set()
    with pytest.raises(StepFailed, match="cancelled"):
        copy_filestore(src, dst, stop=stop)
    assert tree(dst) == old
    assert beside(dst) == ["blue", "green"]


async def test_tar_round_trip_replaces_the_destination(tmp_path: Path) -> None:
    src, dst = tmp_path / "blue", tmp_path / "restored"
    files = make_filestore(src, 30)
    (src / "with space").mkdir()
    (src / "with space" / "name with space").write_text("odd but possible")
    files = tree(src)
    tar = tmp_path / "filestore.tar"
    names = await write_tar(src, tar)
    assert names == list_files(src) == sorted(files)
    assert await list_tar(tar) == names
    assert not tar.with_name("filestore.tar.list").exists()
    make_filestore(dst, 3)
    (dst / "stale").write_text("not in the backup")
    lines: list[str] = []
    assert await extract_tar(tar, dst, progress=lines.append) == 31
    assert tree(dst) == files
    assert not restore_temp_path(dst).exists() and not aside_path(dst).exists()
    assert lines[-1] == f"filestore: 31 files restored into {dst}"


async def test_tar_listing_of_non_ascii_names_matches_in_the_c_locale(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A daemon run without LANG: GNU tar would list `é` as `\\303\\251` and the backup's
    check of the listing against the files written would fail."""
    monkeypatch.setenv("LC_ALL", "C")
    src = tmp_path / "blue"
    (src / "ab").mkdir(parents=True)
    (src / "ab" / "facture-été.pdf").write_text("x")
    tar = tmp_path / "filestore.tar"
    names = await write_tar(src, tar)
    assert names == ["ab/facture-été.pdf"]
    assert await list_tar(tar) == names


async def test_tar_of_a_missing_filestore_is_empty_and_restores_empty(tmp_path: Path) -> None:
    tar = tmp_path / "filestore.tar"
    assert await write_tar(None, tar) == []
    assert await write_tar(tmp_path / "missing", tar) == []
    assert await list_tar(tar) == []
    dst = tmp_path / "restored"
    make_filestore(dst, 2)
    assert await extract_tar(tar, dst) == 0
    assert dst.is_dir() and list(dst.iterdir()) == []


async def test_a_damaged_tar_is_refused_with_the_destination_as_it_was(tmp_path: Path) -> None:
    tar = tmp_path / "filestore.tar"
    tar.write_bytes(b"not a tar archive" * 100)
    with pytest.raises(StepFailed, match=r"tar cannot read filestore\.tar"):
        await list_tar(tar)
    dst = tmp_path / "restored"
    old = make_filestore(dst, 2)
    with pytest.raises(StepFailed, match=r"tar could not unpack filestore\.tar"):
        await extract_tar(tar, dst)
    assert tree(dst) == old
    assert not restore_temp_path(dst).exists()


def test_cleanup_removes_a_half_built_tree_and_a_half_unpacked_one(tmp_path: Path) -> None:
    path = tmp_path / "green"
    files = make_filestore(path, 3)
    make_filestore(temp_path(path), 2)
    make_filestore(restore_temp_path(path), 2)
    assert cleanup_filestore_leftovers(path) == [temp_path(path), restore_temp_path(path)]
    assert beside(path) == ["green"]
    assert tree(path) == files
    assert cleanup_filestore_leftovers(path) == []


def test_cleanup_puts_back_a_tree_set_aside_when_the_filestore_is_missing(
        tmp_path: Path) -> None:
    path = tmp_path / "green"
    files = make_filestore(aside_path(path), 4)  # a crash between the two renames
    assert cleanup_filestore_leftovers(path) == []
    assert tree(path) == files
    assert beside(path) == ["green"]


def test_cleanup_removes_a_tree_set_aside_when_the_filestore_is_there(tmp_path: Path) -> None:
    path = tmp_path / "green"
    files = make_filestore(path, 3)
    make_filestore(aside_path(path), 4)  # the old tree, not yet removed
    assert cleanup_filestore_leftovers(path) == [aside_path(path)]
    assert tree(path) == files
    assert beside(path) == ["green"]


def test_cleanup_of_a_filestore_never_made_does_nothing(tmp_path: Path) -> None:
    assert cleanup_filestore_leftovers(tmp_path / "nothing") == []
    assert list(tmp_path.iterdir()) == []
