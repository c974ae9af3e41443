"""Process-group helpers that work the same with and without torch.distributed initialised."""

from __future__ import annotations

import torch


def rank_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def gather_dict(local: dict) -> dict:
    """Every rank's dict merged, on every rank."""
    _, world = rank_world()
    if world == 1:
        return local
    parts = [None] * world
    torch.distributed.all_gather_object(parts, local)
    merged = {}
    for part in parts:
        merged.update(part)
    return merged


def _device() -> torch.device:
    """Where the group's collectives take tensors: NCCL only CUDA ones."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each figure's mean over the ranks, on every rank (one all-reduce; a collective: every rank calls it with the
    same keys). A decision taken on these figures is the same on every rank: one that leads into a collective (a
    checkpoint, a stop) cannot be taken by one rank alone."""
    _, world = rank_world()
    if world == 1:
        return dict(values)
    keys = sorted(values)
    summed = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_device())
    torch.distributed.all_reduce(summed)
    return {k: float(v) / world for k, v in zip(keys, summed.cpu())}


def any_rank(*flags: bool) -> tuple[bool, ...]:
    """Each flag, true on every rank where it is true on any (one all-reduce; a collective)."""
    _, world = rank_world()
    if world == 1:
        return tuple(bool(f) for f in flags)
    votes = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int32, device=_device())
    torch.distributed.all_reduce(votes, op=torch.distributed.ReduceOp.MAX)
    return tuple(bool(v) for v in votes.cpu())


def first_reason(reason: str | None) -> str | None:
    """The reason of the lowest rank that has one, on every rank (naming that rank where the ranks did not all give
    this reason); None where no rank has one. A collective: one all-reduce, and a gather only when some rank has a
    reason."""
    _, world = rank_world()
    if world == 1:
        return reason
    (some,) = any_rank(reason is not None)
    if not some:
        return None
    reasons = [None] * world
    torch.distributed.all_gather_object(reasons, reason)
    first = next(i for i, r in enumerate(reasons) if r is not None)
    return reasons[first] if len(set(reasons)) == 1 else f"rank {first}: {reasons[first]}"


def broadcast_from_first(module: torch.nn.Module, names: set[str] | None = None) -> None:
    """Rank 0's values of the named weights (all by default) into every rank's copy of a network (a collective).
    For networks that no DeepSpeed engine holds under ZeRO-0/1/2 (the EMA, a frozen recipe network): an engine
    broadcasts rank 0's weights only into the module it wraps, so a copy made before that keeps whatever its rank
    built. Partitioned weights (ZeRO-3, with a `ds_id`) are skipped: they were broadcast when they were placed."""
    if rank_world()[1] == 1:
        return
    for name, p in getattr(module, "module", module).named_parameters():
        if hasattr(p, "ds_id") or (names is not None and name not in names):
            continue
        torch.distributed.broadcast(p.data, src=0)


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def leave() -> None:
    """Leave the process group once every rank is done: all ranks meet, then the group is destroyed. Without it the
    interpreter's exit may tear down the backend's threads while a peer still talks to them, and a finished job ends
    in SIGABRT ("terminate called without an active exception"). A one-process group has no peer to race, and is
    kept: DeepSpeed caches its groups, so a second run in the same process (the tests do that) needs it alive."""
    if rank_world()[1] > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
