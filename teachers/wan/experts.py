"""Wan 2.2 A14B's two experts as one velocity network: `transformer` for the high-noise steps, `transformer_2` for the
low-noise ones, switching at `boundary_ratio`.

The switch is the stock `WanPipeline`'s, compared the way it compares: a sample goes to the high-noise expert when
its (float32) timestep t·1000 is at least `boundary_ratio`·1000. A teacher, a student copied from it and that
student's export therefore switch at the same step.

Under data or sequence parallelism every rank runs both experts in every forward, on a one-sample slice when none of
its samples falls on an expert's side, and adds that output times zero: ZeRO-3 gathers every expert's weights on
every rank in the same order, and every trainable weight gets a gradient (zero where unused) on every rank, so
DeepSpeed's gradient reduction sees the same weights everywhere.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

NUM_TRAIN_TIMESTEPS = 1000


# Per-sample keyword inputs a split batch must split alike (the image tokens a CLIP-reading expert attends to).
PER_SAMPLE_KWARGS = ("encoder_hidden_states_image",)


def _rows(kwargs: dict, take: torch.Tensor) -> dict:
    return {k: v[take] if k in PER_SAMPLE_KWARGS and v is not None else v for k, v in kwargs.items()}


class WanExperts(nn.Module):
    def __init__(self, high: nn.Module, low: nn.Module, boundary_ratio: float):
        super().__init__()
        if not 0.0 < boundary_ratio < 1.0:
            raise ValueError(f"boundary_ratio {boundary_ratio!r} is outside (0, 1)")
        self.experts = nn.ModuleList([high, low])
        self.boundary_ratio = float(boundary_ratio)

    @property
    def config(self):  # what the teacher's forward and the planner read of a DiT: both experts share a shape
        return self.experts[0].config

    @property
    def dtype(self) -> torch.dtype:
        return self.experts[0].dtype

    def is_high(self, timestep: torch.Tensor) -> torch.Tensor:
        """[B] bool: which samples the high-noise expert takes (timestep [B], or [B, tokens] for per-token
        timesteps, whose largest entry is the sample's noise level)."""
        t = timestep if timestep.ndim == 1 else timestep.flatten(1).amax(1)
        return t >= self.boundary_ratio * NUM_TRAIN_TIMESTEPS

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                return_dict: bool = False, **kwargs) -> tuple[torch.Tensor]:
        high = self.is_high(timestep)
        collective = dist.is_initialized() and dist.get_world_size() > 1
        if not collective and (bool(high.all()) or not bool(high.any())):
            expert = self.experts[0 if bool(high.all()) else 1]
            return expert(hidden_states=hidden_states, timestep=timestep,
                          encoder_hidden_states=encoder_hidden_states, return_dict=False, **kwargs)
        result = None
        for mask, expert in ((high, self.experts[0]), (~high, self.experts[1])):
            idx = mask.nonzero().squeeze(1)
            if len(idx) == 0 and not collective:
                continue
            take = idx if len(idx) else torch.zeros(1, dtype=torch.long, device=hidden_states.device)
            out = expert(hidden_states=hidden_states[take], timestep=timestep[take],
                         encoder_hidden_states=encoder_hidden_states[take], return_dict=False,
                         **_rows(kwargs, take))[0]
            if result is None:
                result = out.new_zeros((hidden_states.shape[0], *out.shape[1:]))
            result = result.index_copy(0, idx, out) if len(idx) else result + 0.0 * out.sum()
        return (result,)
