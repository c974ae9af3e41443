#!/usr/bin/env python
"""Eval throughput: clips per second for each metric, and the cost of each stage of an eval run, measured side by
side in one run on this machine.

    python scripts/bench_eval.py --clips 64 --out runs/bench/eval.json

Metric stages run on toy-world renders (17x64x64). The sampling stages time the built-in teacher at 50 UniPC steps
with CFG and at 4 Euler steps on the same prompts, batch 8.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from distill import toyworld  # noqa: E402
from distill.teachers.config import load_teacher_config  # noqa: E402
from distill.eval import flicker  # noqa: E402
from distill.eval.clip_score import ClipBackend  # noqa: E402
from distill.eval.domain_video_net import DomainVideoDetector  # noqa: E402
from distill.eval.fvd import fvd_from_features  # noqa: E402
from distill.teachers.wan import WanTeacher  # noqa: E402


def timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=64)
    p.add_argument("--sample-clips", type=int, default=8)
    p.add_argument("--out", type=Path, default=Path("runs/bench/eval.json"))
    args = p.parse_args()

    examples = toyworld.sample_examples("held_out", args.clips, seed=0)
    videos = torch.from_numpy(np.stack([toyworld.render(a, s) for a, s in examples]))
    captions = [a.caption() for a, _ in examples]
    clip = ClipBackend.domain()
    detector = DomainVideoDetector()
    feats = detector.features(videos).numpy()
    stages = {
        "clipsim[domain-clip]": lambda: clip.clip_scores(videos, captions),
        "features[domain-video-net]": lambda: detector.features(videos),
        "flicker.vbench": lambda: flicker.vbench_flicker(videos),
        "flicker.warp_error[farneback]": lambda: flicker.warp_error(videos, flow="farneback"),
        "flicker.hf_energy": lambda: flicker.hf_energy(videos),
        "fvd (from features)": lambda: fvd_from_features(feats, feats[::-1].copy()),
    }
    rows = {}
    for name, fn in stages.items():
        seconds = timed(fn, repeat=2)
        rows[name] = {"seconds": seconds, "clips_per_s": args.clips / seconds}

    cfg = load_teacher_config("tiny-wan")
    teacher = WanTeacher.from_pretrained(cfg.source, device="cpu", max_sequence_length=cfg.max_sequence_length)
    prompts = toyworld.prompt_suite("held_out").prompts[:args.sample_clips]
    v = cfg.video
    for name, steps, sampler in (("sample teacher@50 (unipc, cfg)", 50, "unipc"), ("sample teacher@4 (euler, cfg)",
                                                                                   4, "euler")):
        run = lambda: teacher.decode(teacher.sample(prompts, steps=steps, sampler=sampler,  # noqa: E731
                                                    guidance=cfg.sampler.guidance, shift=cfg.sampler.shift,
                                                    frames=v.frames, height=v.height, width=v.width))
        run()  # warm-up
        seconds = timed(run)
        rows[name] = {"seconds": seconds, "clips_per_s": len(prompts) / seconds}

    result = {"device": f"cpu ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads",
              "clips": args.clips, "clip_shape": list(videos.shape[1:]), "stages": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'stage':40s} {'seconds':>9s} {'clips/s':>9s}")
    for name, r in rows.items():
        print(f"{name:40s} {r['seconds']:9.3f} {r['clips_per_s']:9.1f}")
    print(f"device: {result['device']}")


if __name__ == "__main__":
    main()
