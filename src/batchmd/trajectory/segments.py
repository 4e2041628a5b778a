"""Immutable segment files: how a store or log is written while a run goes on.

A store ``PATH`` (``run.h5`` or ``run.thermo.parquet``) is, while its run goes on or after
an interruption, a folder ``PATH.parts/`` of segments ``seg-000000.EXT``,
``seg-000001.EXT``, ...; each is written under a hidden temporary name, fsynced and
renamed into place, so a segment exists whole or not at all, whatever kills the process.
When the run completes, the segments are merged into the single file ``PATH`` (written the
same way) and the folder is removed. Readers accept either form.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

__all__ = ["parts_dir", "segment_paths", "next_segment", "atomic_write", "store_exists", "remove_store",
           "discard_parts", "reopen_merged"]

_SEGMENT = re.compile(r"^seg-(\d{6,})\.(h5|parquet)$")


def parts_dir(path) -> Path:
    """``run.h5`` -> ``run.h5.parts``."""
    path = Path(path)
    return path.with_name(path.name + ".parts")


def segment_paths(path) -> list[Path]:
    """The committed segments of ``path`` in order (hidden temporary files are not segments)."""
    folder = parts_dir(path)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _SEGMENT.match(p.name))]
    return [p for _, p in sorted(found)]


def next_segment(path, ext: str) -> Path:
    """The path of the next segment to write."""
    existing = segment_paths(path)
    index = int(_SEGMENT.match(existing[-1].name).group(1)) + 1 if existing else 0
    return parts_dir(path) / f"seg-{index:06d}.{ext}"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write(final: Path, write) -> None:
    """``write(tmp_path)``, fsync, rename onto ``final``; the temporary file is removed on error."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(final.parent)


def store_exists(path) -> bool:
    """Whether ``path`` or its segment folder exists."""
    return Path(path).exists() or parts_dir(path).exists()


def remove_store(path) -> None:
    """Delete ``path`` and its segment folder (``--overwrite``)."""
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    shutil.rmtree(parts_dir(path), ignore_errors=True)


def discard_parts(path) -> None:
    """Remove the segment folder of ``path`` after a merge: renamed aside first (one atomic step,
    so a crash never leaves a folder holding only some of the segments), then deleted."""
    folder = parts_dir(path)
    trash = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(trash, ignore_errors=True)
    if folder.exists():
        os.replace(folder, trash)
        _fsync_dir(folder.parent)
    shutil.rmtree(trash, ignore_errors=True)


def reopen_merged(path, ext: str) -> None:
    """Continue a merged store: the file ``path`` becomes segment 0 of its folder again (no copy)."""
    path = Path(path)
    if path.is_file() and not segment_paths(path):
        folder = parts_dir(path)
        folder.mkdir(parents=True, exist_ok=True)
        os.replace(path, folder / f"seg-000000.{ext}")
        _fsync_dir(folder)
