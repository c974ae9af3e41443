"""`distill train`: one explicit training loop, driven by a recipe, under DeepSpeed.

    preflight  ─ config, teacher, student shape, DeepSpeed JSON, resume folder: refused before any work
    build      ─ teacher (frozen; partitioned under ZeRO-3), data (x0 latents, cached text), student engine, EMA
    loop       ─ batch → recipe losses → backward/step → EMA → guard → log → checkpoint → validation clips

Launch it alone, with `torchrun`, the `deepspeed` launcher or `accelerate launch` (which only sets the rank
variables here; the engines are DeepSpeed's own).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import socket
from datetime import timedelta
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
import yaml
from safetensors.torch import load_file, save_file

from distill import checkpoint
from distill.core.config import ConfigError
from distill.teachers.config import TeacherConfig, load_teacher_config
from distill.data import TrainData
from distill.alarms import Alarms
from distill.core.media import write_mp4
from distill.monitor import LossGuard, Monitor, TrainingAborted
from distill.parallel import check_sequence_parallel, make_layout
from distill.networks import (EMA, build_backbone, build_student, check_student_source, deepspeed_config,
                              full_state_dict, load_full_state_dict, partition_frozen, save_lora, trainable)
from distill.train_config import TrainConfig
from distill.core.hashing import checkpoint_hash
from distill.students.apt import AdversarialPostTraining, Discriminator
from distill.students.consistency import ConsistencyDistillation
from distill.teachers.samplers import consistency_timesteps, sample_consistency
from distill.teachers.resolve import TeacherNotFound, resolve
from distill.teachers.schedule import flow_sigmas
from distill.teachers.wan import Cond, WanTeacher, check_video_size, video_factors


# --- launch -------------------------------------------------------------------------------------------------------
def setup_distributed(timeout_s: int) -> tuple[int, int, torch.device]:
    """Join the job's process group (or make a one-process group when launched alone)."""
    if "RANK" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def preflight(cfg: TrainConfig) -> tuple[TeacherConfig, Path, dict]:
    """Everything that can be checked without weights: the teacher and its clip size, the student's shape, the
    DeepSpeed JSON."""
    overrides = [f"dtype={cfg.teacher_dtype}"] if cfg.teacher_dtype else []
    tcfg = load_teacher_config(cfg.teacher, overrides)
    try:
        folder = resolve(tcfg.source, tcfg.revision)
    except TeacherNotFound as err:
        raise ConfigError(f"teacher {cfg.teacher!r}: {err}") from None
    check_student_source(cfg, folder)
    if cfg.data.source != "toyworld" and not Path(cfg.data.source).exists():
        raise ConfigError(f"data.source: {cfg.data.source!r} does not exist (give 'toyworld', a .txt, .jsonl or "
                          f".parquet file of prompts, or a saved datasets folder)")
    v = tcfg.video
    try:
        check_video_size(v.frames, v.height, v.width, *video_factors(folder))
    except ValueError as err:
        raise ConfigError(f"teacher {cfg.teacher!r} video settings: {err}") from None
    check_sequence_parallel(cfg, folder, v, int(os.environ.get("WORLD_SIZE", "1")))
    if torch.cuda.is_available():  # refuse a run that cannot fit (distill/plan.py); on CPU there is nothing to plan
        from distill.plan import plan, refusal

        local = int(os.environ.get("LOCAL_RANK", 0))
        memory = torch.cuda.get_device_properties(local).total_memory / (1 << 30)
        predicted = plan(cfg, int(os.environ.get("WORLD_SIZE", "1")), memory)
        if not predicted.fits:
            raise ConfigError(f"memory: {refusal(predicted)} (details: `distill plan CONFIG --gpus N --gpu-memory "
                              f"GiB`)")
    return tcfg, folder, deepspeed_config(cfg)


