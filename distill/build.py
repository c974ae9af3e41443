"""The networks of one run, built from the recipe's declarations, each trainable one in its own DeepSpeed engine.

    student     unless the recipe trains none (`trains_student`): a copy of the teacher's DiT (or student.init),
                full or LoRA; its engine
    ema         when student.ema_decay is set: the student's EMA, in the student's layout
    teacher     when the recipe reads it: the frozen teacher DiT (partitioned under ZeRO-3); otherwise freed
    vae         when the recipe reads it: the teacher's decode (latents -> uint8 clips)
    <recipe's>  one per `NetworkSpec` (a discriminator, a critic): made from a copy of a DiT, or from nothing
                (init FRESH: `make(None)`), trained in its own engine with its own optimizer overrides, or frozen

`RunNetworks.handles(embeds, phase)` gives the recipe its networks as `Handle`s for one batch's text: velocity
with per-call guidance, features at blocks, and heads. The engine knows no recipe: everything recipe-specific
comes from the recipe's `networks()` and `reads`.
"""

from __future__ import annotations

import contextlib
import copy

import deepspeed
import torch
from safetensors.torch import load_file, save_file

from distill.core.config import ConfigError
from distill.core.dist import broadcast_from_first
from distill.networks import (EMA, build_backbone, build_student, full_state_dict, load_full_state_dict,
                              lora_settings, partition_frozen, place_partitioned, trainable, zero_stage)
from distill.students.base import FRESH, NetworkSpec
from distill.teachers.base import Cond, Teacher


def make_optimizer(optim, params):
    """AdamW, or RMSProp with smoothing `alpha`, from an OptimConfig."""
    if optim.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=optim.lr, alpha=optim.alpha, eps=optim.eps,
                                   weight_decay=optim.weight_decay)
    return torch.optim.AdamW(params, lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay)


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


# --- handles -------------------------------------------------------------------------------------------------------
class PassCounter:
    """DiT forward passes, in units of one batch (a CFG call counts 2, three stacked batches count 3)."""

    def __init__(self):
        self.passes = 0.0

    def add(self, rows: int, batch: int) -> None:
        self.passes += rows / batch


def _stacked(x: torch.Tensor | None, copies: int) -> torch.Tensor | None:
    return None if x is None else x.repeat(copies, *([1] * (x.dim() - 1)))


class DiTHandle:
    """A network as a recipe's loss sees it, bound to one batch's conditioning (students.base.Handle): its text
    embeddings and, for an image-conditioned run, `image` (a Cond whose image fields hold one row per example).
    Every network of a step gets the same conditioning: student, teacher, EMA and critic read the same image."""

    def __init__(self, teacher: Teacher, module, embeds: torch.Tensor, negative: torch.Tensor,
                 default_guidance: float = 1.0, is_teacher: bool = False, counter: PassCounter | None = None,
                 image: Cond | None = None):
        self.teacher, self.module, self.embeds, self.negative = teacher, module, embeds, negative
        self.default_guidance, self.is_teacher, self.counter = default_guidance, is_teacher, counter
        self.image = image if image is not None and image.has_image else None

    def _cond(self, x: torch.Tensor) -> Cond:
        """The conditioning of a batch that stacks several copies of the clips (CFG halves, real and fake)."""
        copies = x.shape[0] // self.embeds.shape[0]
        embeds = _stacked(self.embeds, copies)
        cond = Cond(embeds, self.negative.expand(embeds.shape[0], -1, -1))
        if self.image is None:
            return cond
        return cond.with_image(_stacked(self.image.image_latents, copies), _stacked(self.image.image_embeds, copies))

    def _count(self, x: torch.Tensor, factor: int = 1) -> None:
        if self.counter is not None:
            self.counter.add(factor * x.shape[0], self.embeds.shape[0])

    def __call__(self, x: torch.Tensor, t: torch.Tensor, guidance: float | None = None) -> torch.Tensor:
        g = self.default_guidance if guidance is None else guidance
        self._count(x, 2 if g > 1 else 1)
        cond = self._cond(x)
        if self.is_teacher:
            return self.teacher.velocity(x, t, cond, g)
        if g > 1:  # guidance over text, the image in both halves (Teacher.guided)
            return self.teacher.guided(self.module, x, t, cond, g)
        return self.teacher.forward(self.module, x, t, cond.prompt_embeds, cond)

    def image_frames(self, x: torch.Tensor) -> torch.Tensor | None:
        """The latent frames of x the image gives clean (Teacher.image_frames): a loss leaves them out."""
        return self.teacher.image_frames(x, self.image)

    def keep_image_frames(self, x: torch.Tensor) -> torch.Tensor:
        """x with the frames the image gives set to its latents, as the teacher's sampler ends a clip."""
        return self.teacher.keep_image_frames(x, self._cond(x) if self.image is not None else None)

    def features(self, x: torch.Tensor, t: torch.Tensor, blocks: tuple[int, ...]):
        dit = getattr(self.module, "module", self.module)
        dit = getattr(dit, "backbone", dit)  # a headed network's DiT
        found: dict[int, torch.Tensor] = {}
        layers = self.teacher.family.dit_blocks(dit)
        hooks = [layers[i].register_forward_hook(lambda m, a, out, i=i: found.__setitem__(i, out)) for i in blocks]
        try:
            out = self(x, t)
        finally:
            for h in hooks:
                h.remove()
        return out, found

    def with_heads(self, x: torch.Tensor, t: torch.Tensor):
        self._count(x)
        cond = self._cond(x)
        out = self.teacher.forward_all(self.module, x, t, cond.prompt_embeds, cond, heads=True)
        if len(out) != 2:
            raise ValueError("with_heads: the network was not built with heads and its output kept "
                             "(students.common.HeadedDiT(..., keep_output=True))")
        return out[0], out[1]


