"""`distill gate`: pass or fail an eval.json against a gate policy (exit 0 pass, 1 regression, 2 error)."""

from __future__ import annotations

from pathlib import Path

from distill.core.paths import check_output_dir


def add_parser(sub) -> None:
    g = sub.add_parser("gate", help="pass/fail an eval.json against a policy (exit 0 pass, 1 regression, 2 error)",
                       description="Apply a gate policy to eval.json: absolute bounds and bounds relative to the "
                                   "teacher (interval-aware), and regressions against a baseline eval.json of the "
                                   "same prompts and seeds by the paired fixed-suite test (per clip, seed-level "
                                   "standard error, Holm-corrected over rules x models). Writes gate.json, "
                                   "gate.junit.xml and gate.md. Exit 0 on pass, 1 on a regression, 2 on an error.")
    g.add_argument("--current", type=Path, required=True)
    g.add_argument("--baseline", type=Path, help="an eval.json of the same suite (prompts, seeds, protocol), e.g. "
                                                 "from main; refused, by name, when they differ")
    g.add_argument("--policy", type=Path, required=True, help="e.g. configs/eval/gates/toyworld.yaml")
    g.add_argument("--out", type=Path, help="where gate.* go (default: next to --current)")
    g.set_defaults(func=run)


def run(args) -> int:
    from distill.eval.gate import run_gate

    out = args.out or args.current.parent
    check_output_dir(out)
    return run_gate(args.current, args.baseline, args.policy, out)
