#!/usr/bin/env python
"""What rCM's JVP costs, in DiT forward passes, measured side by side in one run.

    python scripts/bench_jvp.py                       # the built-in teacher's DiT, a batch of 4 toy clips, CPU
    python scripts/bench_jvp.py --batch 2 --repeats 5 --out /tmp/jvp.json

The engine logs the JVP as one DiT pass (`passes` in metrics.jsonl), though forward-mode AD computes a primal and
a tangent through every layer, on the math attention path (students/rcm.py: `MathAttention`). This times, on the
same inputs and in alternating rounds, what an rCM step runs through the student's DiT:

    forward      no grad, the attention backend diffusers picks (what `passes` counts as 1)
    forward-math no grad, attention on the math path in the JVP's query chunks (the JVP's primal alone)
    jvp          `students.rcm.jvp` along (x, t), as `RCM.scm_loss` calls it
    fwd+bwd      a forward with grad and its backward (the sCM loss's F_θ)

and reports each as a multiple of `forward` (medians over --repeats rounds), so a run's cost in forward passes is
its logged passes plus (jvp ratio − 1) per JVP. Writes a JSON (--out) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from distill.core.env import environment  # noqa: E402
from distill.students.rcm import MathAttention, jvp  # noqa: E402
from distill.teachers.config import load_teacher, load_teacher_config  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="tiny-wan", help="teacher config name, YAML or source (default tiny-wan)")
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch", type=int, default=4, help="clips per forward (rcm-tiny's batch: 4)")
    p.add_argument("--chunk", type=int, default=1024, help="the JVP's attention query chunk (recipe default 1024)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "jvp.json")
    return p.parse_args(argv)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> int:
    args = parse_args(argv)
    teacher = load_teacher(load_teacher_config(args.teacher), device="cpu")
    dit = teacher.dit.float().requires_grad_(True)  # as a trained student: fwd+bwd computes weight gradients
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, *teacher.latent_shape(args.frames, args.height, args.width), generator=g)
    t = torch.rand(args.batch, generator=g, dtype=torch.float64)
    embeds = teacher.embed(["a red disc moving left slowly on a black background"] * args.batch)
    tangents = (torch.randn(x.shape, generator=g), torch.rand(args.batch, generator=g, dtype=torch.float64))

    def velocity(x_, t_):
        return teacher.forward(dit, x_, t_, embeds)

    def forward():
        with torch.no_grad():
            velocity(x, t)

    def forward_math():
        with torch.no_grad(), MathAttention(args.chunk):
            velocity(x, t)

    def tangent():
        jvp(velocity, (x, t), tangents, args.chunk)

    def forward_backward():
        dit.zero_grad(set_to_none=True)
        velocity(x, t).float().square().mean().backward()

    rows = {"forward": forward, "forward-math": forward_math, "jvp": tangent, "fwd+bwd": forward_backward}
    for fn in rows.values():  # warm-up: allocator, thread pools
        fn()
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(args.repeats):
        for name, fn in rows.items():
            times[name].append(timed(fn))
    base = statistics.median(times["forward"])
    result = {"teacher": args.teacher, "clip": [args.frames, args.height, args.width], "batch": args.batch,
              "tokens": teacher.family.video_factors(teacher.folder).tokens(args.frames, args.height, args.width),
              "chunk": args.chunk, "repeats": args.repeats, "env": environment(),
              "rows": {name: {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts),
                              "x_forward": statistics.median(ts) / base} for name, ts in times.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"{args.teacher}: batch {args.batch} x {result['tokens']} tokens, chunk {args.chunk}, "
          f"{args.repeats} rounds (medians; x: multiple of one forward)")
    print(f"{'pass':<14}{'median s':>10}{'min–max s':>18}{'x forward':>11}")
    for name, row in result["rows"].items():
        print(f"{name:<14}{row['median_s']:>10.4f}{row['min_s']:>9.4f}–{row['max_s']:<8.4f}{row['x_forward']:>11.2f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
