"""Distribution matching (DMD2's machinery), shared by the recipes that use it: `dmd2` (students/dmd2.py) and rCM's
regulariser (students/rcm.py). Not a recipe itself: a recipe never imports another recipe (DESIGN.md), so both
compose this.

Distribution matching distillation (DMD2) of a flow-matching teacher into a few-step student.

Yin et al. 2024, "Improved Distribution Matching Distillation for Fast Image Synthesis", written for the
flow-matching parametrisation the teachers use (x_t = (1 − t)·x0 + t·ε, v = ε − x0, x0 = x_t − t·v):

    generator   G_θ(x, t_k) = x − t_k · v_θ(x, t_k, c)         one student step from level t_k (θ from the teacher)
                t_0 = 1 > t_1 > … > t_{N−1}                     the levels of its N-step sampler (recipe.sampler.grid,
                                                                docs/recipes/grids.md), as at inference
    real score  x0_real(x_t, t) = x_t − t · v_T(x_t, t, c; w)   the frozen teacher with CFG w
    fake score  x0_fake(x_t, t) = x_t − t · v_φ(x_t, t, c)      the critic φ, initialised from the teacher
    sample(x0)  k ~ U{0, …, N − 1} per sample
                x_k = the student's own sampler run from noise to level t_k (no grad)  [backward simulation]
                      or (1 − t_k)·x0 + t_k·ε                                          [without]
                x̂ = G_θ(x_k, t_k)

    per step, with clean latents x0 and text c:
      critic phase, recipe.critic_steps times (the two time-scale rule):
          x̂ = sg sample(x0);   t = shift(u, s), u ~ U(0, 1);   x̂_t = (1 − t)·x̂ + t·ε      (full range)
          L_φ = ‖v_φ(x̂_t, t) − (ε − x̂)‖²                               the flow-matching loss on the student's samples
                + λ_D · [softplus(−D_φ(x_t)) + softplus(D_φ(x̂_t))]      GAN term on real x0 re-noised to x_t (optional)
      generator phase:
          x̂ = sample(x0);   t = clamp(shift(u, s), lo, hi), u ~ U(0, 1);   x̂_t = (1 − t)·x̂ + t·ε
          g = (x0_fake(x̂_t) − x0_real(x̂_t)) / mean|x̂ − x0_real(x̂_t)|   per sample, no grad (the paper's normaliser)
          L_θ = ½‖x̂ − sg(x̂ − g)‖²  + λ_G · softplus(−D_φ(x̂_t))          ∇_x̂ L_θ ∝ g: x̂ moves from fake toward real

With an image-conditioned teacher every network reads the batch's image (the handles carry it); the latent frames
the image gives clean (a text-and-image teacher's first frame) are put into x̂ as the image's and left out of L_φ,
of L_θ and of the normaliser.

No regression loss (DMD2 drops DMD's). D_φ is the critic's own DiT with APT's query heads (common.HeadedDiT), so
the GAN term adds heads, not a network. The engine freezes the critic in the generator phase, so L_θ reaches θ
through the critic's logits without touching φ.

Every rank runs the same number of network forwards in every phase (ZeRO-3 gathers each layer's weights in
lockstep across ranks), so backward simulation always runs the sampler through all its levels and each sample
then takes its own level k; the paper draws one k per batch and broadcasts it.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from distill.core.config import Strict
from distill.students.base import (Context, DitShape, Nets, NetworkSpec, PlannedNetwork, PlannedPass, RecipeBase,
                                   RecipeConfig, RecipePlan, StudentSampler)
from distill.students.common import (HeadedDiT, d_loss, g_loss, generated, head_blocks, image_frames,
                                     keep_image_frames, per_sample, query_head_params, randn_like, renoise,
                                     shifted_levels, x0_from_velocity)


class CriticLora(Strict):
    """LoRA on the critic's DiT copy instead of training it in full (the teacher family's attention and
    feed-forward layers)."""

    rank: int = Field(64, ge=1)
    alpha: float = Field(64.0, gt=0)


class DMD2Config(RecipeConfig):
    """Distribution matching distillation (DMD2); see docs/recipes/dmd2.md."""

    name: Literal["dmd2"]
    critic_steps: int = Field(5, ge=1)  # critic updates per generator update (the paper's two time-scale rule: 5)
    critic_lr: float | None = Field(None, gt=0)  # None: the run's optim.lr
    critic_betas: tuple[float, float] | None = None  # None: the run's optim.betas
    critic_lora: CriticLora | None = None  # None: the critic trains in full
    # CFG of the real score (the teacher), as uncond + w·(cond − uncond); None: the teacher's own. Self-Forcing's
    # and CausVid's "guidance 3" is cond + 3·(cond − uncond): w = 4 here
    guidance: float | None = Field(None, ge=0)
    t_range: tuple[float, float] = (0.02, 0.98)  # [lo, hi] of the levels the scores are compared at (t_sampling)
    # "shift-then-clamp": t = clamp(shift(u, s), lo, hi), u ~ U(0, 1), as DMD2 and Self-Forcing draw it;
    # "range-then-shift": t = shift(u, s), u ~ U(lo, hi) (runs before this key: t ∈ [0.14, 0.997] at s = 8)
    t_sampling: Literal["shift-then-clamp", "range-then-shift"] = "shift-then-clamp"
    t_shift: float | None = Field(None, gt=0)  # s; None: the teacher's shift
    # the critic's flow-matching levels: t = shift(u, s), u ~ U(0, 1) (DMD2 trains its fake score on the full
    # range); false: the generator's levels above (runs before this key)
    critic_full_range: bool = True
    fresh_critic_batch: bool = False  # each critic update on its own batch of the data (DMD2), not the step's one
    backward_simulation: bool = True  # the generator's inputs come from its own sampler (else: re-noised data)
    gan_weight: float = Field(0.0, ge=0)  # λ_G, the generator's GAN term; 0: no GAN term, no heads
    critic_gan_weight: float = Field(1e-2, ge=0)  # λ_D, the critic's GAN term (read only when gan_weight > 0)
    gan_head_fractions: tuple[float, ...] = (0.45, 0.70, 1.0)  # of the critic's depth, where the query heads sit
    sampler: StudentSampler = StudentSampler(steps=4)

    @field_validator("critic_betas")
    @classmethod
    def _betas(cls, v):
        if v is not None and not all(0 <= b < 1 for b in v):
            raise ValueError("each beta must lie in [0, 1)")
        return v

    @field_validator("t_range")
    @classmethod
    def _t_range(cls, v):
        lo, hi = v
        if not 0 <= lo < hi <= 1:
            raise ValueError("must be [lo, hi] with 0 <= lo < hi <= 1")
        return v

    @field_validator("gan_head_fractions")
    @classmethod
    def _fractions(cls, v):
        if not v or any(not 0 < f <= 1 for f in v):
            raise ValueError("each head fraction must lie in (0, 1]")
        return v


class DistributionMatching(RecipeBase):
    """The critic, the generator's samples on the student's grid, and the distribution-matching gradient. `DMD2`
    registers it as a recipe; rCM holds one as its regulariser."""

    name = "dmd2"
    Config = DMD2Config
    reads = ("teacher",)

    def __init__(self, cfg: DMD2Config, ctx: Context):
        super().__init__(cfg, ctx)
        self.levels = self.sampler().levels()  # the grid it samples on at inference (recipe.sampler.grid)
        self.t_shift = cfg.t_shift if cfg.t_shift is not None else ctx.teacher_shift
        self.gan = cfg.gan_weight > 0
        if self.gan and ctx.experts > 1:
            raise ValueError(f"gan_weight={cfg.gan_weight}: the critic's GAN heads read one DiT's blocks, and this "
                             f"teacher has {ctx.experts} experts; set recipe.gan_weight=0 (distribution matching "
                             f"alone trains a two-expert student)")
        if self.gan:
            try:
                head_blocks(ctx.depth, tuple(cfg.gan_head_fractions))
            except ValueError as err:
                raise ValueError(f"recipe.gan_head_fractions: {err}") from None

    @classmethod
    def check_run(cls, run_cfg) -> None:
        r = run_cfg.recipe
        if r.gan_weight > 0 and run_cfg.data.latents != "real":
            raise ValueError(f"recipe.gan_weight={r.gan_weight} trains the critic's GAN heads against real clips: "
                             f"data.latents must be 'real', not {run_cfg.data.latents!r} (or set recipe.gan_weight=0)")

    def networks(self) -> list[NetworkSpec]:
        c = self.cfg
        optim = {k: v for k, v in (("lr", c.critic_lr), ("betas", c.critic_betas)) if v is not None}
        lora = None if c.critic_lora is None else {"rank": c.critic_lora.rank, "alpha": c.critic_lora.alpha}
        if not self.gan:
            return [NetworkSpec("critic", init="teacher", optim=optim, lora=lora)]
        fractions = tuple(c.gan_head_fractions)
        return [NetworkSpec("critic", init="teacher", optim=optim, lora=lora,
                            make=lambda dit: HeadedDiT(dit, fractions, keep_output=True),
                            pooled=lambda d: list(d.heads), backbone=lambda d: d.backbone)]

    def phases(self, step: int) -> tuple[str, ...]:
        return ("critic",) * self.cfg.critic_steps + ("student",)

    @property
    def fresh_batches(self) -> bool:
        """Each phase on its own batch (the engine draws the next one), as DMD2's critic updates are."""
        return self.cfg.fresh_critic_batch

    # --- the generator's samples ------------------------------------------------------------------------------------
    def sample(self, student, x0: torch.Tensor, generator: torch.Generator | None, grad: bool
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """x̂ = G_θ(x_k, t_k) for a level k drawn per sample, and k. With backward simulation x_k comes from the
        student's own sampler (sample_consistency's steps, fresh noise at each level); without, from x0 re-noised."""
        b, n = x0.shape[0], len(self.levels)
        k = torch.randint(0, n, (b,), generator=generator)
        t = self.levels[k].to(x0.device)
        z = randn_like(x0, generator)
        if self.cfg.backward_simulation:
            inputs = [z]
            with torch.no_grad():
                for i in range(n - 1):  # every level, on every rank (see the module's docstring)
                    level = self.levels[i].expand(b).to(x0.device)
                    x = x0_from_velocity(inputs[-1], level, student(inputs[-1], level))
                    inputs.append(renoise(x, self.levels[i + 1].expand(b).to(x0.device), randn_like(x, generator)))
            x_k = torch.stack(inputs)[k.to(x0.device), torch.arange(b, device=x0.device)]
        else:
            x_k = renoise(x0, t, z)
        with torch.set_grad_enabled(grad):
            return keep_image_frames(student, x0_from_velocity(x_k, t, student(x_k, t))), k

    # --- the losses -------------------------------------------------------------------------------------------------
    def loss(self, phase: str, nets: Nets, x0: torch.Tensor, generator=None) -> dict[str, torch.Tensor]:
        if phase == "critic":
            return self.critic_loss(nets, x0, generator)
        if phase == "student":
            return self.generator_loss(nets, x0, generator)
        raise ValueError(f"DMD2 trains 'critic' and 'student', not {phase!r}")

    def levels_t(self, b: int, generator, device) -> torch.Tensor:
        """The levels the real and fake scores are compared at."""
        lo, hi = self.cfg.t_range
        if self.cfg.t_sampling == "range-then-shift":
            return shifted_levels(b, self.t_shift, generator, lo, hi).to(device)
        return shifted_levels(b, self.t_shift, generator).clamp(lo, hi).to(device)

    def critic_levels(self, b: int, generator, device) -> torch.Tensor:
        """The levels the critic's flow-matching loss is taken at."""
        if self.cfg.critic_full_range:
            return shifted_levels(b, self.t_shift, generator).to(device)
        return self.levels_t(b, generator, device)

    def critic_loss(self, nets: Nets, x0: torch.Tensor, generator) -> dict[str, torch.Tensor]:
        critic = nets["critic"]
        fake, _ = self.sample(nets["student"], x0, generator, grad=False)
        b = x0.shape[0]
        t = self.critic_levels(b, generator, x0.device)
        eps = randn_like(fake, generator)
        fake_t = renoise(fake, t, eps)
        given = image_frames(nets["student"], x0)
        if not self.gan:
            v = critic(fake_t, t)
            fm = F.mse_loss(generated(v, given).float(), generated(eps - fake, given).float())
            return {"critic": fm, "critic_fm": fm.detach(), "critic_t": t.float().mean()}
        real_t = renoise(x0, t, randn_like(x0, generator))
        v, logits = critic.with_heads(torch.cat([fake_t, real_t]), torch.cat([t, t]))  # one batched forward
        fm = F.mse_loss(generated(v[:b], given).float(), generated(eps - fake, given).float())
        d_fake, d_real = logits.chunk(2)
        gan = d_loss(d_real, d_fake)
        return {"critic": fm + self.cfg.critic_gan_weight * gan, "critic_fm": fm.detach(),
                "critic_t": t.float().mean(), "d_gan": gan.detach(), "d_real": d_real.detach().mean(),
                "d_fake": d_fake.detach().mean()}

    def generator_loss(self, nets: Nets, x0: torch.Tensor, generator) -> dict[str, torch.Tensor]:
        teacher, critic = nets["teacher"], nets["critic"]
        fake, _ = self.sample(nets["student"], x0, generator, grad=True)
        t = self.levels_t(x0.shape[0], generator, x0.device)
        fake_t = renoise(fake, t, randn_like(fake, generator))
        x_t = fake_t.detach()
        gan = None
        if self.gan:  # one critic forward: its logits carry the gradient to x̂, its velocity is read without one
            v_fake, logits = critic.with_heads(fake_t, t)
            v_fake, gan = v_fake.detach(), g_loss(logits)
        given = image_frames(nets["student"], x0)  # frames the image gives clean: not the student's to move
        scored = generated(fake, given)
        with torch.no_grad():
            if gan is None:
                v_fake = critic(x_t, t)
            p_fake = x0_from_velocity(x_t, t, v_fake).float()
            p_real = x0_from_velocity(x_t, t, teacher(x_t, t, guidance=self.cfg.guidance)).float()
            p_fake, p_real = generated(p_fake, given), generated(p_real, given)
            norm = (scored.detach().float() - p_real).abs().flatten(1).mean(1)
            grad = torch.nan_to_num((p_fake - p_real) / per_sample(norm, p_real))
        dmd = 0.5 * F.mse_loss(scored.float(), scored.detach().float() - grad)
        out = {"student": dmd, "dmd_grad_rms": grad.pow(2).mean().sqrt(), "dmd_norm": norm.mean(),
               "dmd_t": t.float().mean()}
        if gan is not None:
            out.update(student=dmd + self.cfg.gan_weight * gan, g_gan=gan.detach())
        return out

    # --- the memory planner ---------------------------------------------------------------------------------------
    def plan(self, dit: DitShape) -> RecipePlan:
        c = self.cfg
        params, frozen = dit.params, 0
        if c.critic_lora is not None:
            params, frozen = dit.params + dit.lora_per_rank * c.critic_lora.rank, dit.params
        if self.gan:
            params += query_head_params(dit.dim, dit.heads, len(head_blocks(dit.depth, tuple(c.gan_head_fractions))))
        rollout = [PlannedPass("student", 1, grad=False)] if c.backward_simulation and len(self.levels) > 1 else []
        return RecipePlan(
            networks=[PlannedNetwork("critic", params, frozen)],
            phases={
                f"critic phase (x{c.critic_steps}): student samples (no grad), critic forward + backward":
                    [PlannedPass("student", 1, grad=False), PlannedPass("critic", 2 if self.gan else 1)],
                "generator phase: student forward + backward, teacher with CFG and critic (no grad)":
                    rollout + [PlannedPass("student", 1), PlannedPass("teacher", 2, grad=False),
                               PlannedPass("critic", 1, grad=self.gan)]})
