"""Adversarial post-training (APT) of a one-step generator against real video.

Lin et al. 2025, "Diffusion Adversarial Post-Training for One-Step Video Generation", as an algorithm box:

    generator     G(z, c) = z − v_θ(z, t=1, c)                   one step from pure noise (θ from a CD student)
    discriminator D(x_t, t, c): the teacher's DiT as backbone (trained in full), cross-attention-only heads after
                  blocks at ~45%, 70%, 100% of its depth (one learnable query over all visual tokens each);
                  head outputs concatenated, normalised, projected to one logit

    per step, with real latents x and text c:
      D phase:  x̂ = sg G(z, c);  t ~ shift(U(0, 1), s) per sample;  x_t = (1 − t)x + tε,  x̂_t = (1 − t)x̂ + tε′
                L_D = softplus(−D(x_t)) + softplus(D(x̂_t)) + λ‖D(x_t) − D(x_t + σn)‖²     (approximated R1)
      G phase:  x̂ = G(z, c);  x̂_t as above;  L_G = softplus(−D(x̂_t))                   (non-saturating)

The approximated R1 replaces ∇ₓD with a finite difference, so no double backward is needed (gradient checkpointing
and ZeRO-sharded training do not support one). D and G alternate; the engine freezes the network a phase does not
train, so G's phase backpropagates through D without touching D's gradients.

APT's monitors (alarms) watch for D collapse and for samples that turned into flat colour or noise.
"""

from __future__ import annotations

import json
import warnings
from typing import Literal

import torch
from pydantic import Field, field_validator

from distill.core.config import Strict
from distill.core.dist import mean_over_ranks
from distill.core.types import VelocityFn
from distill.students.base import (Context, DitShape, MonitorContext, Nets, NetworkSpec, PlannedNetwork,
                                   PlannedPass, RecipeBase, RecipeConfig, RecipePlan, StudentSampler)
from distill.students.common import HeadedDiT, d_loss, g_loss, per_sample, query_head_params, randn_like, \
    head_blocks, refuse_image_conditioning, renoise, shifted_levels
from distill.students.registry import register


class AlarmConfig(Strict):
    """APT's alarms: each warns and keeps a checkpoint (NaN stops the run, as for every recipe)."""

    every: int = Field(50, ge=1)  # steps between checks of decoded samples
    d_collapse: float = Field(0.05, ge=0)  # D's GAN loss below this for `patience` checks: D has won
    patience: int = Field(3, ge=1)
    # Decoded one-step samples whose spatial variance or temporal high-frequency energy leaves
    # [low, high] times that of real clips have turned into flat colour or noise.
    low: float = Field(0.25, gt=0)
    high: float = Field(4.0, gt=1)


class APTConfig(RecipeConfig):
    """Adversarial post-training; see docs/recipes/apt.md."""

    name: Literal["apt"]
    shift: float = Field(12.0, gt=0)  # D's noise levels t ~ shift(U(0, 1), s); the paper's value for video
    r1_weight: float = Field(100.0, ge=0)  # λ
    r1_sigma: float = Field(0.1, gt=0)  # σ of the perturbation in the approximated R1
    d_steps: int = Field(1, ge=1)  # D updates per G update
    head_fractions: tuple[float, ...] = (0.45, 0.70, 1.0)  # of D's depth, where the heads sit
    head_lr_scale: float = Field(1.0, gt=0)  # the heads' learning rate over the backbone's (fresh weights move faster)
    discriminator_init: str = "teacher"  # the backbone's weights: the teacher's DiT, or another same-shaped one
    alarms: AlarmConfig = AlarmConfig()
    sampler: StudentSampler = StudentSampler(steps=1)

    @field_validator("head_fractions")
    @classmethod
    def _fractions(cls, v):
        if not v or any(not 0 < f <= 1 for f in v):
            raise ValueError(f"each head fraction must lie in (0, 1], got {v}")
        return v


