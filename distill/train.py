"""`distill train`: one explicit training loop, driven by a recipe, under DeepSpeed.

    preflight  ─ config, teacher, recipe, student shape, DeepSpeed JSON, resume folder: refused before any work
                 (distill/preflight.py)
    build      ─ teacher, data (x0 latents, cached text), the recipe's networks in their engines, EMA
                 (distill/build.py)
    loop       ─ batch → for each of the recipe's phases: losses → backward/step → EMA → guard → log → monitors
                 → checkpoint → validation clips

The engine knows no recipe by name: it asks the one named in the config (students/registry.py) for its networks,
phases, losses, sampler and monitors (students/base.py).

Launch it alone, with `torchrun`, the `deepspeed` launcher or `accelerate launch` (which only sets the rank
variables here; the engines are DeepSpeed's own).
"""

from __future__ import annotations

import math
import os
import socket
import warnings
from datetime import timedelta
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
import yaml

from distill import checkpoint
from distill.build import RunNetworks, only_training
from distill.core.config import ConfigError
from distill.core.dist import any_rank, first_reason
from distill.core.hashing import checkpoint_hash
from distill.core.media import write_mp4
from distill.data import TrainData
from distill.monitor import LossGuard, Monitor, TrainingAborted
from distill.parallel import make_layout
from distill.preflight import preflight
from distill.students.base import MonitorContext
from distill.teachers.samplers import sample
from distill.teachers.base import Cond
from distill.teachers.config import load_teacher
from distill.train_config import TrainConfig


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


