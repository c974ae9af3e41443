"""Types shared across layers."""

from __future__ import annotations

from typing import Callable

import torch

# A velocity model as samplers and recipes see it: v(x_t, t) with t ∈ [0, 1] per sample (float64 [B]).
VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
