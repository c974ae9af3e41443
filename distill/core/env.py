"""What produced a result: the code version and the software and device it ran on."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def code_version() -> str:
    """The git commit of the code, with `-dirty` when tracked files differ from it; "unknown" outside a checkout."""
    try:
        run = dict(cwd=PACKAGE_ROOT, capture_output=True, text=True, timeout=10)
        sha = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict:
    """What a bit-identical re-run needs to match: library versions, device, the CPU kernels torch picks, threads
    per process (a last-bit difference in a reduction grows in adversarial training), and the code version."""
    import diffusers
    import torch

    try:
        import deepspeed
        ds_version = deepspeed.__version__
    except Exception:  # deepspeed is optional for eval-only use
        ds_version = None
    device = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
              else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")
    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "deepspeed": ds_version,
            "python": platform.python_version(), "device": device,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "git_sha": code_version()}
