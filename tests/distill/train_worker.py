"""Run by tests under torchrun: train a short run and report, from every rank, what its weights are.

    torchrun --nproc_per_node 2 tests/distill/train_worker.py CONFIG OUT.json [key=value ...]
"""

import hashlib
import json
import sys

import torch
import torch.distributed as dist
from deepspeed.runtime.zero.partition_parameters import GatheredParameters

from distill.core.dist import leave
from distill.train import Run
from distill.train_config import load_train_config


def whole_weights(module) -> dict[str, torch.Tensor]:
    """Every weight gathered whole on every rank (ZeRO-3 partitions are all-gathered)."""
    out = {}
    for name, p in getattr(module, "module", module).named_parameters():
        with GatheredParameters([p], enabled=hasattr(p, "ds_id")):
            out[name] = p.detach().float().cpu().clone()
    return out


def digest(weights: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(weights):
        h.update(name.encode() + weights[name].numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    config, report, *overrides = sys.argv[1:]
    run = Run(load_train_config(config, overrides), progress=False)
    before = whole_weights(run.engine)
    run.loop()
    after = whole_weights(run.engine)
    changed = sorted(n for n in after if not torch.equal(before[n], after[n]))
    mine = {"digest": digest(after), "ema_digest": digest(whole_weights(run.ema_module)) if run.ema_module else None}
    ranks = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, mine)
    if dist.get_rank() == 0:
        json.dump({"ranks": ranks, "changed": changed, "trainable": sorted(run.trainable_names),
                   "all_weights": sorted(after),
                   "engine_steps": {name: e.global_steps for name, e in run.engines.items()}}, open(report, "w"))
    leave()


if __name__ == "__main__":
    main()
