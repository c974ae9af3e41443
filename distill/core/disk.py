"""Writes that fail cleanly when the disk is full: one line naming the disk and the bytes needed, no partial output.

A full disk shows up in many costumes: `OSError(ENOSPC)` from Python's own writes, `EDQUOT` on a quota, and from
torch's zip writer a bare `RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos`. `writing()`
recognises them, removes the partial output and raises `DiskFull`, which the CLI prints as its one line.
"""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_FULL_TEXTS = ("unexpected pos", "no space left", "disk quota exceeded", "file too large")


class DiskFull(Exception):
    """Out of space while writing `path` on the disk mounted at `mount`; its message says how much was needed."""

    def __init__(self, path: Path, mount: Path, free: int, needed: int | None, what: str):
        self.path, self.mount, self.free, self.needed = path, mount, free, needed
        need = f"; it needs about {human(needed)}" if needed else ""
        super().__init__(f"disk full writing {what} {str(path)!r}: {human(free)} free on {mount}{need}. "
                         f"The partial output was removed; free space and run the command again")


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def mount_of(path: Path) -> Path:
    """The mount point holding `path` (or the nearest existing folder above it)."""
    p = Path(os.path.abspath(path))
    while not p.exists():
        p = p.parent
    while not os.path.ismount(p):
        p = p.parent
    return p


def free_bytes(path: Path) -> int:
    p = Path(os.path.abspath(path))
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def is_disk_full(err: BaseException) -> bool:
    """Whether `err` (or what caused it) is the disk running out of space."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in _FULL_ERRNOS:
            return True
        if isinstance(err, (OSError, RuntimeError)) and any(t in str(err).lower() for t in _FULL_TEXTS):
            return True
        err = err.__cause__ or err.__context__
    return False


def size_of(path: Path) -> int:
    """Bytes under `path` (a file or a folder); 0 when it does not exist."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def remove(path: Path) -> None:
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def writing(partial: Path, what: str, needed: int | None = None):
    """Write `partial` (a file or folder that is not yet the final output) inside the block. If the disk fills up,
    `partial` is removed and `DiskFull` is raised, naming the disk, the space free and `needed` (the caller's
    estimate of the output's size; otherwise what had been written plus what was still to write is unknown, so the
    bytes written so far are given as a lower bound)."""
    try:
        yield partial
    except Exception as err:
        if not is_disk_full(err):
            raise
        written = size_of(partial)
        remove(partial)
        raise DiskFull(Path(partial), mount_of(partial), free_bytes(partial), needed or written or None,
                       what) from err
