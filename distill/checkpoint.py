"""Checkpoints: everything a run needs to continue exactly, written atomically.

    RUN/checkpoints/step-000200/
        engines/<network>/    each trainable network's DeepSpeed engine: weights, optimiser, LR schedule
        student/              the exported weights as a diffusers transformer folder (full runs), or
        lora/                 the adapter in diffusers' LoRA format (LoRA runs)
        ema.safetensors       the EMA of the trainable weights (unless student/ already holds exactly that)
        rng/rank{r}.safetensors   torch (and CUDA) RNG states and the loop's generator, per rank
        config.yaml, meta.json    the resolved config, step, data position, fingerprint, code version
    RUN/checkpoints/latest    the name of the newest complete checkpoint

A checkpoint is written into `.tmp-step-N/`, and renamed only when every rank has finished writing; `latest` is
replaced atomically after that. A crash or kill at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from safetensors.torch import load_file, save_file

from distill.core.config import ConfigError
from distill.core.dist import barrier, rank_world
from distill.core.env import code_version, environment
from distill.train_config import ADDED_SINCE_CHECKPOINTS, TrainConfig, fingerprint, fingerprint_hash, with_legacy_values


def step_name(step: int) -> str:
    return f"step-{step:06d}"


# --- RNG --------------------------------------------------------------------------------------------------------
def rng_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state(), "loop": generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["loop"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# --- writing ----------------------------------------------------------------------------------------------------
def save(root: Path, step: int, cfg: TrainConfig, engines: dict, generator: torch.Generator, write_weights,
         meta: dict, keep: int) -> Path:
    """Write checkpoint `step` under root/checkpoints (every rank calls this; collectives inside).

    `write_weights(folder)` writes student/ or lora/ and ema.safetensors (collective under ZeRO-3)."""
    ckpts = root / "checkpoints"
    final = ckpts / step_name(step)
    tmp = ckpts / f".tmp-{step_name(step)}"
    if rank_world()[0] == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "rng").mkdir(parents=True)
    barrier()
    for name, engine in engines.items():
        engine.save_checkpoint(str(tmp / "engines"), tag=name, save_latest=False)
    write_weights(tmp)
    save_file(rng_state(generator), tmp / "rng" / f"rank{rank_world()[0]}.safetensors")
    barrier()
    if rank_world()[0] == 0:
        (tmp / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        full_meta = {"step": step, "fingerprint": fingerprint_hash(cfg), "code_version": code_version(),
                     "environment": environment(),
                     "world_size": dist.get_world_size() if dist.is_initialized() else 1,
                     "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **meta}
        (tmp / "meta.json").write_text(json.dumps(full_meta, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        latest_tmp = ckpts / ".latest.tmp"
        latest_tmp.write_text(final.name + "\n")
        os.replace(latest_tmp, ckpts / "latest")
        for old in sorted(ckpts.glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


# --- finding and checking -------------------------------------------------------------------------------------------
RUN_MARKERS = ("checkpoints", "config.yaml", "metrics.jsonl")  # what a run writes into its out folder first


def check_out_folder(out: str | Path) -> None:
    """A run writes into a folder that is missing, empty, or a run already (to resume, or refused later as taken);
    never into someone's non-empty folder, whose files it would mix with its own."""
    out = Path(out).expanduser()
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"out: {str(out)!r} is a file, not a folder; choose another out=")
    if any(out.iterdir()) and not any((out / name).exists() for name in RUN_MARKERS):
        raise ConfigError(f"out: {str(out)!r} exists, is not empty and is not a training run (none of "
                          f"{', '.join(RUN_MARKERS)}); choose another out= or empty it")


def find(run: str | Path, checkpoint: str = "latest") -> Path:
    """A checkpoint folder: `run` itself when it is one, else the run folder's `latest` or its checkpoint named
    `checkpoint` (e.g. step-000200)."""
    root = Path(run).expanduser()
    if not root.is_dir():
        raise ConfigError(f"{str(root)!r} does not exist or is not a folder; give a run folder (the `out` of "
                          f"`distill train`) or one of its checkpoints/step-N folders")
    if (root / "meta.json").is_file():
        if checkpoint != "latest":
            raise ConfigError(f"{str(root)!r} is already a checkpoint folder; a checkpoint name ({checkpoint!r}) "
                              f"applies to run folders only")
        return root
    ckpts = root / "checkpoints"
    if checkpoint == "latest":
        latest = ckpts / "latest"
        if not latest.is_file():
            raise ConfigError(f"no checkpoint under {str(root)!r} (neither a checkpoints/latest file nor a "
                              f"meta.json); has `distill train` written a checkpoint there yet?")
        folder = ckpts / latest.read_text().strip()
        named_by = f"{str(latest)!r}"
    else:
        folder = ckpts / checkpoint
        named_by = repr(checkpoint)
    if not (folder / "meta.json").is_file():
        known = sorted(p.name for p in ckpts.glob("step-*") if (p / "meta.json").is_file()) if ckpts.is_dir() else []
        raise ConfigError(f"checkpoint {str(folder)!r} named by {named_by} is missing or incomplete (no meta.json); "
                          f"complete checkpoints there: {known}")
    return folder


def check_compatible(folder: Path, cfg: TrainConfig, world_size: int, teacher_hash: str | None = None) -> dict:
    """Refuse to resume from a checkpoint of a different config (naming the keys that differ), of another world
    size, or trained against other teacher weights (`teacher_hash`: the teacher folder's `checkpoint_hash`)."""
    meta = json.loads((folder / "meta.json").read_text())
    check_teacher(folder, meta, teacher_hash, "--resume")
    if meta["fingerprint"] != fingerprint_hash(cfg):
        saved = TrainConfig.model_validate(with_legacy_values(yaml.safe_load((folder / "config.yaml").read_text())))
        a, b = fingerprint(saved), fingerprint(cfg)
        a = {**{k: v for k, v in ADDED_SINCE_CHECKPOINTS.items() if k in b}, **a}  # a dropped key held its legacy value
        diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        shown = ", ".join(f"{k}: {a.get(k)!r} there, {b.get(k)!r} here" for k in diff[:6])
        raise ConfigError(f"--resume: checkpoint {str(folder)!r} comes from another config ({shown}); "
                          f"start a new run folder or use the same config")
    if meta["world_size"] != world_size:
        raise ConfigError(f"--resume: checkpoint {str(folder)!r} was written by {meta['world_size']} ranks, this job "
                          f"has {world_size}; exact resume needs the same number (consolidate with `distill export` "
                          f"and start a new run from it with student.init)")
    return meta


def load_rng(folder: Path, generator: torch.Generator) -> None:
    set_rng_state(load_file(folder / "rng" / f"rank{rank_world()[0]}.safetensors"), generator)


def check_teacher(folder: Path, meta: dict, teacher_hash: str | None, what: str) -> None:
    """A student belongs to the teacher weights it was distilled from: same name, other weights is refused."""
    if teacher_hash is not None and meta.get("teacher_hash") not in (None, teacher_hash):
        raise ConfigError(f"{what}: checkpoint {str(folder)!r} was distilled from teacher {meta.get('teacher')!r} "
                          f"with weights hash {meta['teacher_hash']}, but that teacher now hashes {teacher_hash} "
                          f"(its weights or configs changed); start a new run folder")
