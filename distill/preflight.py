"""Everything a run can check without weights, before any process group, dataset or checkpoint is touched: the
teacher and its clip size, the recipe and the networks it declares, the student's shape, sequence parallelism, the
DeepSpeed JSON, and (on GPU) whether the run fits in memory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from distill.core.config import ConfigError
from distill.data import cheap_size, check_batch_fits, check_image_data, image_source
from distill.networks import check_student_source, deepspeed_config
from distill.parallel import check_sequence_parallel
from distill.recipes import make_recipe
from distill.students.base import FRESH
from distill.teachers.base import Family
from distill.teachers.config import TeacherConfig, load_teacher_config, open_config
from distill.teachers.resolve import TeacherNotFound
from distill.train_config import TrainConfig


@dataclass
class Checked:
    tcfg: TeacherConfig
    folder: Path  # the teacher's resolved folder
    family: Family  # the teacher's family (distill.teachers.base)
    ds: dict  # the DeepSpeed config, "auto" values filled
    recipe: object  # the recipe instance (students.base.Recipe)


def preflight(cfg: TrainConfig) -> Checked:
    overrides = [f"dtype={cfg.teacher_dtype}"] if cfg.teacher_dtype else []
    tcfg = load_teacher_config(cfg.teacher, overrides)
    try:
        family, folder = open_config(tcfg)
    except TeacherNotFound as err:
        raise ConfigError(f"teacher {cfg.teacher!r}: {err}") from None
    image_input = family.image_input(folder)
    check_image_data(cfg.data, image_input, cfg.teacher, cfg.train.validation_prompts)
    recipe = make_recipe(cfg, tcfg, family, family.dit_config(folder), len(family.experts(folder)),
                         family.video_factors(folder), image_source(cfg.data, image_input) is not None)
    inits = [(spec.init_key or f"recipe network {spec.name!r}", spec.init) for spec in recipe.networks()
             if spec.init != FRESH]  # a fresh network copies no DiT
    check_no_student(cfg, recipe)
    check_student_source(cfg, family, folder, inits)
    if cfg.data.source != "toyworld" and not Path(cfg.data.source).exists():
        raise ConfigError(f"data.source: {cfg.data.source!r} does not exist (give 'toyworld', a .txt, .jsonl or "
                          f".parquet file of prompts, or a saved datasets folder)")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    size = cheap_size(cfg.data)
    if size is not None:
        check_batch_fits(cfg.data, size, max(1, world // cfg.parallel.sequence))
    v = tcfg.video
    try:
        family.check_video_size(v.frames, v.height, v.width, family.video_factors(folder))
    except ValueError as err:
        raise ConfigError(f"teacher {cfg.teacher!r} video settings: {err}") from None
    check_sequence_parallel(cfg, family, folder, v, int(os.environ.get("WORLD_SIZE", "1")), inits)
    ds = deepspeed_config(cfg)
    if "optimizer" in ds and any(spec.optim for spec in recipe.networks()):
        raise ConfigError(f"{cfg.deepspeed}: an 'optimizer' section sets one optimizer for every network, but recipe "
                          f"{cfg.recipe.name!r} gives some of its networks their own settings; remove the section")
    # refuse a run that cannot fit (distill/plan.py); on CPU there is nothing to plan, and the planner counts DiT
    # passes only (a recipe that trains no student has none to count)
    if torch.cuda.is_available() and getattr(recipe, "trains_student", True):
        from distill.plan import plan, refusal

        local = int(os.environ.get("LOCAL_RANK", 0))
        memory = torch.cuda.get_device_properties(local).total_memory / (1 << 30)
        predicted = plan(cfg, int(os.environ.get("WORLD_SIZE", "1")), memory)
        if not predicted.fits:
            raise ConfigError(f"memory: {refusal(predicted)} (details: `distill plan CONFIG --gpus N --gpu-memory "
                              f"GiB`)")
    return Checked(tcfg, folder, family, ds, recipe)


def check_no_student(cfg: TrainConfig, recipe) -> None:
    """A recipe that trains no student (students/base.py `trains_student`) trains at least one fresh network, and
    the student settings that would describe a DiT it does not build are refused by key."""
    if getattr(recipe, "trains_student", True):
        return
    if not any(spec.init == FRESH and spec.trains for spec in recipe.networks()):
        raise ConfigError(f"recipe {cfg.recipe.name!r} trains no student and declares no fresh network that trains")
    s = cfg.student
    for key, value, default in (("ema_decay", s.ema_decay, None), ("lora", s.lora, None), ("init", s.init, "teacher"),
                                ("experts", s.experts, None)):
        if value != default:
            raise ConfigError(f"student.{key}: {value!r}, but recipe {cfg.recipe.name!r} trains no student (the "
                              f"teacher's DiT is not trained); set it to {default!r}")
