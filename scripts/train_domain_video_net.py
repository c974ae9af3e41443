#!/usr/bin/env python
"""Train the toy world's domain video net (the detector behind `fvd[domain-video-net]` and diversity).

    python scripts/train_domain_video_net.py --out eval/builtin/domain-video-net

A small 3D CNN with one classification head per attribute (shape, colour, background, direction, speed), trained
on renders of the training combinations; it reports its accuracy on held-out combinations. Seeded, CPU, minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from distill import toyworld  # noqa: E402
from distill.eval.domain_video_net import DomainVideoNet  # noqa: E402



def fields() -> dict[str, list[str]]:
    """Every value of each attribute, in the order of the net's heads."""
    return toyworld.VALUES


def labels(captions: list[str]) -> dict[str, torch.Tensor]:
    attrs = [toyworld.parse_caption(c) for c in captions]
    return {f: torch.tensor([list(v).index(getattr(a, f)) for a in attrs]) for f, v in fields().items()}


@torch.no_grad()
def accuracy(net, clips: np.ndarray, captions: list[str]) -> dict[str, float]:
    y = labels(captions)
    hits = {f: 0 for f in fields()}
    for i in range(0, len(clips), 32):
        _, logits = net(torch.from_numpy(clips[i:i + 32]))
        for f in fields():
            hits[f] += int((logits[f].argmax(-1) == y[f][i:i + 32]).sum())
    return {f: hits[f] / len(clips) for f in fields()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("eval/builtin/domain-video-net"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seeds-per-combo", type=int, default=6)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    started = time.time()
    clips, captions = toyworld.render_pool("train", args.seeds_per_combo, args.seed)
    y = labels(captions)
    net = DomainVideoNet({f: len(v) for f, v in fields().items()})
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(args.seed)
    for step in range(1, args.steps + 1):
        for g in opt.param_groups:
            g["lr"] = args.lr * 0.5 * (1 + np.cos(np.pi * step / args.steps))
        idx = torch.randint(len(clips), (args.batch,), generator=gen)
        _, logits = net(torch.from_numpy(clips[idx.numpy()]))
        loss = sum(F.cross_entropy(logits[f], y[f][idx]) for f in fields())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            print(f"step {step}/{args.steps} loss {loss.item():.3f}", flush=True)
    net.eval()
    held_clips, held_captions = toyworld.render_pool("held_out", 2, args.seed + 1)
    report = {"held_out_accuracy": accuracy(net, held_clips, held_captions),
              "train_accuracy": accuracy(net, clips[::4], captions[::4]),
              "minutes": (time.time() - started) / 60, "steps": args.steps, "seed": args.seed}
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(net.state_dict(), args.out / "model.safetensors")
    (args.out / "config.json").write_text(json.dumps({**net.config, "fields": fields(), "training": report}, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
