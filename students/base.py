"""The recipe contract: what a distillation recipe gives the engine, and what the engine hands back to it.

A recipe is one module of `students/` holding one class registered with `@register` (students/registry.py). The
engine (distill/) finds it by the config's `recipe.name` and never names it. The class owns:

    name        the value of `recipe.name` in a run config
    Config      its typed config (a `RecipeConfig`): the single source of its hyperparameters and defaults
    check_run   checks that need the whole run config (data, student), run before any work starts
    reads       the frozen networks its losses read: "teacher" (the teacher's DiT) and/or "ema" (the student's EMA)
    networks()  the networks it adds beside the student (`NetworkSpec`: how each is made, whether it trains, its
                optimizer overrides, whether ZeRO-3 partitions it like the student)
    phases(s)   the networks updated at step s, in order (alternation, several critic updates per generator update)
    fresh_batches  True: each phase of a step gets its own batch of the data (DMD2's critic updates); else one
    loss(...)   the losses of one phase, as its paper's algorithm box; the entry named after the phase is backpropagated
    sampler()   the few-step sampler its student is made for: used for validation clips, written by export, read by eval
    monitors()  checks on the run's state it wants every few steps (each may ask the engine to keep a checkpoint)
    plan(...)   its networks and passes for the memory planner (distill/plan.py)

A recipe that trains a network other than the DiT (a distilled VAE decoder: students/decoder.py) uses two small
extensions, both generic:

    NetworkSpec(init=FRESH, make=lambda _: Net(...))   a network built from nothing (`make(None)`), sized from the
                `Context` (latent channels, the family's `VideoFactors`): no DiT copy, no LoRA, no sequence sharding.
                It is a diffusers `ModelMixin`/`ConfigMixin`; a checkpoint writes each trained one as `<name>/`
                (config.json + safetensors, loadable with `from_pretrained`), and `distill export` copies it out.
                Its loss's handle is the module itself (its DeepSpeed engine in its own phase).
    trains_student = False   the DiT is not trained: the engine builds no student copy and no EMA
                (student.ema_decay must be null), the run's `loss` is the first trained fresh network's loss,
                checkpoints hold the fresh networks instead of student/, and validation writes
                `validation_clips(nets, x0)` of a few training latents.
    reads "vae"  nets["vae"] is the teacher's `decode` (normalised latents -> uint8 [B, T, H, W, 3]).

`Handle` is what a loss calls: velocity with guidance per call (classifier-free, both halves in one forward), and
features at named blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Protocol

import torch
from pydantic import Field, field_validator
from torch import nn

from distill.core.config import Strict
from distill.teachers.base import VideoFactors
from distill.teachers.samplers import DEFAULT_GRID, LEGACY_GRID, Grid, check_grid, student_levels


# --- configs ------------------------------------------------------------------------------------------------------
class StudentSampler(Strict):
    """The few-step sampler the student is distilled for: used in training (DMD2's levels), for validation clips, and
    written by export. `grid` is its noise levels: a rule of teachers.samplers.GRIDS applied to (steps, shift), or
    explicit levels (from 1.0 down, `steps` many); see docs/recipes/grids.md. The default makes every step a real
    step; "euler" is the grid of checkpoints that predate the choice (its last level is near 0)."""

    steps: int = Field(4, ge=1, le=64)
    shift: float | None = Field(None, gt=0)  # None: the teacher's shift
    grid: str | tuple[float, ...] = DEFAULT_GRID

    @field_validator("grid")
    @classmethod
    def _grid(cls, v, info):
        return check_grid(v, info.data.get("steps"))


class RecipeConfig(Strict):
    """Every recipe config has its name (a `Literal` in the subclass) and the student's sampler."""

    name: str
    sampler: StudentSampler = StudentSampler()


# --- what the engine tells a recipe ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Context:
    """The teacher's sampling settings and the DiT's shape, known before any weights load."""

    teacher_shift: float
    teacher_guidance: float
    teacher_steps: int
    depth: int  # transformer blocks of the teacher's DiT
    dim: int  # hidden size (heads x head dim)
    heads: int
    experts: int = 1  # expert DiTs behind the teacher's velocity (2 for a high-/low-noise pair), each a copy of this shape
    latent_channels: int | None = None  # the latent's channels (the DiT's input), for sizing a fresh network
    factors: VideoFactors | None = None  # the family's VAE compression and DiT patch, for sizing a fresh network
    image_conditioned: bool = False  # the examples carry a conditioning image (an image-to-video teacher)


@dataclass(frozen=True)
class SamplerSpec:
    """A student's sampler, as checkpoints and exports record it (teachers/samplers.py names)."""

    name: str
    steps: int
    shift: float
    guidance: float = 1.0
    grid: Grid = LEGACY_GRID  # a rule name or explicit levels (teachers.samplers.student_levels)

    def as_dict(self) -> dict:
        grid = self.grid if isinstance(self.grid, str) else list(self.grid)
        return {"name": self.name, "steps": self.steps, "shift": self.shift, "guidance": self.guidance, "grid": grid}

    def levels(self):
        """The noise levels this sampler visits (float64, from 1 down)."""
        return student_levels(self.steps, self.shift, self.grid)


FRESH = "fresh"  # NetworkSpec.init of a network built from nothing by `make(None)` (no DiT copy)


@dataclass(frozen=True)
class NetworkSpec:
    """A network a recipe adds beside the student."""

    name: str
    # its DiT weights: "teacher" (a copy of the teacher's), or a same-shaped diffusers folder; FRESH: no DiT, `make(None)`
    # builds the whole network (a diffusers ModelMixin/ConfigMixin)
    init: str = "teacher"
    init_key: str = ""  # the config key that chose `init`, for error messages ("recipe.discriminator_init")
    make: Callable[[nn.Module], nn.Module] | None = None  # builds the network around the fp32 DiT copy (heads)
    trains: bool = True
    optim: dict[str, Any] = field(default_factory=dict)  # overrides of the run's optim: lr, betas, eps, weight_decay
    lr_scales: dict[str, float] = field(default_factory=dict)  # lr factor for weights whose names start with a key
    partitioned: bool = True  # under ZeRO-3 partitioned across ranks like the student (else whole on every rank)
    # Modules that read every token of the clip (pooling heads): under sequence parallelism their inputs are gathered.
    pooled: Callable[[nn.Module], list[nn.Module]] | None = None
    backbone: Callable[[nn.Module], nn.Module] | None = None  # the DiT inside the network (sequence sharding)
    # LoRA on the DiT copy instead of training it in full (memory): {"rank": 16, "alpha": 16.0, "target_modules":
    # [...]}; None: full training. Only the adapter (and any fresh heads) train.
    lora: dict[str, Any] | None = None
    gradient_checkpointing: bool | None = None  # None: as the student (student.gradient_checkpointing)


# --- what a loss calls ----------------------------------------------------------------------------------------------
class Handle(Protocol):
    def __call__(self, x: torch.Tensor, t: torch.Tensor, guidance: float | None = None) -> torch.Tensor:
        """The network's output at noise levels t ([B] float64): a velocity for a DiT, logits for a discriminator.
        `guidance` > 1 applies classifier-free guidance with the run's negative prompt; None: the network's
        default (the teacher's configured guidance for the teacher, 1 for every other network)."""

    def features(self, x: torch.Tensor, t: torch.Tensor, blocks: tuple[int, ...]
                 ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """The output and the token features [B, L, D] after the given blocks (0-based), in one forward."""

    def with_heads(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For a network built as `common.HeadedDiT(..., keep_output=True)`: (velocity, logits) in one forward."""

    def image_frames(self, x: torch.Tensor) -> torch.Tensor | None:
        """bool [F] over x's latent frames: True where the batch's image gives the frame clean (a text-and-image
        teacher's first frame, read by the DiT at noise level 0); None: every frame is generated. Losses score
        only the generated frames (`common.generated`)."""

    def keep_image_frames(self, x: torch.Tensor) -> torch.Tensor:
        """x with the frames the image gives set to the image's latents (x itself when there are none)."""


Nets = dict[str, Handle]


class Monitor(Protocol):
    """A recipe's check on the run, called after every step on every rank; True asks the engine to keep a checkpoint
    now (the engine keeps one when any rank's monitor asks). `state()` is saved in every checkpoint under `name`
    and handed back on resume (MonitorContext.state). A monitor decides on figures that are the same on every
    rank (the engine's all-reduced losses; its own figures through distill.core.dist.mean_over_ranks), so that its
    state stays the same on every rank too."""

    name: str

    def check(self, step: int, losses: dict[str, float]) -> bool: ...

    def state(self) -> dict: ...


@dataclass
class MonitorContext:
    """What the engine lends a recipe's monitors."""

    rank: int
    out: Any  # the run folder (pathlib.Path)
    prompts: list[str]  # training prompts, in data order
    real_x0: torch.Tensor  # a few clean training latents
    decode: Callable[[torch.Tensor], torch.Tensor]  # latents -> uint8 clips [B, T, H, W, 3]
    student_latents: Callable[[list[str], int], torch.Tensor]  # (prompts, seed) -> the student's latents (collective)
    state: dict  # what each monitor saved in the checkpoint this run resumed from, by monitor name ({} if new)


# --- what the memory planner reads ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlannedNetwork:
    """A network the recipe adds, counted without weights."""

    name: str
    params: int
    frozen_params: int = 0  # of those, the ones it does not train
    depth: int | None = None  # DiT blocks it runs (None: all)
    trains: bool = True


@dataclass(frozen=True)
class PlannedPass:
    """One forward (and backward) inside a phase: `network` on `batch` copies of the batch."""

    network: str  # "student", "teacher", "ema" or one of the recipe's networks
    batch: int = 1
    grad: bool = True


@dataclass(frozen=True)
class RecipePlan:
    networks: list[PlannedNetwork]
    phases: dict[str, list[PlannedPass]]  # a description of each phase -> its passes (the largest one sets the peak)


@dataclass(frozen=True)
class DitShape:
    """The planner's view of the teacher's velocity network, for a recipe to count what it adds."""

    params: int  # the whole velocity network's (every expert's)
    block_params: int
    depth: int
    dim: int
    heads: int
    frozen_output_params: int  # the output projection, its norm and the scale-shift table
    lora_per_rank: int = 0  # weights LoRA of rank 1 adds on the family's default targets (all experts)


# --- the recipe ----------------------------------------------------------------------------------------------------
class Recipe(Protocol):
    name: ClassVar[str]
    Config: ClassVar[type[RecipeConfig]]
    reads: tuple[str, ...]

    def __init__(self, cfg: RecipeConfig, ctx: Context): ...

    @classmethod
    def check_run(cls, run_cfg) -> None:
        """Raise ValueError naming the key when the run config cannot work with this recipe."""

    def networks(self) -> list[NetworkSpec]: ...

    def phases(self, step: int) -> tuple[str, ...]: ...

    def loss(self, phase: str, nets: Nets, x0: torch.Tensor, generator: torch.Generator | None
             ) -> dict[str, torch.Tensor]: ...

    def sampler(self) -> SamplerSpec: ...

    def monitors(self, ctx: MonitorContext) -> list[Monitor]: ...

    def plan(self, dit: DitShape) -> RecipePlan: ...


class RecipeBase:
    """Defaults for the optional parts of the contract."""

    reads: tuple[str, ...] = ()
    trains_student = True  # False: the DiT is not trained, only the recipe's FRESH networks (see the module docstring)
    fresh_batches = False  # True: the engine hands each phase of a step its own batch (the next in data order)
    sampler_name = "consistency"  # multistep consistency sampling: predict x0, re-noise to the next level

    def __init__(self, cfg: RecipeConfig, ctx: Context):
        self.cfg, self.ctx = cfg, ctx

    @classmethod
    def check_run(cls, run_cfg) -> None:
        return None

    def networks(self) -> list[NetworkSpec]:
        return []

    def phases(self, step: int) -> tuple[str, ...]:
        return ("student",)

    def sampler(self) -> SamplerSpec:
        s = self.cfg.sampler
        return SamplerSpec(self.sampler_name, s.steps, s.shift if s.shift is not None else self.ctx.teacher_shift,
                           grid=s.grid)

    def monitors(self, ctx: MonitorContext) -> list[Monitor]:
        return []

    def validation_clips(self, nets: Nets, x0: torch.Tensor) -> torch.Tensor | None:
        """A recipe that trains no student: the uint8 clips [B, T, H, W, 3] its validation writes for a few
        training latents x0 (None: none)."""
        return None
