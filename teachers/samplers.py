"""Samplers as pure functions, in the manner of k-diffusion: model, initial noise, schedule in; latents out.

`model(x, t)` returns the (guided) velocity at noise level t ∈ [0, 1], t a float64 tensor of shape [B].
"""

from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

from teachers.schedule import NUM_TRAIN_TIMESTEPS, flow_sigmas, unipc_scheduler

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _t(value: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=torch.float64, device=x.device).reshape(1).expand(x.shape[0])


@torch.no_grad()
def sample_euler(model: VelocityFn, x: torch.Tensor, sigmas: torch.Tensor, progress: bool = False) -> torch.Tensor:
    """Euler steps of the probability-flow ODE dx/dt = v along `sigmas` (decreasing, ending at 0)."""
    x = x.to(torch.float32)
    for i in tqdm(range(len(sigmas) - 1), disable=not progress, desc="euler", unit="step", leave=False):
        v = model(x, _t(sigmas[i], x)).to(torch.float32)
        x = x + (sigmas[i + 1] - sigmas[i]).to(x) * v
    return x


@torch.no_grad()
def sample_unipc(model: VelocityFn, x: torch.Tensor, steps: int, shift: float, scheduler_config: dict | None = None,
                 progress: bool = False) -> torch.Tensor:
    """UniPC (Zhao et al. 2023) multistep predictor-corrector, by diffusers' scheduler; its history lives only in
    this call."""
    scheduler = unipc_scheduler(shift, scheduler_config)
    scheduler.set_timesteps(steps, device=x.device)
    x = x.to(torch.float32)
    for timestep in tqdm(scheduler.timesteps, disable=not progress, desc="unipc", unit="step", leave=False):
        t = _t(timestep.to(torch.float64) / NUM_TRAIN_TIMESTEPS, x)
        v = model(x, t)
        x = scheduler.step(v, timestep, x, return_dict=False)[0].to(torch.float32)
    return x


SAMPLERS = ("euler", "unipc")


def sample(name: str, model: VelocityFn, x: torch.Tensor, steps: int, shift: float,
           scheduler_config: dict | None = None, progress: bool = False) -> torch.Tensor:
    if name == "euler":
        return sample_euler(model, x, flow_sigmas(steps, shift), progress)
    if name == "unipc":
        return sample_unipc(model, x, steps, shift, scheduler_config, progress)
    raise ValueError(f"unknown sampler {name!r}; one of {list(SAMPLERS)}")