# --- the recipe ------------------------------------------------------------------------------------------------------
@register
class AdversarialPostTraining(RecipeBase):
    name = "apt"
    Config = APTConfig
    reads = ()  # APT never runs the teacher's DiT (the engine frees it; its VAE stays for real clips)

    def __init__(self, cfg: APTConfig | None = None, ctx: Context | None = None, **overrides):
        cfg = cfg or APTConfig(name="apt", **overrides)
        super().__init__(cfg, ctx)
        if ctx is not None:
            refuse_image_conditioning("apt", ctx)
        if ctx is not None and ctx.experts > 1:
            # A one-step generator is evaluated at t = 1 only, always on the high-noise side of the boundary: its
            # low-noise expert would never run, in training or sampling. A few-step APT would need a discriminator
            # per expert; neither is built.
            raise ValueError(f"recipe 'apt' trains a one-step student, which runs only the high-noise expert of a "
                             f"{ctx.experts}-expert teacher; distil it with consistency or dmd2 (both experts), or "
                             f"make a one-DiT teacher of its high-noise expert")

    @classmethod
    def check_run(cls, run_cfg) -> None:
        if run_cfg.data.latents != "real":
            raise ValueError("recipe 'apt' trains against real clips: data.latents must be 'real'")

    def networks(self) -> list[NetworkSpec]:
        c = self.cfg
        scale = c.head_lr_scale
        return [NetworkSpec("discriminator", init=c.discriminator_init, init_key="recipe.discriminator_init",
                            make=lambda dit: HeadedDiT(dit, tuple(c.head_fractions)),
                            lr_scales={"heads.": scale, "norm.": scale, "out.": scale},
                            pooled=lambda d: list(d.heads), backbone=lambda d: d.backbone)]

    def phases(self, step: int) -> tuple[str, ...]:
        return ("discriminator",) * self.cfg.d_steps + ("student",)

    @staticmethod
    def generate(student: VelocityFn, z: torch.Tensor) -> torch.Tensor:
        """One step from pure noise: x0 = z − v(z, t = 1)."""
        t = torch.ones(z.shape[0], dtype=torch.float64, device=z.device)
        return z - student(z, t).to(z.dtype)

    def loss(self, phase: str, nets: Nets, x_real: torch.Tensor, generator=None) -> dict[str, torch.Tensor]:
        c = self.cfg
        student, disc = nets["student"], nets["discriminator"]
        z = torch.randn(x_real.shape, generator=generator).to(x_real)
        if phase == "discriminator":
            with torch.no_grad():
                fake = self.generate(student, z)
            t = shifted_levels(x_real.shape[0], c.shift, generator).to(x_real.device)  # one t per real/fake pair
            tt = per_sample(t, x_real)
            # common.renoise takes 1 − t in float64; this phase has always taken it in the latents' dtype, and
            # keeping that keeps APT's runs bit-identical to those trained before the recipe contract
            real_t = (1 - tt) * x_real + tt * randn_like(x_real, generator)
            fake_t = (1 - tt) * fake + tt * randn_like(x_real, generator)
            perturbed = real_t + c.r1_sigma * randn_like(x_real, generator)
            logits = disc(torch.cat([real_t, fake_t, perturbed]), torch.cat([t, t, t]))  # one batched forward
            d_real, d_fake, d_perturbed = logits.chunk(3)
            gan = d_loss(d_real, d_fake)
            r1 = (d_real - d_perturbed).pow(2).mean()
            return {"discriminator": gan + c.r1_weight * r1, "d_gan": gan.detach(), "r1": r1.detach(),
                    "d_real": d_real.detach().mean(), "d_fake": d_fake.detach().mean()}
        if phase == "student":
            fake = self.generate(student, z)
            t = shifted_levels(x_real.shape[0], c.shift, generator).to(x_real.device)
            fake_t = renoise(fake, t, randn_like(fake, generator))
            g = g_loss(disc(fake_t, t))
            return {"student": g, "g_gan": g.detach()}
        raise ValueError(f"APT trains 'discriminator' and 'student', not {phase!r}")

    def monitors(self, ctx: MonitorContext) -> list:
        return [Alarms(ctx, self.cfg.alarms)]

    def plan(self, dit: DitShape) -> RecipePlan:
        heads_at = head_blocks(dit.depth, tuple(self.cfg.head_fractions))
        layers = heads_at[-1] + 1
        params = dit.params - dit.block_params * (dit.depth - layers) + query_head_params(dit.dim, dit.heads,
                                                                                          len(heads_at))
        return RecipePlan(
            networks=[PlannedNetwork("discriminator", params, dit.frozen_output_params, layers)],
            phases={"D phase: D forward + backward on real, fake, perturbed": [PlannedPass("discriminator", 3)],
                    "G phase: G and D forward + backward": [PlannedPass("student"), PlannedPass("discriminator")]})


