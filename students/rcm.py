"""rCM: score-regularised continuous-time consistency distillation of a flow-matching teacher.

Zheng et al. 2025 (NVlabs rCM, behind TurboDiffusion): the continuous-time consistency objective of sCM (Lu & Song
2024, "Simplifying, stabilizing and scaling continuous-time consistency models") plus DMD's distribution matching as
a regulariser. sCM is written in TrigFlow; the teachers here are flow matching, and the two are one path in other
coordinates (docs/recipes/rcm.md derives every line below):

    TrigFlow    x_s = cos(s)·x0 + sin(s)·σ_d·ε,  s ∈ [0, π/2]     flow matching  x_t = (1 − t)·x0 + t·ε
    time        t = σ_d·sin s / c(s),  c(s) = cos s + σ_d·sin s,   x_t = x_s / c(s)   (tan s = t / (σ_d·(1 − t)))
    F from v    F(x_s, s) = [(cos s − sin s / σ_d)·x_s + v(x_s / c, t)] / c          v: a flow-matching velocity
    ODE         dx_s/ds = σ_d·F_T(x_s, s)                                           (F_T: the teacher's, with CFG w)
    student     f_θ(x_s, s) = cos s·x_s − sin s·σ_d·F_θ(x_s, s) = x_t − t·v_θ(x_t, t)   (the consistency sampler's x0)

    per step, with clean latents x0 and text c (`step`: the engine's step, for the warm-up):
      sCM (the student phase; no other phase before `tangent_warmup` steps):
          σ = exp(P_mean + P_std·n), n ~ N(0, 1);  s = atan(σ / σ_d)                  a log-normal level per sample
          x_s = cos s·x0 + sin s·σ_d·ε;  dx/ds = σ_d·F_T(x_s, s)                      teacher with CFG (no grad)
          F⁻, cos s sin s·dF⁻/ds = JVP of F_sg(θ) at (x_s, s) along cos s sin s·(dx/ds, 1)   one forward-mode pass
          r = min(1, step / tangent_warmup)                                            tangent warm-up
          g = −cos² s·(σ_d·F⁻ − dx/ds) − r·cos s sin s·(x_s + σ_d·dF⁻/ds)             = cos s·d f⁻/ds at r = 1
          g ← g / (‖g‖ + c)                                                           tangent normalisation
          L_sCM = ‖F_θ(x_s, s) − F⁻ − g‖²  (summed over the sample, mean over the batch)
      DMD (after the warm-up, `dmd.weight` > 0): the critic phase and the generator loss of students/dmd.py
          critic phase, dmd.critic_steps times: L_φ as DMD2's (flow matching on the student's samples)
          L_DMD = ‖x̂ − sg(x̂ − g_DMD)‖² summed over the sample (= 2·numel × DMD2's ½·mean form)
      L_θ = λ_sCM·L_sCM + λ_DMD·L_DMD

The JVP is forward-mode AD (torch.autograd.forward_ad) through the student's own Handle; PyTorch's fused attention
kernels have no forward-mode rule, so attention inside the JVP runs as the math path in query chunks
(`MathAttention`). The DMD regulariser is students/dmd.py's `DistributionMatching` (DMD2's machinery, shared
rather than copied: a recipe never imports another recipe).
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from distill.core.config import Strict
from distill.students.base import (Context, DitShape, Nets, NetworkSpec, PlannedPass, RecipeBase, RecipeConfig,
                                   RecipePlan, StudentSampler)
from distill.students.common import per_sample, randn_like, refuse_image_conditioning
from distill.students.dmd import CriticLora, DistributionMatching, DMD2Config
from distill.students.registry import register

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --- forward-mode AD through a DiT ----------------------------------------------------------------------------------
class MathAttention(TorchFunctionMode):
    """Inside a JVP, every `scaled_dot_product_attention` runs on the math path, `chunk` queries at a time.

    The fused kernels (CPU flash, CUDA flash / memory-efficient / cuDNN) have no forward-mode AD rule in PyTorch
    2.x; the math path is composite, so forward AD goes through it. Queries are independent rows of attention,
    so chunking them caps the L x L score matrix (and its tangent) at chunk x L per head without changing a number.
    """

    def __init__(self, chunk: int = 1024):
        super().__init__()
        self.chunk, self.calls = chunk, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        self.calls += 1
        args = list(args)
        query = kwargs.pop("query") if "query" in kwargs else args.pop(0)
        mask = kwargs.pop("attn_mask", None)
        if mask is None and len(args) >= 3:
            mask = args.pop(2)
        if kwargs.get("is_causal") and query.shape[-2] > self.chunk:
            raise ValueError("MathAttention: causal attention over several query chunks is not supported")
        out = []
        with sdpa_kernel([SDPBackend.MATH]):
            for start in range(0, query.shape[-2], self.chunk):
                rows = slice(start, start + self.chunk)
                m = mask if mask is None or mask.dim() < 2 or mask.shape[-2] == 1 else mask[..., rows, :]
                out.append(func(query[..., rows, :], *args, attn_mask=m, **kwargs))
        return torch.cat(out, dim=-2)


def jvp(fn: Callable, primals: tuple[torch.Tensor, ...], tangents: tuple[torch.Tensor, ...], chunk: int = 1024
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(fn(*primals), the derivative of fn at primals along tangents), by one forward-mode pass, without building
    a backward graph."""
    with torch.no_grad(), fwAD.dual_level(), MathAttention(chunk):
        out = fn(*(fwAD.make_dual(p, t.to(p)) for p, t in zip(primals, tangents)))
        primal, tangent = fwAD.unpack_dual(out)
        tangent = torch.zeros_like(primal) if tangent is None else tangent.clone()
        return primal.clone(), tangent


