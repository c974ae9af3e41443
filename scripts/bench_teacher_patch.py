#!/usr/bin/env python
"""What the tiny teacher's DiT costs per training step on finer latent patches, measured side by side in one run.

    python scripts/bench_teacher_patch.py                    # 2x2 (shipped) against 1x1 patches, batch 16, CPU
    python scripts/bench_teacher_patch.py --patch 2 --patch 1 --patch 4 --device cuda

One flow-matching training step (forward, backward, AdamW) of the DiT that `scripts/train_tiny_teacher.py` builds,
on a batch of the toy world's latent shape (5 x 16 x 16), with random weights and inputs (speed does not depend on
them). The patches are timed in interleaved rounds, so a busy machine slows them alike; the report is each one's
median and its ratio to the first. The tokens per clip are 5 x (16 / patch)^2.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from distill import toyworld  # noqa: E402
from distill.teachers.wan.tiny import TinyWanSpec, build_components  # noqa: E402


def latent_grid(spec: TinyWanSpec) -> tuple[int, int, int]:
    """The toy world's clip through the tiny VAE: (frames, height, width) in latent cells."""
    temporal, spatial = 2 ** sum(spec.vae_temporal_downsample), 2 ** len(spec.vae_temporal_downsample)
    return (toyworld.FRAMES - 1) // temporal + 1, toyworld.HEIGHT // spatial, toyworld.WIDTH // spatial


LATENT = latent_grid(TinyWanSpec())


def make_step(patch: int, batch: int, device: str):
    spec = TinyWanSpec(dit_patch=(1, patch, patch))
    dit = build_components(spec, toyworld.vocabulary(), seed=0)["transformer"].to(device).train()
    opt = torch.optim.AdamW(dit.parameters(), lr=1e-4)
    gen = torch.Generator(device).manual_seed(0)
    x = torch.randn((batch, spec.vae_z_dim, *LATENT), generator=gen, device=device)
    text = torch.randn((batch, 16, spec.text_dim), generator=gen, device=device)
    t = torch.rand(batch, generator=gen, device=device) * 1000

    def step() -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        v = dit(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
        loss = F.mse_loss(v, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patch", type=int, action="append", help="spatial patch in latent cells (repeatable)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5, help="timed steps per patch, after 2 warm-up steps")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, help="also write the result here")
    a = p.parse_args(argv)
    patches = a.patch or [2, 1]
    for patch in patches:
        if patch < 1 or LATENT[1] % patch:
            p.error(f"--patch {patch}: must divide the latent's {LATENT[1]} cells (1, 2, 4, 8 or 16)")
    steps = {patch: make_step(patch, a.batch, a.device) for patch in patches}
    for step in steps.values():
        step(), step()
    times = {patch: [] for patch in patches}
    for _ in range(a.rounds):
        for patch, step in steps.items():
            times[patch].append(step())
    base = statistics.median(times[patches[0]])
    result = {"device": a.device, "batch": a.batch, "torch_threads": torch.get_num_threads(), "patches": {}}
    for patch in patches:
        median = statistics.median(times[patch])
        tokens = LATENT[0] * (LATENT[1] // patch) ** 2
        result["patches"][str(patch)] = {"tokens_per_clip": tokens, "seconds_per_step": median,
                                         "ratio_to_first": median / base}
        print(f"patch {patch}x{patch}: {tokens:5d} tokens/clip  {median:.3f} s/step  {median / base:.2f}x")
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
