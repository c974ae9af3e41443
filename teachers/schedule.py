"""Flow-matching noise schedules: x_t = (1 - t)·x0 + t·noise, sampled from t = 1 down to 0.

The grids come from diffusers' schedulers, so that a sampler here and a stock `WanPipeline` with the same scheduler
settings visit exactly the same timesteps.
"""

from __future__ import annotations

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
