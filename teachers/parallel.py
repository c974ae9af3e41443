"""Sequence parallelism for Wan DiTs (DeepSpeed-Ulysses): one clip's tokens split over the N ranks of a group.

    patch embedding (every rank, whole clip) ─► keep my 1/N of the tokens (and of the rotary embedding)
    every block: self-attention  q, k, v of my tokens, all heads ─ all-to-all ─► all tokens, my H/N heads
                                 attention ─ all-to-all ─► my tokens, all heads     (Ulysses)
                 cross-attention, feed-forward, norms: per token, on my tokens only
    output projection ─► all-gather the tokens: every rank of the group holds the whole output

The all-to-all exchanges are DeepSpeed's `single_all_to_all` (what its `DistributedAttention` runs), wrapped here
with both derivative rules: the exchange is linear, so its backward is the transposed exchange and its forward-mode
rule (the JVP of rCM's student) is the same exchange of the tangent. DeepSpeed's own autograd function has no
forward-mode rule. The final all-gather's backward sums the gradient over the group before each
rank keeps its own tokens' share (a reduce-scatter). Every
rank of a group computes the same loss from the same gathered output, so each weight's gradient, summed over the
group's ranks, is N times that of the one-rank forward; the data-parallel mean over all ranks (what DeepSpeed
computes over the world) then equals the mean over groups of the one-rank gradients, with no loss scaling. A head
that reads the gathered tokens (APT's discriminator heads, through `gather_input`) obeys the same rule.

This module lives in the teacher layer so that the teacher's own sampling and the eval harness can use it; the
groups come from `make_layout` (N consecutive ranks per group), which the engine (distill/parallel.py) applies to
every DiT of a run and the eval to every model it samples.

    world 8, sequence 4:   ranks 0 1 2 3 │ 4 5 6 7
                           group 0       │ group 1         data rank = group index, data world = 2
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

_HANDLE = "_sequence_parallel"  # attribute of a sharded DiT: what `unshard_sequence` undoes


def check_sequence_split(heads: int, tokens: int, n: int, where: str = "") -> None:
    """Refuse a split Ulysses cannot make, naming the value: the heads and the tokens must divide by n."""
    at = f"{where}: " if where else ""
    if heads % n:
        options = [d for d in range(1, heads + 1) if heads % d == 0]
        raise ValueError(f"{at}parallel.sequence={n} does not divide the DiT's {heads} attention heads (each rank "
                         f"attends over heads/N of them); use one of {options}")
    if tokens % n:
        raise ValueError(f"{at}a clip of {tokens} tokens does not split evenly over parallel.sequence={n} ranks; "
                         f"change the clip size or the sequence degree")


def token_count(latent_shape, patch_size) -> int:
    """Tokens of one clip: latent (frames, height, width) over the DiT's (t, h, w) patch."""
    f, h, w = latent_shape[-3:]
    p_t, p_h, p_w = patch_size
    return (f // p_t) * (h // p_h) * (w // p_w)


@dataclass
class Layout:
    """Which sequence-parallel group this rank is in, and which data-parallel replica that group is."""

    sequence: int  # ranks per sequence-parallel group (N)
    group: object | None  # this rank's sequence-parallel process group; None when N = 1
    data_rank: int  # this rank's group: which replica's batches it sees
    data_world: int  # number of groups (data-parallel replicas)

    @property
    def leader(self) -> bool:
        """The first rank of its group: the one that keeps what the group computed together."""
        return self.group is None or dist.get_rank(self.group) == 0

    def shard(self, *dits) -> None:
        """Make each DiT (a module or a DeepSpeed engine around one) split its forwards over this rank's group."""
        for dit in dits:
            if dit is not None:
                shard_sequence(getattr(dit, "module", dit), self.group)

    def gather_inputs(self, *modules) -> None:
        """Whole-sequence inputs for modules that read every token of a sharded DiT's features (pooling heads)."""
        for m in modules:
            gather_input(m, self.group)


def make_layout(sequence: int, what: str = "parallel.sequence") -> Layout:
    """Create the sequence-parallel groups of N = `sequence` consecutive ranks (a collective: every rank calls it,
    with the same `sequence`). One process without a process group is the layout of one rank."""
    if not dist.is_initialized():
        if sequence != 1:
            raise ValueError(f"{what}={sequence} needs a job of {sequence} or a multiple of {sequence} ranks "
                             f"(launch with torchrun); this is one process")
        return Layout(1, None, 0, 1)
    rank, world = dist.get_rank(), dist.get_world_size()
    if world % sequence:
        options = [d for d in range(1, world + 1) if world % d == 0]
        raise ValueError(f"{what}={sequence} does not divide the job's {world} ranks (WORLD_SIZE); use one of "
                         f"{options} or launch a multiple of {sequence} ranks")
    if sequence == 1:
        return Layout(1, None, rank, world)
    mine = None
    for start in range(0, world, sequence):  # every rank creates every group, in the same order
        group = dist.new_group(list(range(start, start + sequence)))
        if start <= rank < start + sequence:
            mine = group
    return Layout(sequence, mine, rank // sequence, world // sequence)


def _local(x: torch.Tensor, group, dim: int = 1) -> torch.Tensor:
    """This rank's contiguous share of `x` along `dim` (autograd: zeros for the other shares)."""
    return x.chunk(dist.get_world_size(group), dim=dim)[dist.get_rank(group)]


class _Gather(torch.autograd.Function):
    """All-gather along a dimension; its adjoint (backward) sums the gradient over the group and keeps this rank's
    share: a reduce-scatter, written as all-reduce + slice because gloo has no reduce-scatter."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group, dim: int) -> torch.Tensor:
        ctx.group, ctx.dim = group, dim
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone(memory_format=torch.contiguous_format)  # all_reduce works in place
        dist.all_reduce(grad, group=ctx.group)
        return _local(grad, ctx.group, ctx.dim).contiguous(), None, None

    @staticmethod
    def jvp(ctx, tangent: torch.Tensor, *_):
        parts = [torch.empty_like(tangent) for _ in range(dist.get_world_size(ctx.group))]
        dist.all_gather(parts, tangent.contiguous(), group=ctx.group)  # linear: the tangent is gathered alike
        return torch.cat(parts, dim=ctx.dim)


def _gathered(x: torch.Tensor, group, dim: int = 1) -> torch.Tensor:
    """Every rank's share concatenated along `dim`, in rank order; backward: sum over the group, keep my share."""
    return _Gather.apply(x, group, dim)


def _rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on interleaved pairs (as diffusers' WanAttnProcessor applies it)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def _local_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Full-sequence attention over this rank's heads; [B, S, H/N, D] in and out, through diffusers' dispatcher
    (so that the attention backend a user set, flash attention on a GPU for one, is the one that runs)."""
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    return dispatch_attention_fn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False)


class _AllToAll(torch.autograd.Function):
    """DeepSpeed's all-to-all over `group` (split dim `scatter` over the ranks, concatenate their parts along
    `gather`; dim 0 is the batch), with a backward (the exchange with the two dims swapped) and a forward-mode rule
    (the same exchange of the tangent)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group, scatter: int, gather: int) -> torch.Tensor:
        from deepspeed.sequence.layer import single_all_to_all

        ctx.group, ctx.scatter, ctx.gather = group, scatter, gather
        return single_all_to_all(x.contiguous(), scatter, gather, 0, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _AllToAll.apply(grad, ctx.group, ctx.gather, ctx.scatter), None, None, None

    @staticmethod
    def jvp(ctx, tangent: torch.Tensor, *_):
        from deepspeed.sequence.layer import single_all_to_all

        return single_all_to_all(tangent.contiguous(), ctx.scatter, ctx.gather, 0, ctx.group)


class UlyssesAttention:
    """Attention over sequence-sharded q, k, v [B, S/N, H, D]: all-to-all to [B, S, H/N, D] (scatter heads, gather
    tokens), full-sequence attention over this rank's heads, all-to-all back (DeepSpeed-Ulysses)."""

    def __init__(self, group):
        self.group = group

    def __call__(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        q, k, v = (_AllToAll.apply(x, self.group, 2, 1) for x in (query, key, value))
        return _AllToAll.apply(_local_attention(q, k, v), self.group, 1, 2)


class UlyssesWanAttnProcessor:
    """Wan self-attention over sequence-sharded tokens: diffusers' WanAttnProcessor with Ulysses' exchanges around
    the attention itself."""

    def __init__(self, group):
        self.attention = UlyssesAttention(group)

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, rotary_emb=None) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("UlyssesWanAttnProcessor is for Wan's self-attention (attn1) only")
        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        # RMS norms across all heads, per token: local tokens hold every head, so they are exact here.
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))
        if rotary_emb is not None:  # already sliced to this rank's tokens (the hook on `rope`)
            query, key = _rotary(query, *rotary_emb), _rotary(key, *rotary_emb)
        out = self.attention(query, key, value)
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


