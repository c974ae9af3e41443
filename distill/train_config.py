"""The typed config of a training run (`distill train CONFIG.yaml key=value ...`).

One YAML file says everything a run needs: the teacher, the recipe and its hyperparameters, how the student is
made (full or LoRA), the data, the optimiser, the DeepSpeed config file, and the loop's intervals. Everything is
checked here, before a process touches a GPU, a dataset or a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from distill.core.config import CONFIG_DIR, REPO_ROOT, ConfigError, Strict, apply_overrides, load_yaml, validate
from distill.students import registry as recipe_registry


# The recipe section: each recipe's own config class (students/<recipe>.py), told apart by `recipe.name`.
RecipeField = recipe_registry.config_type()


class LoraConfig(Strict):
    rank: int = Field(16, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = None  # None: the teacher family's (its attention and feed-forward layers)


class StudentConfig(Strict):
    init: str = "teacher"  # "teacher" (a copy of its DiT), or a transformer / pipeline folder of the same shape
    lora: LoraConfig | None = None
    # A teacher with experts (a two-expert family's transformer, transformer_2): the ones that train in this run, each on
    # its side of the boundary; the others keep the teacher's weights. None: all of them (one run for both).
    experts: list[str] | None = None
    gradient_checkpointing: bool = False
    ema_decay: float | None = Field(0.95, ge=0, lt=1)  # the student's EMA; None: keep no EMA
    export: Literal["ema", "online"] = "ema"  # which weights a checkpoint's student/ folder (and export) holds


class DataConfig(Strict):
    # "toyworld"; prompts: a .txt file (one per line), .jsonl / .parquet (with `prompt_column`), or a folder written
    # by `datasets.Dataset.save_to_disk`; real clips (latents: real): a folder of videos with a metadata.jsonl
    # (file_name + prompt_column per line), or a saved dataset with a `video` column (distill/videos.py).
    source: str = "toyworld"
    split: Literal["train", "held_out"] = "train"  # toy-world split
    size: int = Field(2048, ge=1)  # toy-world clips rendered (distinct render seeds)
    prompt_column: str = "prompt"
    # The conditioning image of each example, for a teacher that takes one (`distill sample --image`): a column of a
    # prompt source (.jsonl / .parquet / saved datasets folder) holding image file paths (relative to the source's
    # folder) or images. None: each real clip's first frame (data.latents: real), or no image.
    image_column: str | None = None
    batch_size: int = Field(4, ge=1)  # per rank, per micro-step
    # Clean latents x0 for the recipe: real clips (the toy world's, or a video dataset's) through the teacher's VAE
    # ("real"), or the teacher's own 50-step samples for each prompt, generated once and cached ("teacher").
    latents: Literal["real", "teacher"] = "real"
    cache_text: bool = True  # precompute text embeddings and free the text encoder
    cache_dir: str | None = None  # default: <out>/cache
    seed: int = 0


class OptimConfig(Strict):
    # AdamW (an adversarial recipe may want betas (0, 0.9)), or RMSProp with smoothing `alpha`
    name: Literal["adamw", "rmsprop"] = "adamw"
    alpha: float = Field(0.9, gt=0, lt=1)  # RMSProp's smoothing constant
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)


class TrainLoop(Strict):
    steps: int = Field(ge=1)  # optimiser steps
    grad_accum: int = Field(1, ge=1)
    seed: int = 0
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    validate_every: int | None = Field(None, ge=1)  # None: only at the end
    validation_prompts: list[str] = Field(default_factory=list)
    # Guards: stop with the last good checkpoint kept when the loss is not finite, or exceeds `explode_ratio`
    # times its running mean (after `explode_warmup` steps).
    explode_ratio: float | None = Field(20.0, gt=1)  # None: only non-finite losses stop the run (GAN losses jump)
    explode_warmup: int = Field(20, ge=0)
    collective_timeout_s: int = Field(600, ge=10)  # a rank stuck this long in a collective fails the job


class ParallelConfig(Strict):
    """How the ranks of a job share the work beyond data parallelism (docs/parallelism.md)."""

    # Ranks per sequence-parallel group: N consecutive ranks split each clip's tokens (DeepSpeed-Ulysses) in every
    # DiT forward and backward; the world/N groups are data-parallel replicas, each with its own batches.
    sequence: int = Field(1, ge=1)


class WandbConfig(Strict):
    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "distill"
    name: str | None = None


class TrainConfig(Strict):
    teacher: str  # a teacher config name, a YAML file, or a source (builtin:NAME, folder, hub id)
    teacher_dtype: Literal["float32", "bfloat16", "float16"] | None = None  # frozen copy; None: the teacher config's
    recipe: RecipeField
    student: StudentConfig = StudentConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    deepspeed: str = "configs/deepspeed/zero2.json"
    train: TrainLoop
    parallel: ParallelConfig = ParallelConfig()
    wandb: WandbConfig = WandbConfig()
    out: str = "runs/train"

    @model_validator(mode="after")
    def _ema_where_needed(self):
        if self.student.ema_decay is None and self.student.export == "ema":
            raise ValueError("student.export is 'ema' but student.ema_decay is null (no EMA is kept)")
        return self

    @model_validator(mode="after")
    def _recipe_checks(self):
        recipe_registry.get(self.recipe.name).check_run(self)
        return self

    @field_validator("deepspeed")
    @classmethod
    def _deepspeed_file_exists(cls, v: str) -> str:
        if not deepspeed_path(v).is_file():
            raise ValueError(f"DeepSpeed config file {v!r} does not exist (looked in the working directory and "
                             f"{CONFIG_DIR / 'deepspeed'})")
        return v


def deepspeed_path(ref: str) -> Path:
    for candidate in (Path(ref), REPO_ROOT / ref, CONFIG_DIR / "deepspeed" / ref, CONFIG_DIR / "deepspeed" / f"{ref}.json"):
        if candidate.is_file():
            return candidate
    return Path(ref)


# Keys a resumed run may change: how long it runs and how it reports, never what it computes.
RESUMABLE_CHANGES = ("train.steps", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
                     "train.validate_every", "train.collective_timeout_s", "wandb", "out")


# Keys added after checkpoints were written, with the value that reproduces what those checkpoints computed: left
# out of the fingerprint at that value so that those checkpoints still resume (with it set, where a new run's
# default differs), and read as that value from a saved config that lacks the key.
ADDED_SINCE_CHECKPOINTS = {"parallel.sequence": 1, "recipe.sampler.grid": "euler",
                           "recipe.t_sampling": "range-then-shift", "recipe.critic_full_range": False,
                           "recipe.fresh_critic_batch": False, "data.image_column": None}


def with_legacy_values(raw: dict) -> dict:
    """A saved config (as its YAML gives it) with each key added since it was written set to the value it was
    trained with (ADDED_SINCE_CHECKPOINTS), where the section holding the key is there."""
    raw = json.loads(json.dumps(raw))
    for key, legacy in ADDED_SINCE_CHECKPOINTS.items():
        *parents, leaf = key.split(".")
        node, model = raw, TrainConfig
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
            if p == "recipe" and model is TrainConfig:  # a union of the recipes' configs: the one it names
                name = node.get("name") if isinstance(node, dict) else None
                model = recipe_registry.get(name).Config if name in recipe_registry.names() else None
            else:
                field = model.model_fields.get(p) if model is not None else None
                model = field.annotation if field is not None and isinstance(field.annotation, type) else None
        if isinstance(node, dict) and leaf not in node and model is not None and leaf in model.model_fields:
            node[leaf] = legacy
    return raw


def fingerprint(cfg: TrainConfig) -> dict:
    """The config minus the keys a resume may change, flattened to dotted keys."""
    flat: dict = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else k)
        else:
            flat[prefix] = node

    walk(cfg.model_dump(mode="json"), "")
    for key, default in ADDED_SINCE_CHECKPOINTS.items():
        if flat.get(key) == default:
            flat.pop(key)
    return {k: v for k, v in flat.items() if not any(k == p or k.startswith(p + ".") for p in RESUMABLE_CHANGES)}


def fingerprint_hash(cfg: TrainConfig) -> str:
    return hashlib.sha256(json.dumps(fingerprint(cfg), sort_keys=True).encode()).hexdigest()[:16]


def load_train_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    data = load_yaml(path)
    overridden = apply_overrides(data, overrides)  # first, so that `recipe.name=X` is checked too
    recipe = data.get("recipe")
    known = recipe_registry.names()
    if isinstance(recipe, dict) and recipe.get("name") not in known:
        where = "command-line override" if {"recipe", "recipe.name"} & overridden else str(path)
        raise ConfigError(f"{where}: key 'recipe.name': unknown recipe {recipe.get('name')!r}; one of {known}")
    return validate(TrainConfig, data, str(path), overridden=overridden)
