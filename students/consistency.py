"""Consistency distillation (CD) of a flow-matching teacher into a few-step student.

Song et al. 2023, "Consistency Models", Alg. 2, with the flow-matching parametrisation of the consistency function
and the guided teacher of latent consistency models (Luo et al. 2023):

    f_θ(x_t, t) = x_t − t · v_θ(x_t, t, c)                      (f(x, 0) = x holds by construction)

    given clean latents x0 and text c:
      pick a grid index n; t = σ_n, t′ = σ_{n+k}  on the teacher's shifted 50-step grid (k = `skip`)
      x_t  = (1 − t)·x0 + t·ε                                   ε ~ N(0, I)
      x_t′ = x_t + (t′ − t) · v_teacher(x_t, t, c; w)           one Euler step of the guided teacher ODE
      loss = d( f_θ(x_t, t),  sg f_θ⁻(x_t′, t′) )               θ⁻: EMA of θ, or θ itself (stop-grad)

d is the squared L2 distance or the pseudo-Huber distance sqrt(‖a − b‖² + c²) − c (Song & Dhariwal 2023).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from distill.core.types import VelocityFn

# v(x_t, t, cond) -> velocity; t a float64 tensor [B]. The engine binds networks and conditioning into these.


@dataclass
class ConsistencyDistillation:
    sigmas: torch.Tensor  # the teacher's grid, decreasing from 1 to 0 (teachers.schedule.flow_sigmas(50, shift))
    skip: int = 5  # the teacher's ODE step spans this many grid intervals
    distance: Literal["l2", "pseudo_huber"] = "pseudo_huber"
    huber_c: float = 0.03  # per element; scaled by sqrt(dim) as in Song & Dhariwal 2023

    trains = ("student",)
    reads = ("teacher", "target")

    def __post_init__(self):
        if not 1 <= self.skip < len(self.sigmas) - 1:
            raise ValueError(f"skip={self.skip} must lie in [1, {len(self.sigmas) - 2}] for a grid of "
                             f"{len(self.sigmas) - 1} steps")
        if self.distance not in ("l2", "pseudo_huber"):
            raise ValueError(f"distance {self.distance!r} is not 'l2' or 'pseudo_huber'")

    def phases(self, step: int) -> tuple[str, ...]:
        return ("student",)

    def loss(self, network: str, nets: dict, x0: torch.Tensor, generator=None) -> dict[str, torch.Tensor]:
        """The engine's entry point: `nets` maps names to velocity functions of (x, t)."""
        if network != "student":
            raise ValueError(f"consistency distillation trains 'student', not {network!r}")
        return self(nets["student"], nets["teacher"], nets["target"], x0, generator)

    def _distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        sq = (a - b).float().pow(2).flatten(1).sum(1)
        if self.distance == "l2":
            return sq / a[0].numel()
        c = self.huber_c * a[0].numel() ** 0.5
        return (torch.sqrt(sq + c * c) - c) / a[0].numel() ** 0.5

    def __call__(self, student: VelocityFn, teacher: VelocityFn, target: VelocityFn, x0: torch.Tensor,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        b = x0.shape[0]
        n = torch.randint(0, len(self.sigmas) - 1 - self.skip, (b,), generator=generator, device="cpu")
        t = self.sigmas[n].to(x0.device, torch.float64)
        t_prev = self.sigmas[n + self.skip].to(x0.device, torch.float64)
        eps = torch.randn(x0.shape, generator=generator, device="cpu").to(x0)
        view = (b,) + (1,) * (x0.dim() - 1)
        x_t = (1 - t).view(view).to(x0) * x0 + t.view(view).to(x0) * eps
        with torch.no_grad():
            x_prev = x_t + (t_prev - t).view(view).to(x0) * teacher(x_t, t).to(x0)
            target_x0 = x_prev - t_prev.view(view).to(x0) * target(x_prev, t_prev).to(x0)
        pred_x0 = x_t - t.view(view).to(x0) * student(x_t, t).to(x0)
        per_sample = self._distance(pred_x0, target_x0)
        return {"student": per_sample.mean(), "t": t.float().mean()}
