"""Writes that survive a power cut: temp -> fsync -> rename -> fsync(dir). A rename is atomic, but only an
fsync makes the renamed file's bytes, and the directory entry itself, reach the disk before the power goes."""

from __future__ import annotations

import os
from pathlib import Path

from edge_agent.lifecycle import crashpoints


def fsync_path(path: Path) -> None:
    """The file's (or directory's) data and metadata on disk."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    crashpoints.synced(path)


def fsync_tree(folder: Path) -> None:
    """Every file under `folder`, then every directory, deepest first."""
    for root, dirs, files in os.walk(folder, topdown=False):
        for name in [*files, *dirs]:
            fsync_path(Path(root) / name)
    fsync_path(folder)


def write_atomic(path: Path, data: bytes, step: str = "") -> None:
    """`path` holds `data` or what it held before, whatever happens; nothing is left behind on failure
    (a full disk included). `step`: the crash point between the fsync and the rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        crashpoints.synced(tmp)
        crashpoints.reached(step)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def rename_durably(src: Path, dest: Path) -> None:
    """A finished folder (or file) moved into place: its contents on disk first, then the rename itself."""
    fsync_tree(src) if src.is_dir() else fsync_path(src)
    src.rename(dest)
    fsync_path(dest.parent)
