"""Checks on clips as every metric receives them: uint8 tensors [B, T, H, W, 3]."""

from __future__ import annotations

import torch


def check_videos(videos: torch.Tensor, min_frames: int = 1, what: str = "this metric") -> None:
    if not isinstance(videos, torch.Tensor) or videos.dtype != torch.uint8:
        raise TypeError(f"videos must be a uint8 torch tensor [B, T, H, W, 3], got "
                        f"{type(videos).__name__} of dtype {getattr(videos, 'dtype', None)}")
    if videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"videos must have shape [B, T, H, W, 3], got {tuple(videos.shape)}")
    if videos.shape[1] < min_frames:
        raise ValueError(f"{what} needs at least {min_frames} frames per clip, got T={videos.shape[1]}")
