#!/usr/bin/env python
"""The README's memory table: `distill plan` for Wan 2.1 1.3B and 14B, Wan 2.2 A14B (two 14B experts, 720p) and
LTX-Video 2B (161 x 480 x 704),
consistency, APT and DMD2, full and LoRA (rank 64), on --gpus x --gpu-memory GiB, each at its recipe config's
settings, with what the planner says would make it fit (a recipe that refuses the teacher says why).

    python scripts/plan_table.py --gpus 8 --gpu-memory 80 > table.md
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ROWS = [("Wan 2.1 1.3B", "consistency", "configs/recipes/consistency-wan2.1-1.3b.yaml"),
        ("Wan 2.1 1.3B", "APT", "configs/recipes/apt-wan2.1-1.3b.yaml"),
        ("Wan 2.1 1.3B", "DMD2", "configs/recipes/dmd2-wan2.1-1.3b.yaml"),
        ("Wan 2.1 14B", "consistency", "configs/recipes/consistency-wan2.1-14b.yaml"),
        ("Wan 2.1 14B", "APT", "configs/recipes/apt-wan2.1-14b.yaml"),
        ("Wan 2.1 14B", "DMD2", "configs/recipes/dmd2-wan2.1-14b.yaml"),
        ("Wan 2.2 A14B", "consistency", "configs/recipes/consistency-wan2.2-a14b.yaml"),
        ("Wan 2.2 A14B", "APT", "configs/recipes/consistency-wan2.2-a14b.yaml", ["recipe={name: apt}",
                                                                                  "data.latents=real"]),
        ("Wan 2.2 A14B", "DMD2", "configs/recipes/dmd2-wan2.2-a14b.yaml"),
        ("LTX-Video 2B", "consistency", "configs/recipes/consistency-ltx-video.yaml"),
        ("LTX-Video 2B", "DMD2", "configs/recipes/dmd2-ltx-video.yaml")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--gpu-memory", type=float, default=80.0)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.chdir(REPO)
    from distill.core.config import ConfigError
    from distill.plan import GIB, plan
    from distill.train_config import load_train_config

    print(f"| teacher | recipe | student | settings (config) | train peak GiB | build peak GiB | fits {args.gpus} x "
          f"{args.gpu_memory:g} GiB | would fit with |")
    print("|---|---|---|---|---|---|---|---|")
    for size, recipe, path, *base in ROWS:
        for student, overrides in (("full", []), ("LoRA r64", ["student.lora={rank: 64, alpha: 64}"])):
            try:
                cfg = load_train_config(path, [*(base[0] if base else []), *overrides])
                r = plan(cfg, args.gpus, args.gpu_memory)
            except ConfigError as err:  # a recipe that cannot serve this teacher
                print(f"| {size} | {recipe} | {student} | refused: {str(err).split(': ', 1)[-1]} | | | | |")
                continue
            s = r.settings
            settings = (f"ZeRO-{s.stage}{' offload' if s.offload_optimizer else ''}, bf16, ckpt "
                        f"{'on' if s.checkpointing else 'off'}, SP {s.sequence_parallel}, batch {s.batch}")
            print(f"| {size} | {recipe} | {student} | {settings} | {r.train_peak / GIB:.1f} | {r.build_peak / GIB:.1f} "
                  f"| {'yes' if r.fits else 'no'} (headroom {r.headroom / GIB:+.1f}) | "
                  f"{'; '.join(r.suggestions) if r.suggestions else '-'} |", flush=True)


if __name__ == "__main__":
    main()
