"""Few-step samplers for distilled students, as pure functions (model, initial noise, timesteps in; latents out).

`model(x, t)` returns the student's velocity at noise level t ∈ [0, 1] (a float64 tensor [B]); the student's
clean-clip estimate is x0 = x − t·v (the consistency function of a flow-matching model).
"""

from __future__ import annotations

from typing import Callable

import torch

from teachers.schedule import shift_sigmas

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def consistency_timesteps(steps: int, shift: float = 1.0) -> torch.Tensor:
    """`steps` noise levels for a multistep consistency sampler: 1 then evenly spaced below it, shifted."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return shift_sigmas(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)[:-1], shift)


@torch.no_grad()
def sample_consistency(model: VelocityFn, x: torch.Tensor, timesteps: torch.Tensor,
                       noise: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Multistep consistency sampling (Song et al. 2023, Alg. 1): jump to x0 = x − t·v, re-noise to the next
    level with fresh noise, repeat; return the last x0. This is what diffusers'
    `FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)` computes per step, so an exported student samples
    the same way in a stock `WanPipeline` (given the same noise)."""
    noise = noise or (lambda like: torch.randn_like(like))
    x = x.to(torch.float32)
    ts = [float(t) for t in timesteps]
    for i, t in enumerate(ts):
        tt = torch.full((x.shape[0],), t, dtype=torch.float64, device=x.device)
        x0 = x - t * model(x, tt).to(torch.float32)
        if i + 1 == len(ts):
            return x0
        t_next = ts[i + 1]
        x = (1.0 - t_next) * x0 + t_next * noise(x0)
    return x
