"""`distill train`: distil a student from a recipe config (alone, or under torchrun / deepspeed / accelerate)."""

from __future__ import annotations

import argparse
import os


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="distil a student (launch alone, or with torchrun / deepspeed / accelerate launch)",
        description="Train a few-step student from CONFIG (configs/recipes/*.yaml) with key=value overrides. "
                    "Multi-GPU: torchrun --nproc_per_node N -m distill.cli train CONFIG ...\n"
                    "Exit 3 when the loss guard stopped the run (its last good checkpoint is kept).")
    p.add_argument("config", help="a recipe config YAML (for example configs/recipes/consistency-tiny.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (for example train.steps=100)")
    p.add_argument("--resume", metavar="latest|DIR", help="continue a run: 'latest' in its out folder, a run "
                                                           "folder, or a checkpoint folder")
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # the deepspeed launcher's
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from distill.checkpoint import check_out_folder
    from distill.commands import no_progress_bars
    from distill.core.paths import check_output_dir
    from distill.train import train
    from distill.train_config import load_train_config

    cfg = load_train_config(args.config, args.overrides)  # a bad config stops here, before any process group
    check_out_folder(cfg.out)
    check_output_dir(cfg.out, "out")
    if args.no_progress:
        no_progress_bars()
    last = train(cfg, resume=args.resume, progress=not args.no_progress)  # TrainingAborted: exit 3 (distill.cli)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"done: {cfg.out} (loss {last.get('loss', float('nan')):.4g})")
    return 0
