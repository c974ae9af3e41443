"""Decoder distillation: a small causal video decoder trained to reproduce the teacher VAE's decode.

After few-step distillation the DiT is no longer the cost of a clip; the VAE's decode is. This recipe trains no
student DiT (`trains_student = False`): it trains a fresh `teachers.decoders.VideoDecoder`, sized from the latent's
channels and the family's VideoFactors, on the latents the run's data gives (real clips through the teacher's VAE,
or the teacher's own samples: `data.latents`), in the manner of the tiny decoders shipped beside fast video models
(TAEHV, LightX2V's lightweight VAEs):

    given clean latents x0 (normalised, as the DiT sees them)
      z      = x0 + σ·ε                      ε ~ N(0, I), σ = `latent_noise` (0: the data's latents as they are);
                                             a little noise stands in for the imperfect latents students produce
      target = VAE_decode(z) ∈ [-1, 1]       the teacher's own decode (uint8, as `Teacher.decode` gives it)
      pred   = D_θ(z)                        the decoder, unclamped
      loss   = |pred − target|₁  (or ²)  +  λ · d_feat(pred, target)

d_feat is an LPIPS-style distance (per-layer unit-normalised channel features, squared difference, spatial mean,
summed over layers) over the features of a FROZEN, SEEDED, RANDOMLY INITIALISED 2-D conv net applied frame by frame
(`RandomFeatures`). No pretrained perceptual network (VGG/AlexNet for LPIPS) can be had offline here, and the
project's domain video net lives in eval/, which a recipe may not import; random conv features are a known stand-in
that weights edges and textures at several scales beyond what a pixel loss does. It is named as such everywhere.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from distill.students.base import (FRESH, Context, DitShape, Nets, NetworkSpec, PlannedNetwork, PlannedPass,
                                   RecipeBase, RecipeConfig, RecipePlan)
from distill.students.registry import register
from distill.teachers.decoders import VideoDecoder


class DecoderConfig(RecipeConfig):
    """Decoder distillation; see docs/recipes/decoder.md."""

    name: Literal["decoder"]
    width: int = Field(64, ge=1)  # channels at latent resolution (each ×2 upsampling stage halves them)
    depth: int = Field(2, ge=0)  # causal residual blocks at latent resolution
    min_width: int = Field(16, ge=1)  # the fewest channels an upsampling stage keeps
    pixel: Literal["l1", "l2"] = "l1"
    feature_weight: float = Field(0.25, ge=0)  # λ of the random-conv feature distance (0: pixel loss only)
    feature_width: int = Field(32, ge=1)  # channels of the random feature net's first layer (×2 per layer)
    latent_noise: float = Field(0.0, ge=0)  # σ of the Gaussian noise added to the training latents


def to_signed(video: torch.Tensor) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] to float [B, 3, T, H, W] in [-1, 1] (the inverse of VideoDecoder.to_uint8)."""
    return video.permute(0, 4, 1, 2, 3).float() / 127.5 - 1


class RandomFeatures(nn.Module):
    """A frozen 3-layer conv net with seeded random (Kaiming) weights, frame by frame, for an LPIPS-style distance.
    It is not a perceptual network trained on images: see the module docstring."""

    def __init__(self, width: int = 32, layers: int = 3, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        convs, cin = [], 3
        for i in range(layers):
            conv = nn.Conv2d(cin, width << i, 3, stride=2 if i else 1, padding=1)
            nn.init.kaiming_normal_(conv.weight, generator=gen)
            nn.init.zeros_(conv.bias)
            convs.append(conv)
            cin = width << i
        self.convs = nn.ModuleList(convs)
        self.requires_grad_(False)

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-clip distance [B] between videos [B, 3, T, H, W]."""
        bsz = a.shape[0]
        x = torch.cat([a, b]).transpose(1, 2).flatten(0, 1)  # both videos' frames as one batch of images
        total = x.new_zeros(bsz)
        for conv in self.convs:
            x = F.relu(conv(x))
            unit = x / (x.pow(2).sum(1, keepdim=True) + 1e-10).sqrt()  # LPIPS: unit length along channels
            fa, fb = unit.chunk(2)
            per_frame = (fa - fb).pow(2).sum(1).mean((1, 2))  # [B·T]
            total = total + per_frame.view(bsz, -1).mean(1)
        return total


@register
class DecoderDistillation(RecipeBase):
    name = "decoder"
    Config = DecoderConfig
    reads = ("vae",)
    trains_student = False

    def __init__(self, cfg: DecoderConfig, ctx: Context):
        super().__init__(cfg, ctx)
        if ctx.latent_channels is None or ctx.factors is None:
            raise ValueError("recipe 'decoder' sizes its network from the teacher's latent channels and video factors, "
                             "and was not given them (distill.recipes.recipe_context)")
        self.features = RandomFeatures(cfg.feature_width) if cfg.feature_weight > 0 else None

    def make_decoder(self) -> VideoDecoder:
        c, f = self.cfg, self.ctx.factors
        return VideoDecoder(latent_channels=self.ctx.latent_channels, temporal=f.temporal, spatial=f.spatial,
                            width=c.width, depth=c.depth, min_width=c.min_width)

    def networks(self) -> list[NetworkSpec]:
        return [NetworkSpec("decoder", init=FRESH, make=lambda _: self.make_decoder(), partitioned=False)]

    def phases(self, step: int) -> tuple[str, ...]:
        return ("decoder",)

    def loss(self, phase: str, nets: Nets, x0: torch.Tensor, generator=None) -> dict[str, torch.Tensor]:
        if phase != "decoder":
            raise ValueError(f"decoder distillation trains 'decoder', not {phase!r}")
        z = x0
        if self.cfg.latent_noise > 0:
            z = x0 + self.cfg.latent_noise * torch.randn(x0.shape, generator=generator).to(x0)
        target = to_signed(nets["vae"](z)).to(x0.device)
        return self(nets["decoder"](z), target)

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The losses of decoded video `pred` against the teacher's decode `target` (both [B, 3, T, H, W])."""
        if pred.shape != target.shape:
            raise ValueError(f"decoder output {tuple(pred.shape)} and the teacher's decode {tuple(target.shape)} "
                             f"differ in shape")
        pred, target = pred.float(), target.float()  # the loss in fp32 whatever the decoder's compute dtype
        diff = pred - target
        pixel = diff.abs().mean() if self.cfg.pixel == "l1" else diff.pow(2).mean()
        out = {"pixel": pixel}
        total = pixel
        if self.features is not None:
            self.features.to(pred.device)
            feature = self.features.distance(pred, target).mean()
            total = total + self.cfg.feature_weight * feature
            out["feature"] = feature
        with torch.no_grad():  # what the clip costs in quality, as the bench reports it
            mse = (pred.detach().clamp(-1, 1) - target).pow(2).mean()
            out["psnr"] = 10 * torch.log10(4 / mse.clamp_min(1e-12))  # peak-to-peak 2 in [-1, 1]
        out["decoder"] = total
        return out

    def validation_clips(self, nets: Nets, x0: torch.Tensor) -> torch.Tensor:
        """The teacher's decode and the decoder's, side by side (left: VAE, right: decoder)."""
        ours = VideoDecoder.to_uint8(nets["decoder"](x0))
        return torch.cat([nets["vae"](x0), ours], dim=3)

    def plan(self, dit: DitShape) -> RecipePlan:
        params = sum(p.numel() for p in self.make_decoder().parameters())
        return RecipePlan(networks=[PlannedNetwork("decoder", params)], phases={
            "decoder forward + backward (the teacher's VAE decode, no grad)": [PlannedPass("decoder", 1, grad=True)]})
