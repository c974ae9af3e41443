"""Run by tests under torchrun: build (and optionally train) one or more runs in one job, and report, from every
rank, a digest of each of the run's networks (the student, each recipe network, the EMA) after the build and after
the steps. One job runs many cases so that a matrix of ZeRO stages and LoRA/full pays torchrun's start-up once.

    torchrun --nproc_per_node 2 tests/distill/ranks_worker.py CASES.json OUT.json

CASES.json: [{"name": ..., "config": PATH, "overrides": [key=value, ...], "train": bool,
               "fire_on": [RANK, STEP], "stop_on": [RANK, STEP]}, ...]

`fire_on` and `stop_on` inject a rank-local anomaly: a monitor that asks for a checkpoint, or a stop, on that
rank alone at that step; the report then says where each rank stopped and which checkpoints the run kept.
"""

import gc
import json
import sys
from pathlib import Path

import torch.distributed as dist

from distill.core.dist import leave
from distill.monitor import TrainingAborted
from distill.train import Run
from distill.train_config import load_train_config
from tests.distill.train_worker import digest, whole_weights


def digests(run: Run) -> dict[str, str]:
    """Every network that trains or that a loss reads beside the teacher, as the rank holds it (gathered whole)."""
    nets = {name: engine for name, engine in run.engines.items()}
    nets.update({f"frozen:{name}": module for name, module in run.networks.frozen.items()})
    if run.ema_module is not None:
        nets["ema"] = run.ema_module
    return {name: digest(whole_weights(module)) for name, module in sorted(nets.items())}


class FiresOnOneRank:
    """A recipe monitor that asks for a checkpoint on one rank alone (every rank has it; one rank's fires)."""

    name = "fires_on_one_rank"

    def __init__(self, rank: int, at: tuple[int, int]):
        self.fires = rank == at[0]
        self.step = at[1]

    def check(self, step: int, losses: dict) -> bool:
        return self.fires and step == self.step

    def state(self) -> dict:
        return {}


def inject(run: Run, case: dict) -> None:
    rank = dist.get_rank()
    if "fire_on" in case:
        run.monitors.append(FiresOnOneRank(rank, tuple(case["fire_on"])))
    if "stop_on" in case and rank == case["stop_on"][0]:
        own = run.stop_reason
        at = case["stop_on"][1]
        run.stop_reason = lambda step, last: f"step {step}: injected on rank {rank}" if step == at else own(step, last)


def main() -> None:
    cases_path, report = sys.argv[1:]
    cases = json.loads(Path(cases_path).read_text())
    results = {}
    for case in cases:
        run = Run(load_train_config(case["config"], case.get("overrides", [])), progress=False)
        mine = {"built": digests(run)}
        if case.get("train"):
            inject(run, case)
            try:
                run.loop()
                mine["trained"] = digests(run)
            except TrainingAborted as err:
                mine["aborted"] = str(err)
            kept = run.out / "checkpoints"
            mine["checkpoints"] = sorted(p.name for p in kept.glob("step-*")) if kept.is_dir() else []
        ranks = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, mine)
        results[case["name"]] = ranks
        del run
        gc.collect()
    if dist.get_rank() == 0:
        Path(report).write_text(json.dumps(results))
    leave()


if __name__ == "__main__":
    main()
