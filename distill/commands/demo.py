"""`distill demo`: distil, post-train and score students of the built-in teacher (see `distill.demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from distill import demo
from distill.core.paths import check_output_dir
from distill.core.config import ConfigError


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="distil, post-train and score students of the built-in teacher (make demo)",
                       description=demo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--nproc", type=int, default=2, help="training ranks (default 2)")
    p.add_argument("--fast", action="store_true", help="a few steps per stage: checks the plumbing, not quality")
    p.set_defaults(func=run)


def run(args) -> int:
    from distill.eval.report import summary_markdown

    if args.nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {args.nproc}")
    check_output_dir(args.out)
    result = demo.run_demo(args.out, nproc=args.nproc, fast=args.fast)
    print(summary_markdown(result))
    return 0
