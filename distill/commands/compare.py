"""`distill compare`: train several recipes, score them in one eval, write a comparison (see `distill.compare`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from distill import compare
from distill.core.config import ConfigError
from distill.core.paths import check_output_dir


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="train recipes, score them in one eval, write comparison.md / .json",
                       description=compare.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="a compare config: a YAML file, or a name under configs/compare/ (toyworld, demo)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the compare config (nproc=1, "
                                                                     "baselines=[teacher@8], ...)")
    p.add_argument("--out", type=Path, help="output folder: one subfolder per run, eval.json, summary.md, "
                                            "report.html, comparison.md, comparison.json (default "
                                            "runs/compare-CONFIG)")
    p.add_argument("--nproc", type=int, help="training ranks per run (default: the config's nproc)")
    p.add_argument("--fast", action="store_true", help="a few steps per run and a small suite: checks the plumbing, "
                                                       "not quality")
    p.add_argument("--dry-run", action="store_true", help="check the config and print the plan; run nothing")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.nproc is not None and args.nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {args.nproc}")
    path = compare.resolve_config(args.config)
    out = args.out if args.out is not None else Path("runs") / f"compare-{path.stem}"
    check_output_dir(out)
    plan = compare.plan(path, args.overrides, out, nproc=args.nproc, fast=args.fast)
    if args.dry_run:
        print(compare.describe(plan))
        return 0
    start = time.perf_counter()
    _, comparison = compare.run_compare(plan)
    print(compare.comparison_markdown(comparison))
    compare.say(f"compare finished in {(time.perf_counter() - start) / 60:.1f} min: {out / 'comparison.md'}, "
                f"{out / 'summary.md'}, {out / 'report.html'}")
    return 0
