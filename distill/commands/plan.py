"""`distill plan`: the per-rank memory of a training run before it is launched (distill/plan.py)."""

from __future__ import annotations

import math
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


# What exists, with room to grow: the largest training clusters built hold about 200,000 GPUs, and the largest
# accelerator memory is 288 GB (B300, MI355X). A plan beyond these bounds is a typo (GiB given in bytes, an extra
# zero), and saying "fits" to it would be false comfort.
MAX_GPUS = 1 << 18  # 262,144
MAX_GPU_MEMORY_GIB = 1024.0


def check_sizes(gpus: int, gpu_memory: float) -> None:
    from distill.core.config import ConfigError

    if not 1 <= gpus <= MAX_GPUS:
        raise ConfigError(f"--gpus {gpus}: give 1 to {MAX_GPUS} (the largest GPU clusters built hold about "
                          f"200,000 GPUs)")
    if not (math.isfinite(gpu_memory) and 0 < gpu_memory <= MAX_GPU_MEMORY_GIB):
        raise ConfigError(f"--gpu-memory {gpu_memory:g}: give one GPU's memory in GiB, above 0 and at most "
                          f"{MAX_GPU_MEMORY_GIB:g} (the largest accelerators have 288 GB); e.g. 80 for an H100")


def run(args) -> int:
    from distill.data import cheap_size, check_batch_fits
    from distill.plan import plan, refusal
    from distill.train_config import load_train_config

    check_sizes(args.gpus, args.gpu_memory)
    cfg = load_train_config(args.config, args.overrides)
    size = cheap_size(cfg.data)  # the data must fill one step on this many replicas, as distill train will check
    if size is not None:
        check_batch_fits(cfg.data, size, max(1, args.gpus // cfg.parallel.sequence))
    result = plan(cfg, args.gpus, args.gpu_memory)
    print(result.table())
    if result.fits:
        return 0
    print(f"distill plan: {refusal(result)}", file=sys.stderr)
    return 2
