"""Consistency distillation (CD) of a flow-matching teacher into a few-step student.

Song et al. 2023, "Consistency Models", Alg. 2, with the flow-matching parametrisation of the consistency function
and the guided teacher of latent consistency models (Luo et al. 2023):

    f_θ(x_t, t) = x_t − t · v_θ(x_t, t, c)                      (f(x, 0) = x holds by construction)

    given clean latents x0 and text c:
      pick a grid index n; t = σ_n, t′ = σ_{n+k}  on the teacher's shifted 50-step grid (k = `skip`)
      x_t  = (1 − t)·x0 + t·ε                                   ε ~ N(0, I)
      x_t′ = x_t + (t′ − t) · v_teacher(x_t, t, c; w)           one Euler step of the guided teacher ODE
      loss = d( f_θ(x_t, t),  sg f_θ⁻(x_t′, t′) )               θ⁻: EMA of θ, or θ itself (stop-grad)

With an image-conditioned teacher every network reads the batch's image (the handles carry it); latent frames the
image gives clean (a text-and-image teacher's first frame, kept at noise level 0) are left out of d.

d is the squared L2 distance or the pseudo-Huber distance sqrt(‖a − b‖² + c²) − c (Song & Dhariwal 2023).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from distill.core.types import VelocityFn
from distill.students.base import (Context, DitShape, Nets, PlannedPass, RecipeBase, RecipeConfig, RecipePlan,
                                   StudentSampler)
from distill.students.common import distance, generated, image_frames, per_sample, renoise
from distill.students.registry import register
from distill.teachers.schedule import flow_sigmas


class ConsistencyConfig(RecipeConfig):
    """Consistency distillation; see docs/recipes/consistency.md."""

    name: Literal["consistency"]
    skip: int = Field(5, ge=1)  # grid intervals per teacher ODE step on the 50-step grid
    grid_steps: int = Field(50, ge=2)
    distance: Literal["l2", "pseudo_huber"] = "pseudo_huber"
    huber_c: float = Field(0.03, gt=0)
    guidance: float | None = Field(None, ge=0)  # teacher CFG in the ODE step; None: the teacher's own
    target: Literal["ema", "online"] = "ema"  # the target network: the student's EMA, or its stop-grad
    sampler: StudentSampler = StudentSampler()


@register
class ConsistencyDistillation(RecipeBase):
    name = "consistency"
    Config = ConsistencyConfig

    def __init__(self, cfg: ConsistencyConfig, ctx: Context):
        super().__init__(cfg, ctx)
        self.sigmas = flow_sigmas(cfg.grid_steps, ctx.teacher_shift)  # decreasing from 1 to 0
        if not 1 <= cfg.skip < len(self.sigmas) - 1:
            raise ValueError(f"recipe.skip={cfg.skip} must lie in [1, {len(self.sigmas) - 2}] for a grid of "
                             f"{len(self.sigmas) - 1} steps (recipe.grid_steps)")
        self.guidance = cfg.guidance if cfg.guidance is not None else ctx.teacher_guidance
        self.reads = ("teacher", "ema") if cfg.target == "ema" else ("teacher",)

    @classmethod
    def check_run(cls, run_cfg) -> None:
        if run_cfg.recipe.target == "ema" and run_cfg.student.ema_decay is None:
            raise ValueError("recipe.target is 'ema' but student.ema_decay is null (no EMA is kept)")

    def loss(self, phase: str, nets: Nets, x0: torch.Tensor, generator=None) -> dict[str, torch.Tensor]:
        if phase != "student":
            raise ValueError(f"consistency distillation trains 'student', not {phase!r}")
        teacher = nets["teacher"]
        target = nets["ema"] if self.cfg.target == "ema" else nets["student"]
        student = nets["student"]
        return self(student, lambda x, t: teacher(x, t, self.guidance), target, x0, generator,
                    image_frames(student, x0))

    def __call__(self, student: VelocityFn, teacher: VelocityFn, target: VelocityFn, x0: torch.Tensor,
                 generator: torch.Generator | None = None, given: torch.Tensor | None = None
                 ) -> dict[str, torch.Tensor]:
        """The algorithm box above, with the networks as velocity functions of (x, t); `given`: the latent frames
        the conditioning gives clean (bool [F]), which d does not score."""
        b, skip = x0.shape[0], self.cfg.skip
        n = torch.randint(0, len(self.sigmas) - 1 - skip, (b,), generator=generator, device="cpu")
        t = self.sigmas[n].to(x0.device, torch.float64)
        t_prev = self.sigmas[n + skip].to(x0.device, torch.float64)
        eps = torch.randn(x0.shape, generator=generator, device="cpu").to(x0)
        x_t = renoise(x0, t, eps)
        with torch.no_grad():
            x_prev = x_t + per_sample(t_prev - t, x0) * teacher(x_t, t).to(x0)
            target_x0 = x_prev - per_sample(t_prev, x0) * target(x_prev, t_prev).to(x0)
        pred_x0 = x_t - per_sample(t, x0) * student(x_t, t).to(x0)
        per = distance(generated(pred_x0, given), generated(target_x0, given), self.cfg.distance, self.cfg.huber_c)
        return {"student": per.mean(), "t": t.float().mean()}

    def plan(self, dit: DitShape) -> RecipePlan:
        return RecipePlan(networks=[], phases={
            "teacher forward with CFG (no grad)": [PlannedPass("teacher", 2, grad=False)],
            "EMA target forward (no grad, fp32)": [PlannedPass("ema" if self.cfg.target == "ema" else "student", 1,
                                                               grad=False)],
            "student forward + backward": [PlannedPass("student", 1, grad=True)]})
