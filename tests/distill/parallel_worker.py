"""Run by tests under torchrun (gloo): a DiT forward and backward, or a teacher's sampling, with and without
sequence parallelism over all ranks, compared on every rank; rank 0 writes the differences as JSON.

    torchrun --nproc_per_node 2 tests/distill/parallel_worker.py dit OUT.json
    torchrun --nproc_per_node 2 tests/distill/parallel_worker.py sample OUT.json TEACHER_FOLDER
"""

import json
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from distill.teachers.parallel import gather_input, shard_sequence


def tiny_dit(heads: int = 4, layers: int = 2):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    dit = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=8, in_channels=4,
                                out_channels=4, text_dim=16, freq_dim=32, ffn_dim=64, num_layers=layers,
                                rope_max_seq_len=64)
    with torch.no_grad():  # Wan zero-initialises nothing, but make every weight matter for the gradient check
        for p in dit.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return dit.float()


def inputs(batch: int = 2, per_token_timestep: bool = False):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, 3, 8, 8, generator=g)  # 3 x 4 x 4 = 48 tokens
    t = torch.rand(batch, generator=g) * 1000
    if per_token_timestep:  # Wan 2.2 TI2V: one timestep per token
        t = t[:, None] + torch.rand(batch, 48, generator=g) * 10
    text = torch.randn(batch, 7, 16, generator=g)
    weight = torch.randn(batch, 4, 3, 8, 8, generator=g)  # loss = <out, weight>: every output element counts
    return x, t, text, weight


def forward_backward(model, x, t, text, weight):
    model.zero_grad(set_to_none=True)
    out = model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
    (out * weight).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads


def data_parallel_mean(grads: dict) -> dict:
    """What DeepSpeed does to each gradient over the data-parallel world: all-reduce and divide by its size."""
    out = {}
    for name, g in grads.items():
        g = g.clone()
        dist.all_reduce(g)
        out[name] = g / dist.get_world_size()
    return out


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def check_dit(report: dict, group) -> None:
    for case, kwargs in (("plain", {}), ("checkpointing", {"checkpointing": True}),
                         ("per_token_timestep", {"per_token_timestep": True})):
        dit = tiny_dit()
        if kwargs.get("checkpointing"):
            dit.enable_gradient_checkpointing()
        x, t, text, weight = inputs(per_token_timestep=kwargs.get("per_token_timestep", False))
        ref_out, ref_grads = forward_backward(dit, x, t, text, weight)
        shard_sequence(dit, group)
        seen = []  # tokens each block computes on this rank: proof that the clip was split
        dit.blocks[-1].register_forward_hook(lambda m, a, o: seen.append(o.shape[1]))
        out, grads = forward_backward(dit, x, t, text, weight)
        report[case] = {"output": float((out - ref_out).abs().max()), "output_scale": float(ref_out.abs().max()),
                        "tokens": 48, "block_tokens": seen[0],
                        "grad": max_diff(data_parallel_mean(grads), ref_grads),
                        "grad_scale": max(float(g.abs().max()) for g in ref_grads.values()),
                        "n_grads": len(grads)}

    # APT's discriminator: heads that pool over every token of sequence-sharded block outputs.
    from distill.students.common import HeadedDiT as Discriminator

    disc = Discriminator(tiny_dit(layers=3), (0.5, 1.0)).float()
    x, t, text, _ = inputs()

    def run(model):
        model.zero_grad(set_to_none=True)
        logits = model(hidden_states=x, timestep=t, encoder_hidden_states=text)[0]
        (logits * torch.tensor([1.0, -2.0])).sum().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref_logits, ref_grads = run(disc)
    shard_sequence(disc.backbone, group)
    for head in disc.heads:
        gather_input(head, group)
    logits, grads = run(disc)
    report["discriminator"] = {"output": float((logits - ref_logits).abs().max()),
                               "grad": max_diff(data_parallel_mean(grads), ref_grads), "n_grads": len(grads)}

    # rCM's JVP (forward-mode AD along x and t) through the sharded DiT: the all-to-alls and the gather carry
    # tangents; attention runs on the math path in chunks of 16 of the 48 queries.
    from distill.students.rcm import jvp

    dit = tiny_dit()
    x, t, text, _ = inputs()
    g = torch.Generator().manual_seed(2)
    tangents = (torch.randn(x.shape, generator=g), torch.randn(t.shape, generator=g) * 10)

    def velocity(x_, t_):
        return dit(hidden_states=x_, timestep=t_, encoder_hidden_states=text, return_dict=False)[0]

    ref_out, ref_tangent = jvp(velocity, (x, t), tangents, chunk=16)
    shard_sequence(dit, group)
    seen = []
    dit.blocks[-1].register_forward_hook(lambda m, a, o: seen.append(o.shape[1]))
    out, tangent = jvp(velocity, (x, t), tangents, chunk=16)
    report["jvp"] = {"output": float((out - ref_out).abs().max()), "tangent": float((tangent - ref_tangent).abs().max()),
                     "tangent_scale": float(ref_tangent.abs().max()), "block_tokens": seen[0]}

    # A head count the group does not divide is refused by name.
    try:
        shard_sequence(tiny_dit(heads=3), group)
        report["refused_heads"] = None
    except ValueError as err:
        report["refused_heads"] = str(err)
    # So is a clip whose tokens do not split (3 x 3 x 3 = 27 tokens over 2 ranks).
    dit = shard_sequence(tiny_dit(), group)
    try:
        dit(hidden_states=torch.randn(1, 4, 3, 6, 6), timestep=torch.ones(1), encoder_hidden_states=text[:1],
            return_dict=False)
        report["refused_tokens"] = None
    except ValueError as err:
        report["refused_tokens"] = str(err)


def check_sample(report: dict, group, folder: str) -> None:
    from distill.teachers.wan import WanTeacher

    teacher = WanTeacher.from_pretrained(folder, device="cpu")
    kwargs = dict(steps=4, guidance=3.0, shift=3.0, seed=[5, 6], frames=5, height=64, width=64)
    prompts = ["a red disc", "a blue plank moving left"]
    alone = teacher.sample(prompts, **kwargs)
    teacher.shard_sequence(group)
    seen = set()
    teacher.dit.blocks[0].register_forward_hook(lambda m, a, o: seen.add(o.shape[1]))
    spread = teacher.sample(prompts, **kwargs)
    report["sample"] = {"latents": float((spread - alone).abs().max()), "scale": float(alone.abs().max()),
                        "shape": list(alone.shape), "block_tokens": sorted(seen)}


def main() -> None:
    mode, out = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    group = dist.new_group(list(range(dist.get_world_size())))
    report: dict = {"world": dist.get_world_size()}
    if mode == "dit":
        check_dit(report, group)
    else:
        check_sample(report, group, sys.argv[3])
    reports = [None] * dist.get_world_size()
    dist.all_gather_object(reports, report)
    if dist.get_rank() == 0:
        json.dump(reports, open(out, "w"), indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