class _Sharding:
    """The hooks and processors installed on one DiT, so that they can be removed again."""

    def __init__(self, group, n: int):
        self.group, self.n = group, n
        self.hooks: list = []
        self.processors: list = []  # (attention module, its original processor)

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        for attn, processor in self.processors:
            attn.set_processor(processor)
        self.hooks, self.processors = [], []


def _ensure_deepspeed_comm() -> None:
    """DeepSpeed's all-to-all talks through deepspeed.comm, which wraps torch.distributed's existing process group."""
    import deepspeed.comm

    if not deepspeed.comm.is_initialized():
        deepspeed.comm.init_distributed(dist_backend=dist.get_backend(), auto_mpi_discovery=False, verbose=False)


def shard_sequence(dit: torch.nn.Module, group) -> torch.nn.Module:
    """Split every forward of `dit` (a diffusers WanTransformer3DModel) over the ranks of `group`: each rank
    computes 1/N of the tokens; the output is whole on every rank. Every rank of the group must run the same
    forwards on the same inputs. Returns `dit`; `unshard_sequence` undoes it. A group of one rank changes nothing.
    A network of experts (`experts`, a ModuleList of DiTs) has each of its experts split."""
    if group is None or dist.get_world_size(group) == 1:
        return dit
    if isinstance(getattr(dit, "experts", None), torch.nn.ModuleList):
        for expert in dit.experts:
            shard_sequence(expert, group)
        return dit
    if getattr(dit, _HANDLE, None) is not None:
        raise ValueError("this DiT is already sequence-parallel")
    n = dist.get_world_size(group)
    cfg = dit.config
    check_sequence_split(cfg.num_attention_heads, n, n)  # heads now; tokens at each forward (the clip may vary)
    _ensure_deepspeed_comm()
    state = _Sharding(group, n)
    patch = tuple(cfg.patch_size)

    def check_and_split_timestep(module, args, kwargs):
        x = kwargs.get("hidden_states", args[0] if args else None)
        check_sequence_split(cfg.num_attention_heads, token_count(x.shape, patch), n, "sequence parallelism")
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if t is not None and t.ndim == 2:  # Wan 2.2 TI2V: one timestep per token, split like the tokens
            if "timestep" in kwargs:
                kwargs = {**kwargs, "timestep": _local(t, group)}
            else:
                args = (args[0], _local(t, group), *args[2:])
        return args, kwargs

    def split_rotary(module, args, out):
        return tuple(_local(f, group) for f in out)  # (cos, sin) [1, S, 1, D]

    def split_tokens(module, args, kwargs):
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": _local(kwargs["hidden_states"], group)}
        return (_local(args[0], group), *args[1:]), kwargs

    def gather_tokens(module, args, out):
        return _gathered(out, group)

    state.hooks += [dit.register_forward_pre_hook(check_and_split_timestep, with_kwargs=True),
                    dit.rope.register_forward_hook(split_rotary),
                    dit.blocks[0].register_forward_pre_hook(split_tokens, with_kwargs=True),
                    dit.proj_out.register_forward_hook(gather_tokens)]
    processor = UlyssesWanAttnProcessor(group)
    for block in dit.blocks:
        state.processors.append((block.attn1, block.attn1.processor))
        block.attn1.set_processor(processor)
    object.__setattr__(dit, _HANDLE, state)  # not a submodule: invisible to state dicts and .to()
    return dit


def unshard_sequence(dit: torch.nn.Module) -> torch.nn.Module:
    """Undo `shard_sequence` (before a deepcopy, for one: process groups cannot be copied)."""
    if isinstance(getattr(dit, "experts", None), torch.nn.ModuleList):
        for expert in dit.experts:
            unshard_sequence(expert)
        return dit
    state = getattr(dit, _HANDLE, None)
    if state is not None:
        state.remove()
        object.__setattr__(dit, _HANDLE, None)
    return dit


def gather_input(module: torch.nn.Module, group) -> None:
    """Gather `module`'s first input over `group` along the token dimension before it runs (a head that pools over
    every token of a sequence-sharded DiT's block output). Backward: summed over the group, as for the DiT's
    output."""
    if group is None or dist.get_world_size(group) == 1:
        return

    def gather(mod, args):
        return (_gathered(args[0], group), *args[1:])

    module.register_forward_pre_hook(gather)


__all__ = ["Layout", "make_layout", "check_sequence_split", "token_count", "shard_sequence", "unshard_sequence", "gather_input",
           "UlyssesWanAttnProcessor"]
