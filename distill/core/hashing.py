"""Identities of files and checkpoint folders."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_of_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_hash(folder: Path) -> str:
    """Configs in full; weight files in full below 64 MB, else their size with the first and last 8 MB."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors", ".txt")):
        h.update(str(path.relative_to(folder)).encode())
        size = path.stat().st_size
        with open(path, "rb") as f:
            if size <= 64 << 20:
                h.update(f.read())
            else:
                h.update(str(size).encode() + f.read(8 << 20))
                f.seek(-(8 << 20), os.SEEK_END)
                h.update(f.read())
    return h.hexdigest()[:16]
