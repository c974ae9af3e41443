"""Adversarial post-training (APT) of a one-step generator against real video.

Lin et al. 2025, "Diffusion Adversarial Post-Training for One-Step Video Generation", as an algorithm box:

    generator     G(z, c) = z − v_θ(z, t=1, c)                   one step from pure noise (θ from a CD student)
    discriminator D(x_t, t, c): the teacher's DiT as backbone (trained in full), cross-attention-only heads after
                  blocks at ~45%, 70%, 100% of its depth (one learnable query over all visual tokens each);
                  head outputs concatenated, normalised, projected to one logit

    per step, with real latents x and text c:
      D phase:  x̂ = sg G(z, c);  t ~ shift(U(0, 1), s) per sample;  x_t = (1 − t)x + tε,  x̂_t = (1 − t)x̂ + tε′
                L_D = softplus(−D(x_t)) + softplus(D(x̂_t)) + λ‖D(x_t) − D(x_t + σn)‖²     (approximated R1)
      G phase:  x̂ = G(z, c);  x̂_t as above;  L_G = softplus(−D(x̂_t))                   (non-saturating)

The approximated R1 replaces ∇ₓD with a finite difference, so no double backward is needed (gradient checkpointing
and ZeRO-sharded training do not support one). D and G alternate; the engine freezes the network a phase does not
train, so G's phase backpropagates through D without touching D's gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.types import VelocityFn
from distill.teachers.schedule import shift_sigmas

LogitFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --- the discriminator ----------------------------------------------------------------------------------------------
class QueryHead(nn.Module):
    """One learnable query token cross-attending over all visual tokens of a block's output."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)  # block outputs are not normalised in Wan
        self.query = nn.Parameter(torch.randn(1, 1, dim) * dim ** -0.5)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        kv = self.norm(tokens)
        out, _ = self.attn(self.query.expand(tokens.shape[0], -1, -1).to(kv.dtype), kv, kv, need_weights=False)
        return out[:, 0]


def head_blocks(depth: int, fractions: tuple[float, ...]) -> list[int]:
    """Indices of the blocks whose outputs feed a head: block ⌈f·depth⌉ (1-based) for each fraction f."""
    import math

    blocks = sorted({min(depth, max(1, math.ceil(f * depth - 1e-9))) - 1 for f in fractions})
    if len(blocks) != len(fractions):
        raise ValueError(f"head fractions {fractions} fall on the same blocks {blocks} of a {depth}-block backbone")
    return blocks


class Discriminator(nn.Module):
    """A Wan DiT backbone (the teacher's weights, trained in full) with cross-attention-only heads."""

    def __init__(self, backbone: nn.Module, fractions: tuple[float, ...] = (0.45, 0.70, 1.0)):
        super().__init__()
        self.backbone = backbone
        cfg = backbone.config
        dim = cfg.num_attention_heads * cfg.attention_head_dim
        self.blocks = head_blocks(len(backbone.blocks), fractions)
        # Blocks past the last head would be computed for nothing, and the output layer is never read: drop the
        # first and freeze the second (a parameter without a gradient also trips ZeRO's gradient buckets).
        backbone.blocks = backbone.blocks[:self.blocks[-1] + 1]
        for unused in (backbone.proj_out, backbone.norm_out):
            unused.requires_grad_(False)
        backbone.scale_shift_table.requires_grad_(False)
        self.heads = nn.ModuleList(QueryHead(dim, cfg.num_attention_heads) for _ in self.blocks)
        self.norm = nn.LayerNorm(dim * len(self.blocks))
        self.out = nn.Linear(dim * len(self.blocks), 1)

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                return_dict: bool = False) -> tuple[torch.Tensor]:
        features: dict[int, torch.Tensor] = {}
        hooks = [self.backbone.blocks[i].register_forward_hook(
            lambda module, args, out, i=i: features.__setitem__(i, out)) for i in self.blocks]
        try:
            self.backbone(hidden_states=hidden_states, timestep=timestep,
                          encoder_hidden_states=encoder_hidden_states, return_dict=False)
        finally:
            for h in hooks:
                h.remove()
        pooled = torch.cat([head(features[i]) for head, i in zip(self.heads, self.blocks)], dim=-1)
        return (self.out(self.norm(pooled)).squeeze(-1).float(),)


# --- the recipe ------------------------------------------------------------------------------------------------------
@dataclass
class AdversarialPostTraining:
    shift: float = 12.0  # D's noise levels t ~ shift(U(0, 1), s); the paper's value for video
    r1_weight: float = 100.0  # λ
    r1_sigma: float = 0.1  # σ of the perturbation in the approximated R1
    d_steps: int = 1  # D updates per G update

    trains = ("discriminator", "student")
    reads = ()

    def phases(self, step: int) -> tuple[str, ...]:
        return ("discriminator",) * self.d_steps + ("student",)

    @staticmethod
    def generate(student: VelocityFn, z: torch.Tensor) -> torch.Tensor:
        """One step from pure noise: x0 = z − v(z, t = 1)."""
        t = torch.ones(z.shape[0], dtype=torch.float64, device=z.device)
        return z - student(z, t).to(z.dtype)

    def _renoise(self, x: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor]:
        u = torch.rand(x.shape[0], generator=generator, dtype=torch.float64)
        t = shift_sigmas(u, self.shift).to(x.device)
        eps = torch.randn(x.shape, generator=generator).to(x)
        view = (-1,) + (1,) * (x.dim() - 1)
        return (1 - t).view(view).to(x) * x + t.view(view).to(x) * eps, t

    def loss(self, network: str, nets: dict, x_real: torch.Tensor, generator=None) -> dict[str, torch.Tensor]:
        student, disc = nets["student"], nets["discriminator"]
        z = torch.randn(x_real.shape, generator=generator).to(x_real)
        if network == "discriminator":
            with torch.no_grad():
                fake = self.generate(student, z)
            u = torch.rand(x_real.shape[0], generator=generator, dtype=torch.float64)
            t = shift_sigmas(u, self.shift).to(x_real.device)  # the same t for a sample's real and fake
            view = (-1,) + (1,) * (x_real.dim() - 1)
            tt = t.view(view).to(x_real)
            real_t = (1 - tt) * x_real + tt * torch.randn(x_real.shape, generator=generator).to(x_real)
            fake_t = (1 - tt) * fake + tt * torch.randn(x_real.shape, generator=generator).to(x_real)
            perturbed = real_t + self.r1_sigma * torch.randn(x_real.shape, generator=generator).to(x_real)
            logits = disc(torch.cat([real_t, fake_t, perturbed]), torch.cat([t, t, t]))  # one batched forward
            d_real, d_fake, d_perturbed = logits.chunk(3)
            gan = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
            r1 = (d_real - d_perturbed).pow(2).mean()
            return {"discriminator": gan + self.r1_weight * r1, "d_gan": gan.detach(), "r1": r1.detach(),
                    "d_real": d_real.detach().mean(), "d_fake": d_fake.detach().mean()}
        if network == "student":
            fake = self.generate(student, z)
            fake_t, t = self._renoise(fake, generator)
            g = F.softplus(-disc(fake_t, t)).mean()
            return {"student": g, "g_gan": g.detach()}
        raise ValueError(f"APT trains 'discriminator' and 'student', not {network!r}")
