"""What a run reports: a console progress bar (loss, lr, samples/s, ETA), `metrics.jsonl`, and wandb (offline
unless configured online). Only rank 0 reports."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from tqdm.auto import tqdm

from distill.train_config import TrainConfig


class TrainingAborted(RuntimeError):
    """The loss went bad; the run stopped and its last good checkpoint is kept."""


class LossGuard:
    """Stops a run whose loss is not finite, or exceeds `ratio` times its running mean after `warmup` steps."""

    def __init__(self, ratio: float | None, warmup: int, state: dict | None = None):
        self.ratio, self.warmup = ratio, warmup
        self.mean = (state or {}).get("mean")
        self.count = (state or {}).get("count", 0)

    def check(self, step: int, loss: float) -> None:
        if not math.isfinite(loss):
            raise TrainingAborted(f"step {step}: the loss is {loss}")
        if self.ratio and self.count >= self.warmup and self.mean is not None and loss > self.ratio * self.mean:
            raise TrainingAborted(f"step {step}: the loss {loss:.4g} exploded (more than {self.ratio}x its running "
                                  f"mean {self.mean:.4g})")
        self.mean = loss if self.mean is None else 0.95 * self.mean + 0.05 * loss
        self.count += 1

    def state(self) -> dict:
        return {"mean": self.mean, "count": self.count}


def set_aside(metrics: Path, start_step: int) -> None:
    """A resumed run continues metrics.jsonl from its checkpoint's step: what the interrupted run logged after it
    (or, starting at step 0, everything) moves to metrics.superseded.jsonl, never deleted; the rewrite is atomic."""
    lines = metrics.read_text().splitlines()

    def step(line: str) -> int:
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):  # a line cut by a kill mid-write
            return start_step + 1
    later = [line for line in lines if step(line) > start_step]
    if not later:
        return
    with (metrics.parent / "metrics.superseded.jsonl").open("a") as f:
        f.write("".join(line + "\n" for line in later))
    part = metrics.parent / ".metrics.jsonl.tmp"
    part.write_text("".join(line + "\n" for line in lines if step(line) <= start_step))
    os.replace(part, metrics)


class Monitor:
    def __init__(self, cfg: TrainConfig, out: Path, start_step: int, rank: int, samples_per_step: int,
                 progress: bool = True):
        self.rank, self.out = rank, out
        self.samples_per_step = samples_per_step
        self.steps = cfg.train.steps
        self.wandb = None
        self.bar = None
        if rank != 0:
            return
        metrics = out / "metrics.jsonl"
        if metrics.is_file():
            set_aside(metrics, start_step)
        self.metrics = metrics.open("a")
        self.bar = tqdm(total=cfg.train.steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                        disable=not progress)
        if cfg.wandb.mode != "disabled":
            import wandb

            self.wandb = wandb.init(project=cfg.wandb.project, name=cfg.wandb.name or out.name, dir=str(out),
                                    mode=cfg.wandb.mode, config=cfg.model_dump(mode="json"), resume="allow",
                                    id=_run_id(out))
        self._t = time.perf_counter()
        self._last_step = start_step

    def log(self, step: int, values: dict) -> None:
        if self.rank != 0:
            return
        now = time.perf_counter()
        rate = (step - self._last_step) * self.samples_per_step / max(now - self._t, 1e-9)
        self._t, self._last_step = now, step
        record = {"step": step, **values, "samples_per_s": rate}
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        self.bar.set_postfix(loss=f"{values['loss']:.4g}", lr=f"{values['lr']:.2g}", samples_s=f"{rate:.1f}")
        if self.wandb is not None:
            self.wandb.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=step)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def videos(self, step: int, paths: list[Path], captions: list[str], fps: int) -> None:
        if self.rank != 0 or self.wandb is None:
            return
        import wandb

        self.wandb.log({"validation": [wandb.Video(str(p), caption=c, format="mp4") for p, c in zip(paths, captions)]},
                       step=step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.rank == 0:
            self.metrics.close()
        if self.wandb is not None:
            self.wandb.finish()


def _run_id(out: Path) -> str:
    """A stable wandb id per run folder, so a resumed run continues the same wandb run."""
    path = out / "wandb_id"
    if not path.is_file():
        import secrets

        path.write_text(secrets.token_hex(4))
    return path.read_text().strip()
