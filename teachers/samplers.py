"""Samplers as pure functions, in the manner of k-diffusion: model, initial noise, schedule in; latents out.

`model(x, t)` returns the (guided) velocity at noise level t ∈ [0, 1], t a float64 tensor of shape [B].
"""

from __future__ import annotations

from typing import Callable, Union

import torch
from tqdm.auto import tqdm

from distill.core.types import VelocityFn
from distill.teachers.schedule import NUM_TRAIN_TIMESTEPS, flow_sigmas, shift_sigmas, unipc_scheduler



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
    """The `steps` noise levels of the "euler" grid: the shifted Euler grid without its final 0, which is exactly
    what diffusers' `FlowMatchEulerDiscreteScheduler(shift=shift)` sets for `steps` steps. Its last level is not a
    real noise level (0.0089 at shift 3 for 4 steps: a near no-op step); students trained before the grid became a
    choice (`grid` absent from their meta) sample on it, and new ones choose another (`student_levels`)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return flow_sigmas(steps, shift)[:-1].to(torch.float64)


# A student's grid: a named rule or explicit levels. Checkpoints and exports without one sample on LEGACY_GRID.
LEGACY_GRID = "euler"
DEFAULT_GRID = "shifted-uniform"
GRIDS = {
    "euler": "diffusers' shifted Euler grid without its final 0 (the last level is near 0: a wasted step)",
    "shifted-uniform": "the shift applied to [1, 1 - 1/n, ..., 1/n] (DMD2's and Self-Forcing's warped grid)",
    "uniform": "[1, 1 - 1/n, ..., 1/n] unshifted (DMD2's [999, 749, 499, 249]/1000 on the flow-matching path)",
}
Grid = Union[str, tuple[float, ...]]


def check_grid(grid, steps: int | None = None) -> Grid:
    """A grid as a config gives it (a rule name, or explicit levels) checked and normalised; ValueError naming what
    is wrong. Explicit levels start at 1 (sampling starts from pure noise), decrease strictly, stay above 0, and
    are `steps` many when `steps` is given."""
    if isinstance(grid, str):
        if grid not in GRIDS:
            raise ValueError(f"unknown grid {grid!r}; a rule ({', '.join(GRIDS)}) or a list of levels")
        return grid
    levels = tuple(float(v) for v in grid)
    if not levels:
        raise ValueError("an explicit grid needs at least one level")
    if levels[0] != 1.0:
        raise ValueError(f"an explicit grid starts at 1.0 (sampling starts from pure noise), got {list(levels)}")
    if any(b >= a for a, b in zip(levels, levels[1:])) or levels[-1] <= 0:
        raise ValueError(f"an explicit grid's levels decrease strictly and stay above 0, got {list(levels)}")
    if steps is not None and len(levels) != steps:
        raise ValueError(f"the explicit grid {list(levels)} has {len(levels)} levels for {steps} steps")
    return levels


def student_levels(steps: int, shift: float, grid: Grid | list | None = None) -> torch.Tensor:
    """The `steps` noise levels (float64, decreasing from 1) a few-step student visits on `grid`; None is the
    legacy rule of checkpoints that predate the choice."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    grid = check_grid(LEGACY_GRID if grid is None else grid, None)
    if isinstance(grid, tuple):
        if len(grid) != steps:
            raise ValueError(f"the explicit grid {list(grid)} has {len(grid)} levels, not {steps}")
        return torch.tensor(grid, dtype=torch.float64)
    if grid == "euler":
        return consistency_timesteps(steps, shift)
    uniform = 1.0 - torch.arange(steps, dtype=torch.float64) / steps
    return uniform if grid == "uniform" else shift_sigmas(uniform, shift)


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
           scheduler_config: dict | None = None, progress: bool = False, noise: NoiseFn | None = None,
           grid: Grid | list | None = None) -> torch.Tensor:
    """`noise` draws the fresh noise of stochastic samplers (per-clip generators keep clips reproducible alone);
    `grid` is the consistency sampler's (`student_levels`; None: the legacy "euler" grid)."""
    if name == "euler":
        return sample_euler(model, x, flow_sigmas(steps, shift), progress)
    if name == "unipc":
        return sample_unipc(model, x, steps, shift, scheduler_config, progress)
    if name == "consistency":
        return sample_consistency(model, x, student_levels(steps, shift, grid), noise, progress)
    raise ValueError(f"unknown sampler {name!r}; one of {list(SAMPLERS)}")
