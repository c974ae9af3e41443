"""`distill train` and `distill export`: the command-line face of the engine."""

from __future__ import annotations

import argparse
import os
import sys


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "train", help="distil a student (launch alone, or with torchrun / deepspeed / accelerate launch)",
        description="Train a few-step student from CONFIG (configs/recipes/*.yaml) with key=value overrides. "
                    "Multi-GPU: torchrun --nproc_per_node N -m distill.cli train CONFIG ...")
    p.add_argument("config", help="a recipe config YAML (for example configs/recipes/consistency-tiny.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (for example train.steps=100)")
    p.add_argument("--resume", metavar="latest|DIR", help="continue a run: 'latest' in its out folder, a run "
                                                           "folder, or a checkpoint folder")
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # the deepspeed launcher's
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from distill.monitor import TrainingAborted
    from distill.train import train
    from distill.train_config import load_train_config

    cfg = load_train_config(args.config, args.overrides)  # a bad config stops here, before any process group
    try:
        last = train(cfg, resume=args.resume, progress=not args.no_progress)
    except TrainingAborted as err:
        print(f"distill train: stopped: {err}", file=sys.stderr)
        return 3
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"done: {cfg.out} (loss {last.get('loss', float('nan')):.4g})")
    return 0