# --- the run ------------------------------------------------------------------------------------------------------
class Run:
    """The parts of one run (its networks, data, guard and monitors); `loop()` trains them."""

    def __init__(self, cfg: TrainConfig, resume: str | None = None, progress: bool = True):
        self.cfg, self.progress = cfg, progress
        checkpoint.check_out_folder(cfg.out)
        checked = preflight(cfg)
        self.tcfg, self.ds, self.recipe = checked.tcfg, checked.ds, checked.recipe
        self.out = Path(cfg.out)
        self.teacher_hash = checkpoint_hash(checked.folder)
        self.resume_from, self.meta = None, {}
        if not resume:
            refuse_restart(self.out)
        self.rank, self.world, self.device = setup_distributed(cfg.train.collective_timeout_s)
        self.lock = checkpoint.RunLock(self.out)
        try:
            self._claim(resume)
            self._build()
        except BaseException:
            self.close()  # a run that failed to start leaves the folder free
            raise

    def _build(self) -> None:
        cfg = self.cfg
        # The ranks of a sequence-parallel group compute one replica: the same batches, the same noise.
        self.layout = make_layout(cfg.parallel.sequence)
        replica = self.layout.data_rank
        torch.manual_seed(cfg.train.seed * 1000 + replica)
        self.generator = torch.Generator().manual_seed(cfg.train.seed * 1000 + replica + 1)
        t = self.tcfg
        self.teacher = load_teacher(t, str(self.device))
        cache = Path(cfg.data.cache_dir) if cfg.data.cache_dir else self.out / "cache"
        shard = None  # real clips: each rank encodes its own share
        if cfg.data.latents == "teacher":  # the teacher's x0 samples: one clip per group, spread over its ranks
            self.teacher.shard_sequence(self.layout.group)
            shard = (self.layout.data_rank, self.layout.data_world)
        self.data = TrainData(cfg.data, self.teacher, t, self.teacher_hash, cache, self.progress,
                               shard=shard)
        self.validation_prompts = cfg.train.validation_prompts or sorted(set(self.data.prompts))[:4]
        self.validation_image = None
        if self.data.image_latents is not None:  # an image-conditioned run: its first examples, with their images
            first = torch.arange(min(4, len(self.data)))
            self.validation_prompts = [self.data.prompts[i] for i in first.tolist()]
            self.validation_image = self.image_cond(first)
        if cfg.data.cache_text:
            self.data.cache_text(self.validation_prompts)
            self.teacher.drop_text_encoder()  # no longer needed: every prompt is embedded
        negative = self.data.embed([t.negative_prompt]).to(self.device)

        # Every rank builds the same networks: one seed for the build on every rank (a LoRA adapter's and a head's
        # random init), the replica's own stream untouched around it. Seeded per replica, each rank's EMA would
        # start from its own adapter (DeepSpeed broadcasts rank 0's weights into the engines, never into the EMA).
        cuda = [self.device.index if self.device.index is not None else 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(cfg.train.seed * 1000)
            self.networks = RunNetworks(cfg, self.recipe, self.teacher, self.ds, self.layout, self.device, negative,
                                        t.sampler.guidance)
        self.start = 0
        if self.resume_from is not None:
            self.networks.load(self.resume_from)
            checkpoint.load_rng(self.resume_from, self.generator)
            self.start = self.meta["step"]
        self.guard = LossGuard(cfg.train.explode_ratio, cfg.train.explode_warmup, self.meta.get("guard"))
        self.monitors = self.recipe.monitors(MonitorContext(
            rank=self.rank, out=self.out, prompts=[self.data.prompts[i] for i in range(min(4, len(self.data)))],
            real_x0=self.data.x0[:4], decode=self.teacher.decode, student_latents=self.student_latents,
            state=self.meta.get("monitors") or {}))

    def _claim(self, resume: str | None) -> None:
        """Rank 0 takes the run's lock before anything is written; then the checkpoint to resume from is found and
        verified (every rank shares the hashing), and `latest` repaired if it had to fall back. Every rank learns
        the outcome, so a refusal ends them all with the same line."""
        notes, refused = [], None
        if self.rank == 0:
            try:
                notes.append(self.lock.acquire())
                if not resume:  # again, under the lock: a job that held it may have written one since
                    refuse_restart(self.out)
                checkpoint.clean_partial(self.out / "checkpoints")
            except ConfigError as err:
                refused = str(err)
        if self.world > 1:
            shared = [refused]
            dist.broadcast_object_list(shared, src=0)
            refused = shared[0]
        if refused:
            raise ConfigError(refused)
        if resume:
            try:
                folder, found_notes = checkpoint.resolve(self.out if resume == "latest" else resume, hashes=True)
            except ConfigError as err:
                raise ConfigError(f"--resume {resume}: {err}") from None
            notes += found_notes
            self.meta = checkpoint.check_compatible(folder, self.cfg, self.world, self.teacher_hash)
            self.resume_from = folder
        if self.rank != 0:
            return
        ckpts = self.out / "checkpoints"
        latest = ckpts / "latest"
        if resume == "latest" and (not latest.is_file() or latest.read_text().strip() != self.resume_from.name):
            checkpoint.write_latest(ckpts, self.resume_from.name)
            notes.append(f"{str(latest)!r} repaired: it now names {self.resume_from.name}")
        for note in filter(None, notes):
            warnings.warn(note, stacklevel=3)
        # marks the folder as a run from its first second (checkpoint.check_out_folder), and says what it runs
        (self.out / "config.yaml").write_text(yaml.safe_dump(self.cfg.model_dump(mode="json"), sort_keys=False))

    def close(self) -> None:
        """Release the run's lock (the process's end releases it too, however it ends)."""
        self.lock.release()

    # what scripts read -----------------------------------------------------------------------------------------
    @property
    def engine(self):
        """The student's DeepSpeed engine."""
        return self.networks.engine

    @property
    def engines(self) -> dict:
        return self.networks.engines

    @property
    def ema(self):
        return self.networks.ema

    @property
    def ema_module(self):
        return self.networks.ema_module

    @property
    def trainable_names(self) -> set[str]:
        return self.networks.trainable_names

    def handles(self, embeds: torch.Tensor, phase: str = "student", image: Cond | None = None) -> dict:
        """The networks as the recipe's losses see them, for one batch's text embeddings (and image)."""
        return self.networks.handles(embeds, phase, image)

    def image_cond(self, idx: torch.Tensor) -> Cond | None:
        """The conditioning of examples `idx` (their text and image) on this rank's device, or None for a
        text-only run."""
        latents, embeds = self.data.image_conditioning(idx)
        return self._image_cond([self.data.prompts[i] for i in idx.tolist()], latents, embeds)

    def _image_cond(self, prompts: list[str], latents: torch.Tensor | None, embeds: torch.Tensor | None
                    ) -> Cond | None:
        if latents is None:
            return None
        text = Cond(self.data.embed(prompts).to(self.device), None)
        return text.with_image(latents.to(self.device), None if embeds is None else embeds.to(self.device))

    # one step --------------------------------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, float]:
        cfg, bs = self.cfg, self.cfg.data.batch_size
        engines = self.networks.engines
        self.networks.counter.passes = 0.0
        totals: dict[str, float] = {}
        phases = self.recipe.phases(step)
        per_step = self.batches_per_step(phases)
        for micro in range(cfg.train.grad_accum):
            replicas, replica = self.layout.data_world, self.layout.data_rank
            seen: dict[str, list[float]] = {}
            for p, name in enumerate(phases):
                if p == 0 or per_step > 1:  # a recipe with fresh batches gets the next batch in data order per phase
                    index = (step * cfg.train.grad_accum + micro) * per_step + p
                    batch = self.data.batch((index * replicas + replica) * bs, bs)
                    embeds = self.data.embed(batch.prompts).to(self.device)
                    x0 = batch.x0.to(self.device)
                    image = self._image_cond(batch.prompts, batch.image_latents, batch.image_embeds)
                with only_training(engines, name):
                    losses = self.recipe.loss(name, self.handles(embeds, name, image), x0, self.generator)
                    engines[name].backward(losses[name])
                    engines[name].step()
                for k, v in losses.items():
                    seen.setdefault(k, []).append(float(v.detach()))
            for k, vs in seen.items():  # a phase repeated within the step (critic updates) logs its mean
                totals[k] = totals.get(k, 0.0) + sum(vs) / len(vs) / cfg.train.grad_accum
        if self.networks.ema is not None:
            self.networks.ema.update()
        # On the job's device: NCCL groups take no CPU tensors.
        reduced = torch.tensor([totals[k] for k in sorted(totals)], dtype=torch.float64, device=self.device)
        dist.all_reduce(reduced)
        out = {k: float(v) / self.world for k, v in zip(sorted(totals), reduced.cpu())}
        main = self.networks.main  # the student, or the fresh network a recipe trains instead (students/base.py)
        out["loss"] = out.pop(main)
        out["lr"] = self.networks.schedulers[main].get_last_lr()[0]
        out["passes"] = self.networks.counter.passes  # DiT forwards per step, in batches (CFG counts 2)
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
                # A stop and a checkpoint are taken by every rank or by none (a checkpoint is a collective, and a rank
                # that stops alone leaves the others waiting in the next step): any rank's decision is every rank's.
                stop = first_reason(self.stop_reason(step + 1, last))
                if stop is not None:
                    raise TrainingAborted(stop)
                monitor.advance()
                if (step + 1) % cfg.train.log_every == 0 or step + 1 == cfg.train.steps:
                    monitor.log(step + 1, last)
                fired = [m.check(step + 1, last) for m in self.monitors]  # every monitor runs, on every rank
                (fired,) = any_rank(any(fired))
                if (step + 1) % cfg.train.checkpoint_every == 0 or step + 1 == cfg.train.steps or fired:
                    self.save(step + 1)  # a monitor that fires keeps the state it went off in
                every = cfg.train.validate_every
                if (every and (step + 1) % every == 0) or step + 1 == cfg.train.steps:
                    self.validate(step + 1, monitor)
        except TrainingAborted as err:
            raise TrainingAborted(f"{err}; stopped. Last good checkpoint: {self.kept()} (resume with --resume latest "
                                  f"after lowering optim.lr or fixing the data)") from None
        except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM as the CLI raises it: say what is kept
            raise type(err)(f"last checkpoint: {self.kept()} (continue with --resume latest)") from None
        finally:
            monitor.close()
        return last

    def stop_reason(self, step: int, last: dict[str, float]) -> str | None:
        """Why this rank would stop after `step` (a figure that is not finite, the loss guard), or None."""
        try:
            for key, value in last.items():
                if key != "loss" and not math.isfinite(value):
                    raise TrainingAborted(f"step {step}: {key} is {value}")
            self.guard.check(step, last["loss"])
        except TrainingAborted as err:
            return str(err)
        return None

    def batches_per_step(self, phases: tuple[str, ...]) -> int:
        return len(phases) if getattr(self.recipe, "fresh_batches", False) else 1

    # checkpoints ----------------------------------------------------------------------------------------------------
    def kept(self) -> str:
        latest = self.out / "checkpoints" / "latest"
        return latest.read_text().strip() if latest.is_file() else "none yet"

    def save(self, step: int) -> None:
        replicas = self.layout.data_world
        per_step = self.batches_per_step(self.recipe.phases(max(step - 1, 0)))
        meta = {"data_position": (step * self.cfg.train.grad_accum * per_step) * replicas * self.cfg.data.batch_size,
                "teacher": self.tcfg.source, "teacher_revision": self.tcfg.revision,
                "teacher_hash": self.teacher_hash, "recipe": self.cfg.recipe.name, "guard": self.guard.state(),
                "monitors": {m.name: m.state() for m in self.monitors},
                "sampler": self.recipe.sampler().as_dict(),
                "networks": {name: f"{type(self.networks.engines[name].module).__module__}."
                                   f"{type(self.networks.engines[name].module).__qualname__}"
                             for name in self.networks.fresh_trained()},  # fresh networks' folders: their classes
                "student": self.networks.main == "student"}
        checkpoint.save(self.out, step, self.cfg, self.networks.engines, self.generator,
                        lambda folder: self.networks.write_weights(folder, self.rank), meta,
                        self.cfg.train.keep_checkpoints)

    # validation clips -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def student_latents(self, prompts: list[str], seed: int = 0, image: Cond | None = None) -> torch.Tensor:
        """The student's clips for `prompts` (and `image`: a Cond with their image fields, one per prompt) with its
        recipe's sampler; every rank must call this (ZeRO-3)."""
        model = self.networks.sampling_model()
        engine = self.networks.engine
        engine.eval()
        embeds = self.data.embed(prompts).to(self.device)
        v = self.tcfg.video
        x = self.teacher.noise(len(prompts), v.frames, v.height, v.width, seed=seed)
        g = torch.Generator().manual_seed(seed + 1)
        noise = lambda like: torch.randn(like.shape, generator=g).to(like)  # noqa: E731
        s = self.recipe.sampler()
        latents = sample(s.name, lambda y, t: self.teacher.forward(model, y, t, embeds, image), x, s.steps, s.shift,
                         noise=noise, grid=s.grid)
        engine.train()
        return self.teacher.keep_image_frames(latents, image)

    def validate(self, step: int, monitor: Monitor) -> None:
        """Every rank samples the same clips (ZeRO-3 needs every rank in every forward); rank 0 writes them."""
        if self.networks.main == "student":
            prompts = self.validation_prompts
            latents = self.student_latents(prompts, image=self.validation_image)
            videos = self.teacher.decode(latents).numpy() if self.rank == 0 else None
        else:  # a recipe that trains no student: its clips of the first few training latents
            prompts, videos = self.recipe_clips()
        if self.rank != 0 or videos is None:
            return
        v = self.tcfg.video
        folder = self.out / "validation" / checkpoint.step_name(step)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, video in enumerate(videos):
            paths.append(folder / f"{i:02d}.mp4")
            write_mp4(paths[-1], video, v.fps)
        monitor.videos(step, paths, prompts, v.fps)

    @torch.no_grad()
    def recipe_clips(self, n: int = 4) -> tuple[list[str], object]:
        """(prompts, uint8 clips as numpy, or None) of the recipe's `validation_clips` for the first n training
        examples' latents; every rank calls it."""
        n = min(n, len(self.data))
        prompts = [self.data.prompts[i] for i in range(n)]
        engine = self.networks.engine
        engine.eval()
        nets = self.handles(self.data.embed(prompts).to(self.device), "", self.image_cond(torch.arange(n)))
        clips = self.recipe.validation_clips(nets, self.data.x0[:n].to(self.device))
        engine.train()
        return prompts, None if clips is None else clips.numpy()


def refuse_restart(out: Path) -> None:
    """A folder that holds checkpoints is a run: starting over in it would mix two runs' metrics and let retention
    delete the old checkpoints. Continuing it takes --resume."""
    ckpts = out / "checkpoints"
    held = sorted(p.name for p in ckpts.glob("step-*")) if ckpts.is_dir() else []
    if held or (ckpts / "latest").is_file():
        raise ConfigError(f"out: {str(out)!r} already holds a run (checkpoints {', '.join(held) or 'latest'}); "
                          f"pass --resume latest to continue it, or choose another out=")


def train(cfg: TrainConfig, resume: str | None = None, progress: bool = True) -> dict:
    run = Run(cfg, resume, progress)
    try:
        return run.loop()
    finally:
        run.close()
