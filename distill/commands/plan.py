"""`distill plan`: the per-rank memory of a training run before it is launched (distill/plan.py)."""

from __future__ import annotations

import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "plan", help="per-GPU memory of a training run: does it fit, and what would make it fit",
        description="Predict the per-rank memory of `distill train CONFIG` on N GPUs: model states per ZeRO stage, "
                    "the frozen teacher, the EMA, the discriminator, activations at the run's clip size, DeepSpeed "
                    "buffers and fixed overheads. Exit 0 when it fits, 2 (one line naming the largest items) when "
                    "it does not. Sequence parallelism: parallel.sequence=N.\n"
                    "  distill plan configs/recipes/consistency-tiny.yaml --gpus 8 --gpu-memory 80")
    p.add_argument("config", help="a recipe config YAML (configs/recipes/*.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (for example "
                                                                     "student.gradient_checkpointing=false)")
    p.add_argument("--gpus", type=int, required=True, help="ranks of the job (one GPU each)")
    p.add_argument("--gpu-memory", type=float, required=True, metavar="GiB", help="memory of one GPU in GiB")
    p.set_defaults(func=run)


def run(args) -> int:
    from distill.core.config import ConfigError
    from distill.plan import plan, refusal
    from distill.train_config import load_train_config

    if args.gpus < 1 or args.gpu_memory <= 0:
        raise ConfigError(f"--gpus {args.gpus} --gpu-memory {args.gpu_memory}: need at least 1 GPU and a positive "
                          f"memory")
    cfg = load_train_config(args.config, args.overrides)
    result = plan(cfg, args.gpus, args.gpu_memory)
    print(result.table())
    if result.fits:
        return 0
    print(f"distill plan: {refusal(result)}", file=sys.stderr)
    return 2
