"""The demo: the main job end to end on the built-in teacher (`distill demo` is its command). It is the comparison
machinery (`distill.compare`) on configs/compare/demo.yaml, which names the recipes:

    1. distil a 4-step student from the teacher    (2 ranks under DeepSpeed)
    2. export it as a diffusers folder of the teacher's pipeline
    3. post-train a 1-step student from that export (2 ranks)
    4. export it
    5. score the 50-step teacher, the teacher at 4 and 1 Euler steps, the first student at 4 and 1 steps and the
       second at 1 step on the toy world's held-out suite: eval.json, summary.md, report.html, and comparison.md /
       comparison.json (the models side by side, with each run's training cost)

Each stage is skipped when its output is complete and continued when it is partial (training resumes from its
latest checkpoint; the eval's per-clip cache keeps finished clips), so interrupting the demo and running it again
continues where it stopped. Training runs as `torchrun ... distill train` in a child process, because it needs its
ranks; export and eval run in this process. `--fast` runs a few steps per stage and a small suite (the overrides
`distill.compare.FAST_TRAIN` and `FAST_SUITE`, plus demo.yaml's own `fast_overrides`).
"""

from __future__ import annotations

import time
from pathlib import Path

from distill import compare
from distill.core.config import CONFIG_DIR

CONFIG = CONFIG_DIR / "compare" / "demo.yaml"


def run_demo(out: Path, nproc: int = 2, fast: bool = False) -> dict:
    """Every stage in turn; returns the eval result (eval.json's content)."""
    start = time.perf_counter()
    plan = compare.plan(CONFIG, out=out, nproc=nproc, fast=fast, what="demo")
    result, _ = compare.run_compare(plan)
    compare.say(f"demo finished in {(time.perf_counter() - start) / 60:.1f} min: {out / 'summary.md'}, "
                f"{out / 'report.html'}, {out / 'eval.json'}, {out / 'comparison.md'}")
    return result
