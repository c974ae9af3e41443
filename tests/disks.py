"""A real small disk for the full-disk tests: a tmpfs mounted where the test process may (root in a container);
elsewhere the test is skipped with the reason (the injected-ENOSPC tests cover the same paths)."""

import contextlib
import shutil
import subprocess
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str):
    """`folder` as a tmpfs of `size` (e.g. "4m") for the block; unmounted after it."""
    folder.mkdir(parents=True, exist_ok=True)
    tool = shutil.which("mount")
    done = subprocess.run([tool, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                          text=True, check=False) if tool else None
    if done is None or done.returncode:
        pytest.skip(f"cannot mount a {size} tmpfs here ({done.stderr.strip() if done else 'no mount tool'}); the "
                    f"injected-ENOSPC tests cover the same path")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
