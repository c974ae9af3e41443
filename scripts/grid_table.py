"""Print the few-step grids of docs/recipes/grids.md, and measure how much each step of a grid does.

    python scripts/grid_table.py                  # the table of levels per rule, shift and step count
    python scripts/grid_table.py --measure        # + per-step work with the tiny teacher (CPU, ~1 min)

The measurement runs an ideal student: at each level t_i of the grid the clean estimate is the teacher's own ODE
solution from x_{t_i} to 0 (Euler on its shifted 50-step grid below t_i, CFG as configured), then it re-noises to
t_{i+1} with fresh noise, as the multistep consistency sampler does. A step's work is how far it moves the clean
estimate, ‖x0_i − x0_{i−1}‖ / ‖x0_final‖ (RMS over clips); a step that moves it by ~0 is a wasted step.
"""

from __future__ import annotations

import argparse

import torch

from distill.teachers.samplers import GRIDS, sample_euler, student_levels
from distill.teachers.schedule import flow_sigmas

SHIFTS = {3.0: "tiny teachers", 5.0: "Wan 2.1 14B, Self-Forcing", 8.0: "Wan 2.1 1.3B", 12.0: "Wan 2.2 A14B"}


def fmt(levels: torch.Tensor) -> str:
    return "[" + ", ".join(f"{float(v):.3g}" for v in levels) + "]"


def table(steps_list=(1, 2, 4)) -> str:
    head = "| rule | shift | " + " | ".join(f"{n} steps" for n in steps_list) + " |"
    rows = [head, "|" + "---|" * (len(steps_list) + 2)]
    for grid in GRIDS:
        for shift, who in SHIFTS.items():
            if grid == "uniform" and shift != 3.0:
                continue  # unshifted: the same for every shift
            cells = [fmt(student_levels(n, shift, grid)) for n in steps_list]
            label = "any" if grid == "uniform" else f"{shift:g} ({who})"
            rows.append(f"| {grid} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


@torch.no_grad()
def measure(steps: int = 4, clips: int = 4, ode_steps: int = 50) -> str:
    from distill.teachers.config import load_teacher, load_teacher_config

    cfg = load_teacher_config("tiny-wan")
    teacher = load_teacher(cfg)
    v, s = cfg.video, cfg.sampler
    prompts = _prompts(clips)
    cond = teacher.encode(prompts, cfg.negative_prompt if s.guidance > 1 else None)
    model = lambda x, t: teacher.velocity(x, t, cond, s.guidance)  # noqa: E731
    fine = flow_sigmas(ode_steps, s.shift).to(torch.float64)
    rows = ["| grid (shift 3, tiny teacher) | levels | work of step 1..N: ‖Δx0‖ / ‖x0‖ |", "|---|---|---|"]
    for grid in GRIDS:
        levels = student_levels(steps, s.shift, grid)
        x = teacher.noise(clips, v.frames, v.height, v.width, seed=list(range(clips)))
        g = torch.Generator().manual_seed(1234)
        estimates = []
        for i, level in enumerate(levels):
            below = fine[fine < level]
            x0 = sample_euler(model, x, torch.cat([level.reshape(1), below]))
            estimates.append(x0)
            if i + 1 < len(levels):
                t = float(levels[i + 1])
                x = (1 - t) * x0 + t * torch.randn(x0.shape, generator=g)
        final = estimates[-1].flatten(1).norm(dim=1)
        work = [float(estimates[0].flatten(1).norm(dim=1).div(final).pow(2).mean().sqrt())]
        work += [float((b - a).flatten(1).norm(dim=1).div(final).pow(2).mean().sqrt())
                 for a, b in zip(estimates, estimates[1:])]
        rows.append(f"| {grid} | {fmt(levels)} | " + ", ".join(f"{w:.3f}" for w in work) + " |")
    return "\n".join(rows)


def _prompts(n: int) -> list[str]:
    """n captions of the toy world, one per shape (cycling), each colour in turn, moving left slowly on black."""
    from distill import toyworld

    colours = list(toyworld.COLOURS)
    return [toyworld.Attributes(toyworld.SHAPES[i % len(toyworld.SHAPES)], colours[i % len(colours)], "black", "left",
                                "slowly").caption() for i in range(n)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--measure", action="store_true", help="also measure per-step work with the tiny teacher")
    p.add_argument("--clips", type=int, default=4)
    args = p.parse_args()
    print(table())
    if args.measure:
        print()
        print(measure(clips=args.clips))


if __name__ == "__main__":
    main()
