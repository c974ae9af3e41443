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
