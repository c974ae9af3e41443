"""Seed diversity: how different the clips of one prompt are across seeds, as mean pairwise feature distance.

Few-step students tend to collapse towards one clip per prompt; comparing this number with the teacher's on the
same prompts and seeds shows how much of the teacher's variety a student kept. Features come from any video
detector (see eval/fvd.py), so the value is only comparable under one detector.
"""

from __future__ import annotations

from typing import Sequence

import torch


def _as_features(features, what: str) -> torch.Tensor:
    feats = torch.as_tensor(features).detach().to(torch.float64)
    if feats.ndim != 2:
        raise ValueError(f"{what}: expected features [S, D] (seeds × feature dims), got shape {tuple(feats.shape)}")
    if feats.shape[0] < 2:
        raise ValueError(f"{what}: diversity needs at least 2 seeds, got S={feats.shape[0]}")
    if not torch.isfinite(feats).all():
        raise ValueError(f"{what}: features contain NaN or infinite values")
    return feats


def pairwise_diversity(features) -> float:
    """Mean L2 distance over all unordered pairs of the S seed clips of one prompt, features [S, D]. 0 when all
    clips have identical features; grows with their spread."""
    return float(torch.pdist(_as_features(features, "pairwise_diversity")).mean())


def diversity(features_by_prompt: Sequence) -> torch.Tensor:
    """`pairwise_diversity` of each prompt's [S, D] features: float64 [P], one value per prompt (the unit for
    bootstrap intervals and for paired comparison with the teacher)."""
    if len(features_by_prompt) == 0:
        raise ValueError("diversity: no prompts given")
    values = [pairwise_diversity(_as_features(f, f"prompt {i}")) for i, f in enumerate(features_by_prompt)]
    return torch.tensor(values, dtype=torch.float64)