# --- TrigFlow from flow matching -------------------------------------------------------------------------------------
def trig_to_flow(s: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """The flow-matching level of TrigFlow time s: t = σ_d·sin s / (cos s + σ_d·sin s)."""
    return sigma_data * torch.sin(s) / (torch.cos(s) + sigma_data * torch.sin(s))


def flow_to_trig(t: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """The inverse: s = atan2(t, σ_d·(1 − t))."""
    return torch.atan2(t, sigma_data * (1 - t))


def trig_F(velocity: VelocityFn, x_s: torch.Tensor, s: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """TrigFlow's F of a flow-matching velocity model: F = [(cos s − sin s/σ_d)·x_s + v(x_s/c, t(s))] / c."""
    cos, sin = torch.cos(s), torch.sin(s)
    c = per_sample(cos + sigma_data * sin, x_s)
    v = velocity(x_s / c, sigma_data * sin / (cos + sigma_data * sin)).to(x_s)
    return (per_sample(cos - sin / sigma_data, x_s) * x_s + v) / c


# --- the config -----------------------------------------------------------------------------------------------------
class DMDSettings(Strict):
    """The DMD regulariser: DMD2's critic and generator loss (students/dmd.py), without its GAN term."""

    weight: float = Field(1.0, ge=0)  # λ_DMD; 0: pure sCM, no critic network
    critic_steps: int = Field(4, ge=1)  # critic updates per student update (rCM: student_update_freq − 1)
    critic_lr: float | None = Field(None, gt=0)  # None: the run's optim.lr
    critic_betas: tuple[float, float] | None = None
    critic_lora: CriticLora | None = None
    t_range: tuple[float, float] = (0.0, 1.0)  # u range of the critic's levels t = shift(u, s) (rCM: the full range)
    t_shift: float | None = Field(None, gt=0)  # s; None: the teacher's shift (rCM's video configs: 5)
    backward_simulation: bool = True


class RCMConfig(RecipeConfig):
    """rCM: sCM + DMD; see docs/recipes/rcm.md."""

    name: Literal["rcm"]
    sigma_data: float = Field(1.0, gt=0)  # σ_d: the data's standard deviation in TrigFlow (rCM: 1 on its normalised latents)
    p_mean: float = 0.7  # the sCM levels: log σ ~ N(p_mean, p_std²), s = atan(σ/σ_d) (rCM at 1.3B: 0.7, 1.6)
    p_std: float = Field(1.6, gt=0)
    guidance: float | None = Field(None, ge=0)  # the teacher's CFG in the ODE and the real score; None: its own
    tangent_warmup: int = Field(0, ge=0)  # steps over which r rises 0 → 1 (and before which DMD is off); 0: r = 1
    tangent_norm: float = Field(0.1, gt=0)  # c in g / (‖g‖ + c)
    scm_weight: float = Field(100.0, gt=0)  # λ_sCM (rCM's loss_scale)
    dmd: DMDSettings = DMDSettings()
    jvp_attention_chunk: int = Field(1024, ge=1)  # queries per math-attention call inside the JVP (memory)
    sampler: StudentSampler = StudentSampler(steps=4)

    @field_validator("dmd")
    @classmethod
    def _t_range(cls, v):
        lo, hi = v.t_range
        if not 0 <= lo < hi <= 1:
            raise ValueError(f"t_range {list(v.t_range)} must be [lo, hi] with 0 <= lo < hi <= 1")
        return v


# --- the recipe -----------------------------------------------------------------------------------------------------
@register
class RCM(RecipeBase):
    name = "rcm"
    Config = RCMConfig
    reads = ("teacher",)

    def __init__(self, cfg: RCMConfig, ctx: Context):
        super().__init__(cfg, ctx)
        refuse_image_conditioning("rcm", ctx)
        self.guidance = cfg.guidance if cfg.guidance is not None else ctx.teacher_guidance
        self.step = 0  # set by phases(step), which the engine calls before the step's losses
        d = cfg.dmd
        # DMD2 owns the critic, the generator's samples on the student's levels and the distribution-matching
        # gradient; handing it this recipe's sampler keeps both on one grid.
        self.dmd = None if d.weight == 0 else DistributionMatching(DMD2Config(
            name="dmd2", critic_steps=d.critic_steps, critic_lr=d.critic_lr, critic_betas=d.critic_betas,
            critic_lora=d.critic_lora, guidance=self.guidance, t_range=d.t_range, t_shift=d.t_shift,
            backward_simulation=d.backward_simulation, gan_weight=0.0, sampler=cfg.sampler), ctx)

    def networks(self) -> list[NetworkSpec]:
        return self.dmd.networks() if self.dmd else []

    def dmd_on(self, step: int) -> bool:
        return self.dmd is not None and step >= self.cfg.tangent_warmup

    def phases(self, step: int) -> tuple[str, ...]:
        self.step = step
        return ("critic",) * self.cfg.dmd.critic_steps + ("student",) if self.dmd_on(step) else ("student",)

    def warmup(self, step: int) -> float:
        w = self.cfg.tangent_warmup
        return 1.0 if w == 0 else min(1.0, step / w)

    def loss(self, phase: str, nets: Nets, x0: torch.Tensor, generator=None) -> dict[str, torch.Tensor]:
        if phase == "critic" and self.dmd_on(self.step):
            return self.dmd.critic_loss(nets, x0, generator)
        if phase != "student":
            raise ValueError(f"rCM trains 'student' (and 'critic' after the warm-up), not {phase!r}")
        teacher = nets["teacher"]
        out = self.scm_loss(nets["student"], lambda x, t: teacher(x, t, guidance=self.guidance), x0, generator,
                            self.warmup(self.step))
        scm = out.pop("scm")
        out.update(student=self.cfg.scm_weight * scm, scm=scm.detach())
        if self.dmd_on(self.step):
            dmd = self.dmd.generator_loss(nets, x0, generator)
            term = 2 * x0[0].numel() * dmd.pop("student")  # rCM's summed form of DMD2's ½·mean
            out.update(dmd, student=out["student"] + self.cfg.dmd.weight * term, dmd=term.detach())
        return out

    # --- sCM ------------------------------------------------------------------------------------------------------
    def levels(self, b: int, generator: torch.Generator | None) -> torch.Tensor:
        """TrigFlow times s [B] (float64): σ log-normal, s = atan(σ/σ_d); σ kept in [1e-3, 1e3]."""
        c = self.cfg
        sigma = torch.exp(c.p_mean + c.p_std * torch.randn(b, generator=generator, dtype=torch.float64))
        return torch.atan(sigma.clamp(1e-3, 1e3) / c.sigma_data)

    def scm_loss(self, student: VelocityFn, teacher: VelocityFn, x0: torch.Tensor, generator: torch.Generator | None,
                 r: float = 1.0) -> dict[str, torch.Tensor]:
        """The sCM box of the module's docstring; `student`, `teacher`: velocity functions (x_t, t) -> v."""
        sd, b = self.cfg.sigma_data, x0.shape[0]
        s = self.levels(b, generator).to(x0.device)
        eps = randn_like(x0, generator)
        cos, sin = per_sample(torch.cos(s), x0), per_sample(torch.sin(s), x0)
        x_s = cos * x0 + sin * sd * eps
        with torch.no_grad():
            dxds = sd * trig_F(teacher, x_s, s, sd)
        cs = torch.cos(s) * torch.sin(s)  # the JVP's tangents scaled by cos s sin s (sCM §5.1): no 1/sin, 1/cos blow-up
        F_sg, dF = jvp(lambda x, ss: trig_F(student, x, ss, sd), (x_s, s), (per_sample(cs, x_s) * dxds, cs),
                       self.cfg.jvp_attention_chunk)
        # dF = cos s sin s · dF⁻/ds; everything in x0's dtype (trig_F casts a bf16 network's output)
        g = -cos ** 2 * (sd * F_sg - dxds) - r * (cos * sin * x_s + sd * dF)
        norm = g.flatten(1).norm(dim=1)
        g = g / per_sample(norm + self.cfg.tangent_norm, g)
        F_theta = trig_F(student, x_s, s, sd)
        scm = (F_theta - F_sg - g).pow(2).flatten(1).sum(1).mean()
        return {"scm": scm, "scm_g_norm": norm.mean().detach(), "scm_r": torch.tensor(r),
                "scm_t": trig_to_flow(s, sd).float().mean()}

    # --- the memory planner ---------------------------------------------------------------------------------------
    def plan(self, dit: DitShape) -> RecipePlan:
        scm = [PlannedPass("teacher", 2, grad=False),  # dx/ds: the teacher with CFG
               PlannedPass("student", 2, grad=False),  # the JVP: every activation carries a tangent of its size
               PlannedPass("student", 1)]  # F_θ with grad
        phases = {"sCM (warm-up): teacher with CFG, the student's JVP (primal + tangent, no grad), student forward "
                  "+ backward": scm}
        networks = []
        if self.dmd is not None:
            dmd = self.dmd.plan(dit)
            networks = dmd.networks
            for name, passes in dmd.phases.items():
                if name.startswith("generator"):
                    phases["sCM + DMD: " + name.split(": ", 1)[1] + ", plus the sCM passes"] = scm + passes
                else:
                    phases[name] = passes
        return RecipePlan(networks=networks, phases=phases)