# --- the monitors ----------------------------------------------------------------------------------------------------
def spatial_stats(videos: torch.Tensor, cutoff: float = 0.5) -> dict[str, float]:
    """uint8 clips [B, T, H, W, 3] → mean per-frame pixel variance, and the share of each frame's spatial power
    spectrum above `cutoff`·Nyquist (noise drives it up, flat colour drives the variance to 0)."""
    x = videos.float().mean(-1) / 255.0  # intensity [B, T, H, W]
    variance = x.var(dim=(-2, -1)).mean()
    power = torch.fft.fftshift(torch.fft.fft2(x - x.mean(dim=(-2, -1), keepdim=True)), dim=(-2, -1)).abs().pow(2)
    h, w = x.shape[-2:]
    fy = torch.linspace(-1, 1, h).view(-1, 1).abs()
    fx = torch.linspace(-1, 1, w).view(1, -1).abs()
    high = (torch.maximum(fy, fx) > cutoff).to(power)
    share = (power * high).sum() / power.sum().clamp_min(1e-12)
    return {"variance": float(variance), "hf_share": float(share)}


class Alarms:
    """Each alarm warns, is logged to `alarms.jsonl`, and makes the run keep a checkpoint of the state it went off
    in. Keeping a checkpoint is a collective, so every rank must take the same decision: the alarms read the
    engine's all-reduced losses and the sample figures averaged over the ranks (`mean_over_ranks`), never a
    rank's own, so a rank whose clips went bad alone (a different sampling network, a rank-local fault) cannot
    take the checkpoint's path by itself.

    - discriminator collapse: D's GAN loss stays below `d_collapse` for `patience` consecutive checks (D has won;
      G's gradients vanish);
    - flat colour or noise: the student's decoded one-step clips have a spatial variance, or a share of spatial
      high-frequency energy, outside [low, high] times that of real clips.
    """

    name = "alarms"

    def __init__(self, ctx: MonitorContext, cfg: AlarmConfig):
        self.ctx, self.cfg = ctx, cfg
        state = (ctx.state or {}).get(self.name) or {}
        self.low_d_checks = state.get("low_d_checks", 0)
        n = min(4, len(ctx.prompts))
        self.prompts = ctx.prompts[:n]
        self.reference = mean_over_ranks(spatial_stats(ctx.decode(ctx.real_x0[:n])))

    def state(self) -> dict:
        return {"low_d_checks": self.low_d_checks, "reference": self.reference}

    def _raise(self, step: int, kind: str, detail: str) -> None:
        message = f"step {step}: alarm {kind}: {detail}; keeping a checkpoint of this state"
        if self.ctx.rank == 0:
            warnings.warn(message, stacklevel=2)
            with (self.ctx.out / "alarms.jsonl").open("a") as f:
                f.write(json.dumps({"step": step, "alarm": kind, "detail": detail}) + "\n")

    def check(self, step: int, losses: dict) -> bool:
        """True when an alarm went off at this step (the caller then keeps a checkpoint)."""
        if step % self.cfg.every:
            return False
        fired = False
        d_gan = losses.get("d_gan")
        self.low_d_checks = self.low_d_checks + 1 if d_gan is not None and d_gan < self.cfg.d_collapse else 0
        if self.low_d_checks == self.cfg.patience:
            self._raise(step, "discriminator_collapse", f"D's GAN loss {d_gan:.4g} < {self.cfg.d_collapse} for "
                                                        f"{self.cfg.patience} checks")
            fired = True
        stats = mean_over_ranks(spatial_stats(self.ctx.decode(self.ctx.student_latents(self.prompts, step))))
        for key, value in stats.items():
            ratio = value / max(self.reference[key], 1e-12)
            if not self.cfg.low <= ratio <= self.cfg.high:
                kind = "flat_samples" if ratio < self.cfg.low and key == "variance" else "noisy_samples"
                self._raise(step, kind, f"{key} of decoded samples is {ratio:.3g}x that of real clips "
                                        f"(allowed [{self.cfg.low}, {self.cfg.high}])")
                fired = True
        return fired
