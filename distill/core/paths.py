"""Output paths checked before any work: can we create files there? (Tried, not guessed.)"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from distill.core.config import ConfigError


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def _probe_writable(folder: Path, what: str, shown: Path) -> None:
    """Creating a file is the only test that holds everywhere (root ignores permission bits; /proc, read-only mounts
    and full disks say no only when asked)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".distill-probe-", dir=folder)
    except OSError as err:
        raise ConfigError(f"{what} {str(shown)!r} cannot be written: creating a file in {str(folder)!r} failed "
                          f"({err.strerror or err})") from None
    os.close(fd)
    os.unlink(probe)


def _check_folder(folder: Path, what: str, shown: Path) -> None:
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        where = "is a file" if existing == shown else f"is under {str(existing)!r}, which is a file"
        raise ConfigError(f"{what} {str(shown)!r} {where}, not a folder")
    _probe_writable(existing, what, shown)


def check_output_dir(path: Path, what: str = "--out") -> None:
    """`path` is, or can become, a folder we can write in. Creates nothing."""
    path = Path(path).expanduser()
    _check_folder(path, what, path)


def check_output_file(path: Path, what: str = "--out") -> None:
    """`path` is a file we can create or replace. Creates nothing."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is a folder; give a file name (for example clip.mp4)")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{what} {str(path)!r} exists and cannot be overwritten")
    _check_folder(path.parent, what, path)
