"""Image-to-video metrics: does a clip start from the image it was given, and does its subject hold?

- `first_frame_psnr`: the conditioning image against frame 0 of the decoded clip, PSNR in dB on the uint8 scale.
  Higher is closer. Pixel-exact: it reads a shift of the subject, a colour cast or a blur.
- `first_frame_feature_distance`: 1 - cos(f(image), f(frame 0)) with an image feature network f (the suite's CLIP
  image tower). Lower is closer. It reads what the subject IS (shape, colour, identity), and forgives what PSNR
  punishes hardest and matters least: a decoder's fine texture, a sub-pixel shift.
- `subject_consistency`: VBench's subject-consistency rule (vbench/subject_consistency.py) with f in place of
  VBench's DINO ViT-B/16: per clip, the mean over frames t >= 1 of (max(0, cos(f_t, f_{t-1})) + max(0, cos(f_t,
  f_0))) / 2. Higher holds better. A subject that changes identity mid-clip loses the first-frame term for the rest
  of the clip; a slow drift loses it gradually while the previous-frame term stays high.

Inputs are uint8 clips [B, T, H, W, 3] and, for the first-frame metrics, uint8 images [B, H, W, 3] at the clips'
size (one per clip: a prompt's image repeated for each of its seeds). `features` maps uint8 images [N, H, W, 3] to
L2-normalised embeddings [N, D] (`ClipBackend.image_features`). Each returns float64 [B]. The eval reaches them
through its metric registry (eval/metrics.py), which names each score after the network that produced it.
"""

from __future__ import annotations

from typing import Callable

import torch
from distill.core.video import check_videos

ImageFeatures = Callable[[torch.Tensor], torch.Tensor]  # uint8 [N, H, W, 3] -> L2-normalised [N, D]

# An exact copy has MSE 0 and an infinite PSNR, which no mean or interval survives; it reads as this ceiling instead
# (an MSE of 6.5e-6 grey levels squared, far below the 1/12 of uint8 rounding noise at ~59 dB: no decoded clip
# reaches it).
PSNR_CEILING_DB = 100.0


def check_first_images(videos: torch.Tensor, images: torch.Tensor) -> None:
    """One uint8 image per clip, at the clips' height and width."""
    check_videos(videos, what="first-frame fidelity")
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise TypeError(f"first images must be a uint8 torch tensor [B, H, W, 3], got {type(images).__name__} of "
                        f"dtype {getattr(images, 'dtype', None)}")
    b, _, h, w, _ = videos.shape
    if tuple(images.shape) != (b, h, w, 3):
        raise ValueError(f"first images must be one per clip at the clips' size, [B, H, W, 3] = {[b, h, w, 3]}; "
                         f"got {list(images.shape)}")


def first_frame_psnr(videos: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """10 log10(255^2 / MSE) per clip, MSE over every pixel and channel of frame 0 against the image (uint8
    scale); `PSNR_CEILING_DB` for an exact copy."""
    check_first_images(videos, images)
    diff = videos[:, 0].double() - images.double()
    mse = diff.pow(2).flatten(1).mean(dim=1)
    psnr = 10.0 * torch.log10(255.0**2 / mse.clamp(min=255.0**2 / 10 ** (PSNR_CEILING_DB / 10)))
    return psnr.cpu()


def first_frame_feature_distance(videos: torch.Tensor, images: torch.Tensor,
                                 features: ImageFeatures) -> torch.Tensor:
    """1 - cos(f(image), f(frame 0)) per clip, in [0, 2]; 0 when the network sees no difference."""
    check_first_images(videos, images)
    a, b = features(images), features(videos[:, 0].contiguous())
    return (1.0 - (a * b).sum(dim=-1)).double().cpu()


def subject_consistency(videos: torch.Tensor, features: ImageFeatures) -> torch.Tensor:
    """VBench's subject consistency with the network `features` (see the module docstring), per clip, in [0, 1];
    1 for a clip whose every frame embeds alike. Every frame is read, as VBench does."""
    check_videos(videos, min_frames=2, what="subject consistency")
    scores = []
    for clip in videos:  # one clip at a time: an 81-frame clip at 480x832 is already 100 MB of pixels
        f = features(clip)  # [T, D], L2-normalised
        to_previous = (f[1:] * f[:-1]).sum(dim=-1).clamp(min=0.0)
        to_first = (f[1:] * f[:1]).sum(dim=-1).clamp(min=0.0)
        scores.append(((to_previous + to_first) / 2).mean())
    return torch.stack(scores).double().cpu()
