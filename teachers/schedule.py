"""Flow-matching noise schedules: x_t = (1 - t)·x0 + t·noise, sampled from t = 1 down to 0.

The grids come from diffusers' schedulers, so that a sampler here and a stock `WanPipeline` with the same scheduler
settings visit exactly the same timesteps.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

NUM_TRAIN_TIMESTEPS = 1000  # Wan's DiT embeds t·1000


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """The timestep shift of SD3/Wan: spends more of the steps at high noise for large `shift`."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def euler_scheduler(shift: float) -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift)


def unipc_scheduler(shift: float, config: dict | None = None) -> UniPCMultistepScheduler:
    """UniPC in flow-prediction mode, as Wan ships it; `config` is a checkpoint's scheduler config, if any."""
    base = dict(config or {})
    base.update(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift,
                num_train_timesteps=NUM_TRAIN_TIMESTEPS)
    return UniPCMultistepScheduler.from_config(base)


def flow_sigmas(steps: int, shift: float) -> torch.Tensor:
    """The shifted Euler grid with `steps` steps: `steps + 1` noise levels from 1 down to 0 (float32)."""
    scheduler = euler_scheduler(shift)
    scheduler.set_timesteps(steps)
    return scheduler.sigmas.to(torch.float32)


def few_step_scheduler(levels: torch.Tensor, sigmas_given: bool = False) -> FlowMatchEulerDiscreteScheduler:
    """A `FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)` whose grid for N = len(levels) steps is `levels`
    (to 1e-5), found from its config alone, so that a stock pipeline that calls `set_timesteps(N)` (or, with
    `sigmas_given`, hands it linspace(1, 1/N, N) as LTXPipeline does) samples a student on its own grid.

    In u = 1 − σ the timestep shift M_s(σ) = sσ/(1 + (s−1)σ) is u ↦ u/(s − (s−1)u) and `shift_terminal`'s stretch is
    u ↦ k·u, so the scheduler's N levels are u_i = k·c·i/(s − (s−1)·c·i), i = 0..N−1, with c the step of the u grid
    it is handed: (1 − M_s(1/1000))/(N − 1) from its own linspace, 1/N from LTX's. Then 1/u_i = P/i − Q with
    P = s/(kc), Q = (s−1)/k: a grid is reproducible iff 1/u_i is affine in 1/i (every `student_levels` rule but
    explicit levels of another shape is), and s solves Q/P = c(s)·(s−1)/s; shift_terminal is the last level.
    ValueError when no such scheduler exists."""
    target = torch.as_tensor(levels, dtype=torch.float64)
    n = len(target)
    base = {"num_train_timesteps": NUM_TRAIN_TIMESTEPS, "stochastic_sampling": True}

    def grid_of(scheduler) -> torch.Tensor:
        if sigmas_given:
            scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / n, n), mu=0.0)
        else:
            scheduler.set_timesteps(n)
        return scheduler.sigmas[:-1].to(torch.float64)

    if n == 1:
        candidates = [FlowMatchEulerDiscreteScheduler(shift=1.0, **base)]
    else:
        u = 1.0 - target
        last = float(target[-1])
        if n == 2:
            shifts = [1.0]  # one interval: any shift, then the stretch to the last level
        else:
            i = torch.arange(1, n, dtype=torch.float64)
            inv = 1.0 / u[1:]
            slope = float((inv[-1] - inv[0]) / (1 / i[-1] - 1 / i[0]))  # P
            rho = -float(inv[0] - slope) / slope  # Q/P
            if sigmas_given:  # c = 1/N: rho = (s − 1)/(sN)
                shifts = [1.0 / (1.0 - rho * n)] if abs(1.0 - rho * n) > 1e-12 else []
            else:  # c(s) = 0.999/((0.001·s + 0.999)(N − 1)): 0.001·r·s² + (0.999·r − 1)·s + 1 = 0
                a = 1.0 / NUM_TRAIN_TIMESTEPS
                r = rho * (n - 1) / (1 - a)
                if abs(r) < 1e-15:
                    shifts = [1.0]
                else:
                    qa, qb = a * r, (1 - a) * r - 1.0
                    disc = qb * qb - 4 * qa
                    shifts = sorted(((-qb + sign * math.sqrt(disc)) / (2 * qa) for sign in (1, -1)), key=abs) \
                        if disc >= 0 else []
        candidates = [FlowMatchEulerDiscreteScheduler(shift=float(s), shift_terminal=last, **base)
                      for s in shifts if math.isfinite(s) and s != 0]
    best = None
    for scheduler in candidates:
        got = grid_of(scheduler)
        err = float((got - target).abs().max()) if torch.isfinite(got).all() else math.inf
        if err <= 1e-5:  # float32 arithmetic in the scheduler
            return scheduler
        best = err if best is None else min(best, err)
    raise ValueError(f"no FlowMatchEulerDiscreteScheduler config reproduces the grid {target.tolist()} "
                     f"(closest: {best}); only grids whose 1/(1 − level_i) is affine in 1/i (every named rule) export")