def make_recipe(cfg: TrainConfig, tcfg: TeacherConfig):
    r = cfg.recipe
    if r.name == "consistency":
        if r.skip > r.grid_steps - 2:
            raise ConfigError(f"recipe.skip={r.skip} must be at most recipe.grid_steps - 2 = {r.grid_steps - 2}")
        return ConsistencyDistillation(flow_sigmas(r.grid_steps, tcfg.sampler.shift), skip=r.skip,
                                       distance=r.distance, huber_c=r.huber_c)
    if r.name == "apt":
        return AdversarialPostTraining(shift=r.shift, r1_weight=r.r1_weight, r1_sigma=r.r1_sigma, d_steps=r.d_steps)
    raise ConfigError(f"recipe.name: unknown recipe {r.name!r}")


def make_optimizer(cfg: TrainConfig, params):
    o = cfg.optim
    if o.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=o.lr, alpha=o.alpha, eps=o.eps, weight_decay=o.weight_decay)
    return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)


@contextlib.contextmanager
def only_training(engines: dict, name: str):
    """Freeze every other trainable network for one phase, so that a loss backpropagated through it (G's loss
    through D) leaves its gradients alone."""
    frozen = [p for other, e in engines.items() if other != name for p in e.module.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


# --- the run ------------------------------------------------------------------------------------------------------
class Run:
    """The networks and data of one run; `loop()` trains them."""

    def __init__(self, cfg: TrainConfig, resume: str | None = None, progress: bool = True):
        self.cfg, self.progress = cfg, progress
        checkpoint.check_out_folder(cfg.out)
        self.tcfg, folder, self.ds = preflight(cfg)
        self.recipe = make_recipe(cfg, self.tcfg)
        self.out = Path(cfg.out)
        self.teacher_hash = checkpoint_hash(folder)
        self.resume_from, self.meta = None, {}
        if resume:
            try:
                self.resume_from = checkpoint.find(self.out if resume == "latest" else resume)
            except ConfigError as err:
                raise ConfigError(f"--resume {resume}: {err}") from None
            self.meta = checkpoint.check_compatible(self.resume_from, cfg, int(os.environ.get("WORLD_SIZE", "1")),
                                                    self.teacher_hash)
        elif (self.out / "checkpoints" / "latest").is_file():
            raise ConfigError(f"out: {str(self.out)!r} already holds a run; pass --resume latest to continue it, "
                              f"or choose another out=")
        self.rank, self.world, self.device = setup_distributed(cfg.train.collective_timeout_s)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            # marks the folder as a run from its first second (checkpoint.check_out_folder), and says what it runs
            (self.out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))

        # The ranks of a sequence-parallel group compute one replica: the same batches, the same noise.
        self.layout = make_layout(cfg.parallel.sequence)
        replica = self.layout.data_rank
        torch.manual_seed(cfg.train.seed * 1000 + replica)
        self.generator = torch.Generator().manual_seed(cfg.train.seed * 1000 + replica + 1)
        t = self.tcfg
        self.teacher = WanTeacher.from_pretrained(t.source, dtype=t.dtype, device=str(self.device),
                                                  revision=t.revision, max_sequence_length=t.max_sequence_length)
        cache = Path(cfg.data.cache_dir) if cfg.data.cache_dir else self.out / "cache"
        shard = None  # real clips: each rank encodes its own share
        if cfg.data.latents == "teacher":  # the teacher's x0 samples: one clip per group, spread over its ranks
            self.teacher.shard_sequence(self.layout.group)
            shard = (self.layout.data_rank, self.layout.data_world)
        self.data = TrainData(cfg.data, self.teacher, t, self.teacher_hash, cache, progress, shard=shard)
        self.validation_prompts = cfg.train.validation_prompts or sorted(set(self.data.prompts))[:4]
        if cfg.data.cache_text:
            self.data.cache_text(self.validation_prompts)
            self.teacher.pipe.text_encoder = None  # no longer needed: every prompt is embedded
        self.negative = self.data.embed([t.negative_prompt]).to(self.device)

        self._build_networks()
        self.start = 0
        if self.resume_from is not None:
            self._load(self.resume_from)
        self.guard = LossGuard(cfg.train.explode_ratio, cfg.train.explode_warmup, self.meta.get("guard"))
        self.alarms = Alarms(self) if cfg.recipe.name == "apt" else None

    # networks --------------------------------------------------------------------------------------------------
    def _engine(self, module: torch.nn.Module, lr_scales: dict[str, float] | None = None):
        """`lr_scales`: a learning-rate factor for the weights whose names start with a key."""
        params = [p for _, p in trainable(module)]
        if lr_scales:
            groups: dict[float, list] = {}
            for name, p in trainable(module):
                scale = next((v for k, v in lr_scales.items() if name.startswith(k)), 1.0)
                groups.setdefault(scale, []).append(p)
            params = [{"params": ps, "lr": self.cfg.optim.lr * scale} for scale, ps in groups.items()]
        optimizer = None if "optimizer" in self.ds else make_optimizer(self.cfg, params)
        o = self.cfg.optim
        warmup = lambda step: min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps else 1.0  # noqa: E731
        engine, _, _, scheduler = deepspeed.initialize(
            model=module, model_parameters=params, optimizer=optimizer,
            lr_scheduler=(lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, warmup)), config=self.ds)
        return engine, scheduler

    def _build_networks(self) -> None:
        cfg = self.cfg
        self.teacher.unshard_sequence()  # copies first: a process group cannot be deep-copied
        student = build_student(cfg, self.teacher.transformer)
        ema_module = copy.deepcopy(student).requires_grad_(False).eval() if cfg.student.ema_decay is not None else None
        self.layout.shard(student, ema_module)
        self.engines, self.schedulers = {}, {}
        if "discriminator" in self.recipe.trains:
            backbone = build_backbone(cfg.recipe.discriminator_init, self.teacher.transformer,
                                      cfg.student.gradient_checkpointing)
            disc = Discriminator(backbone, tuple(cfg.recipe.head_fractions)).to(self.device, torch.float32)
            self.layout.shard(disc.backbone)
            self.layout.gather_inputs(*disc.heads)  # each head pools over every token of the clip
            scale = cfg.recipe.head_lr_scale
            self.engines["discriminator"], self.schedulers["discriminator"] = self._engine(
                disc.train(), {"heads.": scale, "norm.": scale, "out.": scale})
        if "teacher" in self.recipe.reads:
            self.teacher.shard_sequence(self.layout.group)
            self.teacher.transformer = partition_frozen(self.teacher.transformer, self.ds)
        else:  # APT never runs the teacher's DiT: free it (its VAE stays, for real clips and alarms)
            self.teacher.transformer = self.teacher.pipe.transformer = None
        self.engines["student"], self.schedulers["student"] = self._engine(student)
        self.engine = self.engines["student"]
        self.ema_module = self.ema = None
        if ema_module is not None:
            self.ema_module = partition_frozen(ema_module, self.ds)
            self.ema = EMA(self.engine.module, getattr(self.ema_module, "module", self.ema_module),
                           cfg.student.ema_decay)
        self.trainable_names = {n for n, _ in trainable(self.engine.module)}

    # networks as functions of (x, t) for one batch's text ----------------------------------------------------------
    def _nets(self, embeds: torch.Tensor, phase: str) -> dict:
        t, r = self.teacher, self.cfg.recipe

        def tiled(x):  # text for a batch that stacks several copies of the clips (CFG halves, real and fake)
            return embeds.repeat(x.shape[0] // embeds.shape[0], 1, 1)

        nets = {"student": lambda x, s: t.forward(self.engine, x, s, tiled(x))}
        if r.name == "consistency":
            cond = Cond(embeds, self.negative.expand(embeds.shape[0], -1, -1))
            guidance = r.guidance if r.guidance is not None else self.tcfg.sampler.guidance
            target = self.ema_module if r.target == "ema" else self.engine
            nets["teacher"] = lambda x, s: t.velocity(x, s, cond, guidance)
            nets["target"] = lambda x, s: t.forward(target, x, s, embeds)
        if "discriminator" in self.engines:
            # In G's phase, D runs as a bare module: its engine's backward hooks (gradient reduction) must fire
            # only for D's own loss, and G's loss only passes through it.
            d = self.engines["discriminator"] if phase == "discriminator" else self.engines["discriminator"].module
            nets["discriminator"] = lambda x, s: t.forward(d, x, s, tiled(x))
        return nets

    def train_step(self, step: int) -> dict[str, float]:
        cfg, bs = self.cfg, self.cfg.data.batch_size
        totals: dict[str, float] = {}
        for micro in range(cfg.train.grad_accum):
            replicas, replica = self.layout.data_world, self.layout.data_rank
            position = ((step * cfg.train.grad_accum + micro) * replicas + replica) * bs
            batch = self.data.batch(position, bs)
            embeds = self.data.embed(batch.prompts).to(self.device)
            x0 = batch.x0.to(self.device)
            for name in self.recipe.phases(step):
                with only_training(self.engines, name):
                    losses = self.recipe.loss(name, self._nets(embeds, name), x0, self.generator)
                    self.engines[name].backward(losses[name])
                    self.engines[name].step()
                for k, v in losses.items():
                    totals[k] = totals.get(k, 0.0) + float(v.detach()) / cfg.train.grad_accum
        if self.ema is not None:
            self.ema.update()
        # On the job's device: NCCL groups take no CPU tensors.
        reduced = torch.tensor([totals[k] for k in sorted(totals)], dtype=torch.float64, device=self.device)
        dist.all_reduce(reduced)
        out = {k: float(v) / self.world for k, v in zip(sorted(totals), reduced.cpu())}
        out["loss"] = out.pop("student")
        out["lr"] = self.schedulers["student"].get_last_lr()[0]
        return out

    def loop(self) -> dict:
        cfg = self.cfg
        samples_per_step = self.layout.data_world * cfg.data.batch_size * cfg.train.grad_accum
        monitor = Monitor(cfg, self.out, self.start, self.rank, samples_per_step,
                          progress=self.progress)
        last = {}
        try:
            for step in range(self.start, cfg.train.steps):
                last = self.train_step(step)
                for key, value in last.items():
                    if key != "loss" and not math.isfinite(value):
                        raise TrainingAborted(f"step {step + 1}: {key} is {value}")
                self.guard.check(step + 1, last["loss"])
                monitor.advance()
                if (step + 1) % cfg.train.log_every == 0 or step + 1 == cfg.train.steps:
                    monitor.log(step + 1, last)
                if (step + 1) % cfg.train.checkpoint_every == 0 or step + 1 == cfg.train.steps:
                    self.save(step + 1)
                elif self.alarms is not None and self.alarms.check(step + 1, last):
                    self.save(step + 1)  # an alarm keeps the state it went off in
                every = cfg.train.validate_every
                if (every and (step + 1) % every == 0) or step + 1 == cfg.train.steps:
                    self.validate(step + 1, monitor)
        except TrainingAborted as err:
            latest = self.out / "checkpoints" / "latest"
            kept = latest.read_text().strip() if latest.is_file() else "none yet"
            raise TrainingAborted(f"{err}; stopped. Last good checkpoint: {kept} (resume with --resume latest after "
                                  f"lowering optim.lr or fixing the data)") from None
        finally:
            monitor.close()
        return last

    # checkpoints ----------------------------------------------------------------------------------------------------
    def _write_weights(self, folder: Path) -> None:
        cfg = self.cfg
        export = self.ema_module if cfg.student.export == "ema" else self.engine
        lora = cfg.student.lora is not None
        names = self.trainable_names if lora else None
        weights = full_state_dict(export, names)
        if self.rank == 0:
            if lora:
                save_lora(folder / "lora", weights, cfg.student.lora)
            else:
                (folder / "student").mkdir()
                getattr(export, "module", export).save_config(folder / "student")
                save_file(weights, folder / "student" / "diffusion_pytorch_model.safetensors")
        if self.ema_module is not None and (lora or cfg.student.export != "ema"):
            ema = full_state_dict(self.ema_module, self.trainable_names)
            if self.rank == 0:
                save_file(ema, folder / "ema.safetensors")

    def save(self, step: int) -> None:
        replicas = self.layout.data_world
        meta = {"data_position": (step * self.cfg.train.grad_accum) * replicas * self.cfg.data.batch_size,
                "teacher": self.tcfg.source, "teacher_revision": self.tcfg.revision,
                "teacher_hash": self.teacher_hash, "recipe": self.cfg.recipe.name, "guard": self.guard.state(),
                "alarms": self.alarms.state() if self.alarms else None,
                "sampler": {"name": "consistency", "steps": self.cfg.recipe.sampler.steps,
                            "shift": self.student_shift(), "guidance": 1.0}}
        checkpoint.save(self.out, step, self.cfg, self.engines, self.generator, self._write_weights, meta,
                        self.cfg.train.keep_checkpoints)

    def _load(self, folder: Path) -> None:
        for name, engine in self.engines.items():
            path, _ = engine.load_checkpoint(str(folder / "engines"), tag=name)
            if path is None:
                raise ConfigError(f"--resume: {str(folder)!r} holds no DeepSpeed state for {name!r} "
                                  f"(engines/{name} is missing)")
        if self.ema_module is not None:
            ema_file = folder / "ema.safetensors"
            if not ema_file.is_file():
                ema_file = folder / "student" / "diffusion_pytorch_model.safetensors"
            state = load_file(ema_file)
            load_full_state_dict(self.ema_module, {k: v for k, v in state.items() if k in self.trainable_names})
        checkpoint.load_rng(folder, self.generator)
        self.start = self.meta["step"]

    # validation clips -------------------------------------------------------------------------------------------
    def student_shift(self) -> float:
        s = self.cfg.recipe.sampler.shift
        return s if s is not None else self.tcfg.sampler.shift

    @torch.no_grad()
    def student_latents(self, prompts: list[str], seed: int = 0) -> torch.Tensor:
        """The student's clips for `prompts` with its few-step sampler; every rank must call this (ZeRO-3)."""
        model = self.ema_module if self.ema_module is not None else self.engine
        self.engine.eval()
        embeds = self.data.embed(prompts).to(self.device)
        v = self.tcfg.video
        x = self.teacher.noise(len(prompts), v.frames, v.height, v.width, seed=seed)
        g = torch.Generator().manual_seed(seed + 1)
        noise = lambda like: torch.randn(like.shape, generator=g).to(like)  # noqa: E731
        ts = consistency_timesteps(self.cfg.recipe.sampler.steps, self.student_shift())
        latents = sample_consistency(lambda y, s: self.teacher.forward(model, y, s, embeds), x, ts, noise)
        self.engine.train()
        return latents

    def validate(self, step: int, monitor: Monitor) -> None:
        """Every rank samples the same clips (ZeRO-3 needs every rank in every forward); rank 0 writes them."""
        prompts = self.validation_prompts
        latents = self.student_latents(prompts)
        if self.rank != 0:
            return
        v = self.tcfg.video
        videos = self.teacher.decode(latents).numpy()
        folder = self.out / "validation" / checkpoint.step_name(step)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, video in enumerate(videos):
            paths.append(folder / f"{i:02d}.mp4")
            write_mp4(paths[-1], video, v.fps)
        monitor.videos(step, paths, prompts, v.fps)


def train(cfg: TrainConfig, resume: str | None = None, progress: bool = True) -> dict:
    run = Run(cfg, resume, progress)
    return run.loop()
