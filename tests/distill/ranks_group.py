"""Run in each of two processes that `torch.multiprocessing` forks (tests/distill/test_ranks.py): join a gloo
group and write what this rank decided and holds to rank<R>.json. Kept apart from the test module, so that the
children import only what they check."""

import json
import warnings
from pathlib import Path

import torch
import torch.distributed as dist


def clips(seed: int) -> torch.Tensor:
    """uint8 clips [B, T, H, W, 3] with texture (the alarms' reference)."""
    return torch.randint(0, 256, (2, 2, 16, 16, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def alarm_decisions(rank: int, out: Path, low: float) -> dict:
    """APT's alarms where rank 1's student alone turned to flat colour (a rank-local anomaly): its decision and state
    on this rank."""
    from distill.students.apt import AlarmConfig, Alarms
    from distill.students.base import MonitorContext

    real = clips(0)
    mine = torch.zeros_like(real) if rank == 1 else real
    ctx = MonitorContext(rank=rank, out=out, prompts=["a", "b"], real_x0=real, decode=lambda x: x,
                         student_latents=lambda prompts, seed: mine, state={})
    alarms = Alarms(ctx, AlarmConfig(every=1, low=low))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fired = [alarms.check(step, {"d_gan": 1.0}) for step in (1, 2)]
    return {"fired": fired, "state": alarms.state()}


def in_group(rank: int, tmp: str) -> None:
    from distill.core.dist import any_rank, broadcast_from_first, first_reason, leave, mean_over_ranks

    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=2)
    out = Path(tmp)
    result = {
        "any": any_rank(rank == 1, False, True),
        "reason": first_reason("step 3: the loss is nan" if rank == 1 else None),
        "same_reason": first_reason("step 4: the loss is inf"),
        "no_reason": first_reason(None),
        "mean": mean_over_ranks({"b": 2.0 * rank, "a": 1.0}),
        "alarms_mild": alarm_decisions(rank, out, low=0.25),  # the mean of the ranks' figures: 0.5x, inside
        "alarms_strong": alarm_decisions(rank, out, low=0.6),  # 0.5x: below, on both ranks
    }
    torch.manual_seed(rank)  # each rank its own random init, as a LoRA adapter built per replica had
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    broadcast_from_first(net, {"0.weight", "0.bias"})
    result["weights"] = {n: p.detach().flatten().tolist() for n, p in net.named_parameters()}
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    leave()
