"""What recipes share: re-noising on the flow-matching path, distances, GAN losses, and query heads on a DiT.

Recipes import this module and never each other.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

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
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)  # block outputs are not normalised in Wan
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
    """A Wan DiT with cross-attention-only query heads after blocks at `fractions` of its depth, pooled into one
    logit (APT's discriminator; DMD2's critic with its GAN term).

    `keep_output=False` (a discriminator): blocks past the last head are dropped, the output layer is frozen, and
    forward returns (logits,). `keep_output=True` (a critic that is also a velocity model): forward returns
    (velocity,), or (velocity, logits) with `heads=True`.
    """

    def __init__(self, backbone: nn.Module, fractions: tuple[float, ...] = (0.45, 0.70, 1.0),
                 keep_output: bool = False):
        super().__init__()
        self.backbone = backbone
        self.keep_output = keep_output
        cfg = backbone.config
        dim = cfg.num_attention_heads * cfg.attention_head_dim
        self.blocks = head_blocks(len(backbone.blocks), fractions)
        if not keep_output:
            # Blocks past the last head would be computed for nothing, and the output layer is never read: drop
            # the first and freeze the second (a parameter without a gradient also trips ZeRO's gradient buckets).
            backbone.blocks = backbone.blocks[:self.blocks[-1] + 1]
            for unused in (backbone.proj_out, backbone.norm_out):
                unused.requires_grad_(False)
            backbone.scale_shift_table.requires_grad_(False)
        self.heads = nn.ModuleList(QueryHead(dim, cfg.num_attention_heads) for _ in self.blocks)
        self.norm = nn.LayerNorm(dim * len(self.blocks))
        self.out = nn.Linear(dim * len(self.blocks), 1)

    @property
    def config(self):  # what WanTeacher.forward and the planner read of a DiT
        return self.backbone.config

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                return_dict: bool = False, heads: bool | None = None) -> tuple[torch.Tensor, ...]:
        heads = not self.keep_output if heads is None else heads
        features: dict[int, torch.Tensor] = {}
        hooks = [self.backbone.blocks[i].register_forward_hook(
            lambda module, args, out, i=i: features.__setitem__(i, out)) for i in self.blocks] if heads else []
        try:
            out = self.backbone(hidden_states=hidden_states, timestep=timestep,
                                encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
        finally:
            for h in hooks:
                h.remove()
        if not heads:
            return (out,)
        pooled = torch.cat([head(features[i]) for head, i in zip(self.heads, self.blocks)], dim=-1)
        logits = self.out(self.norm(pooled)).squeeze(-1).float()
        return (out, logits) if self.keep_output else (logits,)


# --- LoRA on a Wan DiT ----------------------------------------------------------------------------------------------
# Wan's attention projections and feed-forward layers (diffusers' WanTransformer3DModel names): LoRA's usual targets.
WAN_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2")


def wan_lora_params(dim: int, block_params: int, depth: int, rank: int) -> int:
    """Weights LoRA of rank r adds on WAN_LORA_TARGETS of a Wan DiT, counted from its shape (for the memory planner):
    r·(in + out) for the 8 attention projections (d → d; self- and cross-attention) and the 2 feed-forward layers
    (d → f → d) of every block. The feed-forward width f is solved from one block's size, 8d² + 21d + 2df + f
    (projections with biases, q/k norms, the cross-attention norm, the scale-shift table, the feed-forward
    layers); a block without q/k norms or cross-attention norm moves f by at most 3."""
    ffn = round((block_params - 8 * dim * dim - 21 * dim) / (2 * dim + 1))
    return depth * rank * (8 * 2 * dim + 2 * (dim + ffn))
