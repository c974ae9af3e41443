#!/usr/bin/env python
"""Compiled against eager sampling, side by side in one run: what `--compile` buys (or costs) on this device.

    python scripts/bench_compile.py                                  # the built-in teacher, 17x64x64, on CPU
    python scripts/bench_compile.py --repeats 2 --out /tmp/compile.json

The teacher's DiT runs eager, and a copy of it compiled as `distill sample --compile` / `distill eval --compile`
compile it (teachers/compiling.py: inductor, each expert in place), on the same prompt, seed and conditioning,
one clip at a time (batch 1). Rows: the teacher at 50 UniPC steps with CFG (100 NFE: one batch-2 forward per
step), at 4 Euler steps with CFG (8 NFE) and a student's 4 consistency steps without CFG (4 NFE: batch-1
forwards, a second compiled graph). Each row's first compiled clip compiles what it needs and is timed apart as
its compile time; then one untimed clip of each, then `--repeats` rounds alternating eager and compiled, the
denoising timed (the text is encoded once outside the clock; the VAE decode is not what is compiled and is left
out). Agreement: the largest absolute difference of the latents, and of the decoded uint8 clips, between the
compiled and the eager clip of each row. Writes a JSON (--out) and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from distill.core.env import environment  # noqa: E402
from distill.teachers.compiling import check_compile, compile_dit  # noqa: E402
from distill.teachers.conditioning import CondCache  # noqa: E402
from distill.teachers.config import load_teacher, load_teacher_config  # noqa: E402

PROMPT = "a red circle moving left slowly on a black background"
ROWS = (("teacher@50 (unipc, CFG)", 50, "unipc", True), ("teacher@4 (euler, CFG)", 4, "euler", True),
        ("student@4 (consistency, no CFG)", 4, "consistency", False))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="tiny-wan", help="teacher config name, YAML or source (default tiny-wan)")
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="timed clips per row and mode (default 3)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "compile.json")
    return p.parse_args(argv)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = load_teacher_config(args.teacher, [f"device={args.device}"])
    device = torch.device(args.device)
    t0 = time.perf_counter()
    check_compile(device)  # CompileUnavailable names why, as the commands' --compile does
    trial_s = time.perf_counter() - t0
    teacher = load_teacher(cfg)
    eager = teacher.dit
    teacher.dit = copy.deepcopy(eager)
    compile_dit(teacher)
    compiled, teacher.dit = teacher.dit, eager
    s = cfg.sampler
    clip = dict(frames=args.frames, height=args.height, width=args.width)
    conds = {cfg_on: CondCache().encode(teacher, [PROMPT], cfg.negative_prompt if cfg_on else None)
             for cfg_on in (True, False)}

    def run(dit, steps: int, sampler: str, cfg_on: bool) -> tuple[float, torch.Tensor]:
        teacher.dit = dit
        sync(device)
        start = time.perf_counter()
        latents = teacher.sample([PROMPT], steps=steps, guidance=s.guidance if cfg_on else 1.0, shift=s.shift,
                                 seed=7, sampler=sampler, cond=conds[cfg_on], **clip)
        sync(device)
        return time.perf_counter() - start, latents

    rows = []
    for name, steps, sampler, cfg_on in ROWS:
        first_s, _ = run(compiled, steps, sampler, cfg_on)  # compiles the graph this row's shapes need
        warm_eager_s, eager_latents = run(eager, steps, sampler, cfg_on)
        _, compiled_latents = run(compiled, steps, sampler, cfg_on)
        times = {"eager": [], "compiled": []}
        for _ in range(args.repeats):
            for mode, dit in (("eager", eager), ("compiled", compiled)):
                times[mode].append(run(dit, steps, sampler, cfg_on)[0])
        med = {mode: statistics.median(v) for mode, v in times.items()}
        pixels_eager, pixels_compiled = (teacher.decode(z).to(torch.int16) for z in (eager_latents, compiled_latents))
        pixel_diff = (pixels_compiled - pixels_eager).abs()
        row = {"name": name, "steps": steps, "sampler": sampler, "nfe": steps * (2 if cfg_on else 1),
               "eager_s": med["eager"], "compiled_s": med["compiled"], "speedup": med["eager"] / med["compiled"],
               "runs_s": times, "first_compiled_clip_s": first_s,
               "compile_s": max(first_s - warm_eager_s, 0.0),
               "max_abs_diff_latents": (compiled_latents - eager_latents).abs().max().item(),
               "max_abs_diff_uint8": int(pixel_diff.max()),
               "pixels_differing": float((pixel_diff > 0).float().mean())}
        rows.append(row)
        print(f"{name}: eager {row['eager_s']:.3f} s, compiled {row['compiled_s']:.3f} s "
              f"({row['speedup']:.2f}x); compile {row['compile_s']:.1f} s; max abs diff latents "
              f"{row['max_abs_diff_latents']:.2e}, uint8 {row['max_abs_diff_uint8']}", file=sys.stderr, flush=True)
    result = {"schema": "distill.bench_compile/1", "teacher": cfg.source, "device": str(device),
              "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "clip": clip, "prompt": PROMPT, "repeats": args.repeats, "trial_compile_s": trial_s,
              "rows": rows, "env": environment()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print("| model | NFE | eager s | compiled s | speed-up | compile s | max abs diff (latents / uint8) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['nfe']} | {r['eager_s']:.3f} | {r['compiled_s']:.3f} | {r['speedup']:.2f}x | "
              f"{r['compile_s']:.1f} | {r['max_abs_diff_latents']:.1e} / {r['max_abs_diff_uint8']} |")
    print(args.out, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
