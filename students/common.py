"""What recipes share: re-noising on the flow-matching path, distances, GAN losses, and query heads on a DiT.

Recipes import this module and never each other.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from distill.teachers.registry import family_of_dit
from distill.teachers.schedule import shift_sigmas


# --- the flow-matching path -----------------------------------------------------------------------------------------
def per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """t [B] as a tensor that broadcasts over one sample of `like`, in its dtype."""
    return t.view((-1,) + (1,) * (like.dim() - 1)).to(like)


def renoise(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x_t = (1 − t)·x0 + t·ε (1 − t taken in t's own precision, then cast)."""
    return per_sample(1 - t, x0) * x0 + per_sample(t, x0) * eps


def x0_from_velocity(x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The clean sample a velocity points to: x0 = x_t − t·v."""
    return x_t - per_sample(t, x_t) * v.to(x_t)


def shifted_levels(n: int, shift: float, generator: torch.Generator | None, lo: float = 0.0, hi: float = 1.0
                   ) -> torch.Tensor:
    """n noise levels t = shift(u, s), u ~ U(lo, hi) (float64, on the CPU generator)."""
    u = lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)
    return shift_sigmas(u, shift)


def generated(x: torch.Tensor, given: torch.Tensor | None) -> torch.Tensor:
    """The latent frames of x [B, C, F, H, W] a loss scores: all of them, or those the conditioning does not give
    clean (`given`: bool [F], Handle.image_frames)."""
    return x if given is None else x[:, :, ~given.to(x.device)]


def image_frames(handle, x: torch.Tensor) -> torch.Tensor | None:
    """`handle.image_frames(x)` (students.base.Handle); a plain velocity function conditions on no image."""
    frames = getattr(handle, "image_frames", None)
    return None if frames is None else frames(x)


def keep_image_frames(handle, x: torch.Tensor) -> torch.Tensor:
    """`handle.keep_image_frames(x)`: x with the frames the batch's image gives clean put in (x when none)."""
    keep = getattr(handle, "keep_image_frames", None)
    return x if keep is None else keep(x)


def refuse_image_conditioning(recipe: str, ctx) -> None:
    """The line a recipe that does not (yet) condition on images gives for an image-conditioned run."""
    if ctx.image_conditioned:
        raise ValueError(f"{recipe!r} does not train on image-conditioned examples (an image-to-video teacher, or "
                         f"data with images); use the 'consistency' or 'dmd2' recipe")


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Gaussian noise shaped like x, drawn on the CPU generator (the same numbers on every device)."""
    return torch.randn(x.shape, generator=generator).to(x)


# --- distances -----------------------------------------------------------------------------------------------------
def distance(a: torch.Tensor, b: torch.Tensor, kind: str = "l2", huber_c: float = 0.03) -> torch.Tensor:
    """Per-sample distance: mean squared error ("l2"), or the pseudo-Huber distance sqrt(‖a − b‖² + c²) − c with
    c = huber_c·sqrt(dim), divided by sqrt(dim) (Song & Dhariwal 2023)."""
    sq = (a - b).float().pow(2).flatten(1).sum(1)
    n = a[0].numel()
    if kind == "l2":
        return sq / n
    if kind == "pseudo_huber":
        c = huber_c * n ** 0.5
        return (torch.sqrt(sq + c * c) - c) / n ** 0.5
    raise ValueError(f"distance {kind!r} is not 'l2' or 'pseudo_huber'")


# --- GAN losses (non-saturating, on logits) -------------------------------------------------------------------------
def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return F.softplus(-fake_logits).mean()


# --- query heads on a DiT -------------------------------------------------------------------------------------------
class QueryHead(nn.Module):
    """One learnable query token cross-attending over all visual tokens of a block's output."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)  # a DiT's block outputs are not normalised
        self.query = nn.Parameter(torch.randn(1, 1, dim) * dim ** -0.5)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        kv = self.norm(tokens)
        out, _ = self.attn(self.query.expand(tokens.shape[0], -1, -1).to(kv.dtype), kv, kv, need_weights=False)
        return out[:, 0]


def head_blocks(depth: int, fractions: tuple[float, ...]) -> list[int]:
    """Indices of the blocks whose outputs feed a head: block ⌈f·depth⌉ (1-based) for each fraction f."""
    blocks = sorted({min(depth, max(1, math.ceil(f * depth - 1e-9))) - 1 for f in fractions})
    if len(blocks) != len(fractions):
        raise ValueError(f"head fractions {fractions} fall on the same blocks {blocks} of a {depth}-block backbone")
    return blocks


def query_head_params(dim: int, heads: int, n: int) -> int:
    """Weights of n query heads with their joint norm and output projection (for the memory planner)."""
    with torch.device("meta"):
        head = sum(p.numel() for p in QueryHead(dim, heads).parameters())
    return n * head + 2 * dim * n + (dim * n + 1)


class HeadedDiT(nn.Module):
    """A DiT with cross-attention-only query heads after blocks at `fractions` of its depth, pooled into one logit
    (APT's discriminator; DMD2's critic with its GAN term). The DiT's blocks and output layers are found through
    its family (distill.teachers.registry.family_of_dit).

    `keep_output=False` (a discriminator): blocks past the last head are dropped, the output layer is frozen, and
    forward returns (logits,). `keep_output=True` (a critic that is also a velocity model): forward returns
    (velocity,), or (velocity, logits) with `heads=True`.
    """

    def __init__(self, backbone: nn.Module, fractions: tuple[float, ...] = (0.45, 0.70, 1.0),
                 keep_output: bool = False):
        super().__init__()
        self.backbone = backbone
        self.keep_output = keep_output
        family = family_of_dit(backbone)
        cfg = dict(backbone.config)
        dim, heads = family.width(cfg), family.attention_heads(cfg)
        layers = self._layers()
        self.blocks = head_blocks(len(layers), fractions)
        if not keep_output:
            # Blocks past the last head would be computed for nothing, and the output layer is never read: drop
            # the first and freeze the second (a parameter without a gradient also trips ZeRO's gradient buckets).
            del layers[self.blocks[-1] + 1:]
            for unused in family.dit_output(backbone):
                unused.requires_grad_(False)
        self.heads = nn.ModuleList(QueryHead(dim, heads) for _ in self.blocks)
        self.norm = nn.LayerNorm(dim * len(self.blocks))
        self.out = nn.Linear(dim * len(self.blocks), 1)

    def _layers(self) -> nn.ModuleList:
        return family_of_dit(self.backbone).dit_blocks(self.backbone)

    @property
    def config(self):  # what the teacher's forward and the planner read of a DiT
        return self.backbone.config

    def forward(self, *args, heads: bool | None = None, **kwargs) -> tuple[torch.Tensor, ...]:
        """The backbone's forward (the teacher's call: hidden_states, timestep, encoder_hidden_states, ...)."""
        heads = not self.keep_output if heads is None else heads
        features: dict[int, torch.Tensor] = {}
        layers = self._layers()
        hooks = [layers[i].register_forward_hook(
            lambda module, args, out, i=i: features.__setitem__(i, out)) for i in self.blocks] if heads else []
        try:
            out = self.backbone(*args, **{**kwargs, "return_dict": False})[0]
        finally:
            for h in hooks:
                h.remove()
        if not heads:
            return (out,)
        pooled = torch.cat([head(features[i]) for head, i in zip(self.heads, self.blocks)], dim=-1)
        logits = self.out(self.norm(pooled)).squeeze(-1).float()
        return (out, logits) if self.keep_output else (logits,)