# --- the run's networks -------------------------------------------------------------------------------------------
class RunNetworks:
    def __init__(self, cfg, recipe, teacher: Teacher, ds: dict, layout, device: torch.device,
                 negative: torch.Tensor, teacher_guidance: float):
        self.cfg, self.recipe, self.teacher, self.ds, self.layout = cfg, recipe, teacher, ds, layout
        self.device, self.negative, self.teacher_guidance = device, negative, teacher_guidance
        self.counter = PassCounter()
        self.specs: dict[str, NetworkSpec] = {s.name: s for s in recipe.networks()}
        reserved = {"student", "teacher", "ema"} & set(self.specs)
        if reserved:
            raise ConfigError(f"recipe {cfg.recipe.name!r} declares a network named {sorted(reserved)}: those names "
                              f"belong to the engine")
        if "ema" in recipe.reads and cfg.student.ema_decay is None:
            raise ConfigError(f"recipe {cfg.recipe.name!r} reads the student's EMA but student.ema_decay is null")
        self._build()

    # building ------------------------------------------------------------------------------------------------------
    def _engine(self, module: torch.nn.Module, optim_overrides: dict | None = None,
                lr_scales: dict[str, float] | None = None):
        """`lr_scales`: a learning-rate factor for the weights whose names start with a key."""
        optim = self.cfg.optim.model_copy(update=optim_overrides or {})
        params = [p for _, p in trainable(module)]
        if lr_scales:
            groups: dict[float, list] = {}
            for name, p in trainable(module):
                scale = next((v for k, v in lr_scales.items() if name.startswith(k)), 1.0)
                groups.setdefault(scale, []).append(p)
            params = [{"params": ps, "lr": optim.lr * scale} for scale, ps in groups.items()]
        optimizer = None if "optimizer" in self.ds else make_optimizer(optim, params)
        warmup = lambda step: min(1.0, (step + 1) / optim.warmup_steps) if optim.warmup_steps else 1.0  # noqa: E731
        engine, _, _, scheduler = deepspeed.initialize(
            model=module, model_parameters=params, optimizer=optimizer,
            lr_scheduler=(lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, warmup)), config=self.ds)
        return engine, scheduler

    def _recipe_network(self, spec: NetworkSpec, host: bool = False) -> torch.nn.Module:
        """`host`: the partitioned build (ZeRO-3): built on the host and placed as partitions when it will be."""
        if spec.init == FRESH:
            return self._fresh_network(spec, host)
        ckpt = self.cfg.student.gradient_checkpointing if spec.gradient_checkpointing is None \
            else spec.gradient_checkpointing
        dit = build_backbone(self.teacher.family, spec.init, self.teacher, ckpt, spec.lora)
        net = spec.make(dit) if spec.make is not None else dit
        if not spec.trains:
            net.requires_grad_(False).eval()
        if host and (spec.trains or spec.partitioned):
            net = place_partitioned(net.to(torch.float32), self.ds, self.device, train=spec.trains)
        else:
            net = net.to(self.device, torch.float32)
        self.layout.shard(spec.backbone(net) if spec.backbone else net)
        if spec.pooled is not None:
            self.layout.gather_inputs(*spec.pooled(net))  # each pooling head reads every token of the clip
        return net

    def _fresh_network(self, spec: NetworkSpec, host: bool) -> torch.nn.Module:
        """A network the recipe builds from nothing (no DiT copy, no LoRA, whole on every rank of a sequence
        group: it is not sequence-sharded)."""
        if spec.make is None:
            raise ConfigError(f"recipe {self.cfg.recipe.name!r}: network {spec.name!r} is fresh but has no `make`")
        net = spec.make(None).to(torch.float32)
        if not spec.trains:
            net.requires_grad_(False).eval()
        if host and (spec.trains or spec.partitioned):
            return place_partitioned(net, self.ds, self.device, train=spec.trains)
        return net.to(self.device)

    def _build(self) -> None:
        """The networks, whole on the device before their engines partition them (ZeRO-0/1/2), or built one at a
        time on the host and placed as partitions (ZeRO-3): `_build_students` says how."""
        cfg = self.cfg
        self.teacher.unshard_sequence()  # copies first: a process group cannot be deep-copied
        host = zero_stage(self.ds) == 3
        if host:
            self.teacher.dit = self.teacher.dit.to("cpu")
        trains_student = getattr(self.recipe, "trains_student", True)
        student, ema_module = self._build_students(host) if trains_student else (None, None)
        if student is not None:
            self.layout.shard(student, ema_module)
        self.engines, self.schedulers, self.frozen = {}, {}, {}
        for name, spec in self.specs.items():
            net = self._recipe_network(spec, host)
            if spec.trains:
                self.engines[name], self.schedulers[name] = self._engine(net.train(), spec.optim, spec.lr_scales)
            else:
                broadcast_from_first(net)  # no engine broadcasts it (its partitioned weights were, when placed)
                self.frozen[name] = partition_frozen(net, self.ds) if spec.partitioned else net
        if "teacher" in self.recipe.reads:
            if host:
                place_partitioned(self.teacher.dit, self.ds, self.device, train=False)
            self.teacher.shard_sequence(self.layout.group)
            self.teacher.dit = partition_frozen(self.teacher.dit, self.ds)
        else:  # a recipe that never runs the teacher's DiT: free it (its VAE stays, for real clips and monitors)
            self.teacher.drop_dit()
        if student is not None:
            self.engines["student"], self.schedulers["student"] = self._engine(student)
        # the network whose loss is the run's `loss` and whose weights a checkpoint is for: the student, or (a
        # recipe that trains none) its first trained fresh network
        self.main = "student" if student is not None else next(
            name for name, spec in self.specs.items() if spec.init == FRESH and spec.trains)
        self.engine = self.engines[self.main]
        self.ema_module = self.ema = None
        if ema_module is not None:
            self.ema_module = partition_frozen(ema_module, self.ds)
            self.ema = EMA(self.engine.module, getattr(self.ema_module, "module", self.ema_module),
                           cfg.student.ema_decay)
            # every rank's EMA starts from the student the engines start from, rank 0's (ZeRO-3: placed so already)
            broadcast_from_first(self.ema_module, set(self.ema.names))
        self.trainable_names = {n for n, _ in trainable(self.engine.module)}

    def _build_students(self, host: bool):
        """The student and its EMA (or None). Under ZeRO-3 (`host`), the device never holds a network whole: the
        teacher's DiT has moved to the host, each network is built there and placed as this rank's partitions
        (`place_partitioned`) before the next is built, so the host holds the teacher and one other network whole
        at a time. The EMA is then built a second time from the random state the student was built from (a LoRA
        adapter's random init included) instead of being copied from it, which would need both whole at once;
        the random state afterwards is the same as after building the student once, so the recipe's networks and
        the training draws that follow see the same numbers as in the whole-network build."""
        cfg = self.cfg
        if not host:
            student = build_student(cfg, self.teacher)
            if cfg.student.ema_decay is None:
                return student, None
            return student, copy.deepcopy(student).requires_grad_(False).eval()
        before = torch.get_rng_state()
        student = place_partitioned(build_student(cfg, self.teacher), self.ds, self.device, train=True)
        if cfg.student.ema_decay is None:
            return student, None
        after = torch.get_rng_state()
        torch.set_rng_state(before)
        ema = build_student(cfg, self.teacher).requires_grad_(False).eval()
        torch.set_rng_state(after)
        return student, place_partitioned(ema, self.ds, self.device, train=False)

    # handles ----------------------------------------------------------------------------------------------------
    def handles(self, embeds: torch.Tensor, phase: str, image: Cond | None = None) -> dict[str, DiTHandle]:
        """Every network as a Handle for this batch's text (and image: a Cond with its image fields). The phase's
        own network runs through its engine; the other trainable ones run as bare modules (their engines' gradient
        hooks must fire only for their own loss), and the student always through its engine."""
        def handle(module, **kw):
            return DiTHandle(self.teacher, module, embeds, self.negative, counter=self.counter, image=image, **kw)

        def fresh(name):  # a fresh network is called as the module it is (students/base.py)
            return self.specs.get(name) is not None and self.specs[name].init == FRESH

        nets = {"student": handle(self.engine)} if self.main == "student" else {}
        for name, engine in self.engines.items():
            if name != "student":
                module = engine if name == phase else engine.module
                nets[name] = module if fresh(name) else handle(module)
        for name, module in self.frozen.items():
            nets[name] = module if fresh(name) else handle(module)
        if "vae" in self.recipe.reads:
            nets["vae"] = self.teacher.decode
        if "teacher" in self.recipe.reads:
            nets["teacher"] = handle(self.teacher.dit, default_guidance=self.teacher_guidance, is_teacher=True)
        if "ema" in self.recipe.reads:
            nets["ema"] = handle(self.ema_module)
        return nets

    # weights ----------------------------------------------------------------------------------------------------
    def fresh_trained(self) -> list[str]:
        """The fresh networks that train: what a checkpoint writes as `<name>/` folders."""
        return [name for name, spec in self.specs.items() if spec.init == FRESH and spec.trains]

    def write_weights(self, folder, rank: int) -> None:
        """The student (student/ or lora/) and its EMA into a checkpoint folder (a collective under ZeRO-3), and
        each trained fresh network as a diffusers folder `<name>/` (config.json + safetensors)."""
        for name in self.fresh_trained():
            weights = full_state_dict(self.engines[name])
            if rank == 0:
                module = self.engines[name].module
                module.save_config(folder / name)
                save_file(weights, folder / name / "diffusion_pytorch_model.safetensors")
        if self.main != "student":
            return
        cfg = self.cfg
        export = self.ema_module if cfg.student.export == "ema" else self.engine
        lora = cfg.student.lora is not None
        names = self.trainable_names if lora else None
        weights = full_state_dict(export, names)
        family = self.teacher.family
        if rank == 0:
            if lora:
                family.save_lora(folder / "lora", weights, lora_settings(cfg, family))
            else:
                family.save_dit(getattr(export, "module", export), weights, folder / "student")
        if self.ema_module is not None and (lora or cfg.student.export != "ema"):
            ema = full_state_dict(self.ema_module, self.trainable_names)
            if rank == 0:
                save_file(ema, folder / "ema.safetensors")

    def load(self, folder) -> None:
        """Every engine's DeepSpeed state and the EMA from a checkpoint folder."""
        for name, engine in self.engines.items():
            path, _ = engine.load_checkpoint(str(folder / "engines"), tag=name)
            if path is None:
                raise ConfigError(f"--resume: {str(folder)!r} holds no DeepSpeed state for {name!r} "
                                  f"(engines/{name} is missing)")
        if self.ema_module is not None:
            ema_file = folder / "ema.safetensors"
            # without ema.safetensors, the exported student is the EMA (student.export: ema)
            state = load_file(ema_file) if ema_file.is_file() else self.teacher.family.read_dit_state(folder / "student")
            load_full_state_dict(self.ema_module, {k: v for k, v in state.items() if k in self.trainable_names})

    def sampling_model(self):
        """The weights validation and monitors sample with: the EMA when kept, else the student."""
        return self.ema_module if self.ema_module is not None else self.engine
