"""Samplers as pure functions, in the manner of k-diffusion: model, initial noise, schedule in; latents out.

`model(x, t)` returns the (guided) velocity at noise level t ∈ [0, 1], t a float64 tensor of shape [B].
"""

from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

from distill.core.types import VelocityFn
from distill.teachers.schedule import NUM_TRAIN_TIMESTEPS, flow_sigmas, unipc_scheduler



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


NoiseFn = Callable[[torch.Tensor], torch.Tensor]


def consistency_timesteps(steps: int, shift: float = 1.0) -> torch.Tensor:
    """The `steps` noise levels a multistep consistency sampler visits: the shifted Euler grid without its final 0,
    which is exactly what diffusers' `FlowMatchEulerDiscreteScheduler(shift=shift)` sets for `steps` steps, so an
    exported student samples the same way in a stock `WanPipeline`."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return flow_sigmas(steps, shift)[:-1].to(torch.float64)


@torch.no_grad()
def sample_consistency(model: VelocityFn, x: torch.Tensor, timesteps: torch.Tensor, noise: NoiseFn | None = None,
                       progress: bool = False) -> torch.Tensor:
    """Multistep consistency sampling (Song et al. 2023, Alg. 1): jump to x0 = x − t·v, re-noise to the next level
    with fresh noise, repeat; return the last x0. Per step this is what diffusers'
    `FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)` computes, given the same noise."""
    noise = noise or (lambda like: torch.randn_like(like))
    x = x.to(torch.float32)
    ts = [float(t) for t in timesteps]
    for i in tqdm(range(len(ts)), disable=not progress, desc="consistency", unit="step", leave=False):
        x0 = x - ts[i] * model(x, _t(ts[i], x)).to(torch.float32)
        if i + 1 == len(ts):
            return x0
        x = (1.0 - ts[i + 1]) * x0 + ts[i + 1] * noise(x0)
    return x


SAMPLERS = ("euler", "unipc", "consistency")


def sample(name: str, model: VelocityFn, x: torch.Tensor, steps: int, shift: float,
           scheduler_config: dict | None = None, progress: bool = False, noise: NoiseFn | None = None) -> torch.Tensor:
    """`noise` draws the fresh noise of stochastic samplers (per-clip generators keep clips reproducible alone)."""
    if name == "euler":
        return sample_euler(model, x, flow_sigmas(steps, shift), progress)
    if name == "unipc":
        return sample_unipc(model, x, steps, shift, scheduler_config, progress)
    if name == "consistency":
        return sample_consistency(model, x, consistency_timesteps(steps, shift), noise, progress)
    raise ValueError(f"unknown sampler {name!r}; one of {list(SAMPLERS)}")
