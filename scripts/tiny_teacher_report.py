#!/usr/bin/env python
"""The tiny teacher's quality report: held-out prompts at 50 UniPC steps (CFG) vs 4 Euler steps (CFG).

    python scripts/tiny_teacher_report.py --teacher builtin:tiny-wan --docs docs

Each clip is read back with the toy world's network-free reader (distill.toyworld.read_clip): the share of clips
showing the prompted shape, colour, background, direction and speed, and the palette error (mean distance in RGB
units of each pixel to the nearer of the clip's two colours; clean renders score ~0.4). Ground-truth renders of
the same prompts are scored the same way as the reference, with the VAE's round trip of them (the ceiling the
VAE leaves) and 50-step clips of as many *trained* prompts (does the DiT draw an attribute at all, or only fail
to compose it?). Writes docs/tiny-teacher.json and docs/tiny-teacher-grid.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from distill import toyworld  # noqa: E402
from distill.config import load_teacher_config  # noqa: E402
from distill.media import frame_grid  # noqa: E402
from teachers.wan import WanTeacher  # noqa: E402


def write_report(teacher_ref: str, docs: Path, device: str = "cpu", seed: int = 0, batch: int = 14) -> dict:
    cfg = load_teacher_config(teacher_ref)
    teacher = WanTeacher.from_pretrained(cfg.source, dtype=cfg.dtype, device=device,
                                         max_sequence_length=cfg.max_sequence_length)
    prompts = toyworld.prompt_suite("held_out").prompts
    seeds = [seed + i for i in range(len(prompts))]
    v = cfg.video
    settings = {
        "teacher@50 unipc cfg": dict(steps=50, sampler="unipc"),
        "teacher@4 euler cfg": dict(steps=4, sampler="euler"),
    }

    def sample(suite: list[str], steps: int, sampler: str) -> np.ndarray:
        out = []
        for i in range(0, len(suite), batch):
            lat = teacher.sample(suite[i:i + batch], steps=steps, sampler=sampler, guidance=cfg.sampler.guidance,
                                 shift=cfg.sampler.shift, seed=seeds[i:i + batch], negative=cfg.negative_prompt,
                                 frames=v.frames, height=v.height, width=v.width)
            out.append(teacher.decode(lat).numpy())
        return np.concatenate(out)

    results, clips = {}, {}
    for name, s in settings.items():
        started = time.time()
        clips[name] = sample(prompts, s["steps"], s["sampler"])
        results[name] = {**toyworld.attribute_accuracy(clips[name], prompts),
                         "seconds_per_clip": (time.time() - started) / len(prompts)}
    truth = np.stack([toyworld.render(toyworld.parse_caption(p), s) for p, s in zip(prompts, seeds)])
    results["ground truth render"] = toyworld.attribute_accuracy(truth, prompts)
    # the ceiling the VAE leaves: its round trip of the same renders
    rec = teacher.decode(teacher.encode_video(torch.from_numpy(truth))).numpy()
    results["VAE round trip of the renders"] = toyworld.attribute_accuracy(rec, prompts)
    # seen combinations: does the DiT draw an attribute at all, or only fail to compose it?
    trained = toyworld.prompt_suite("train").prompts
    train = trained[::len(trained) // len(prompts)][:len(prompts)]
    results["teacher@50 unipc cfg, train prompts"] = toyworld.attribute_accuracy(sample(train, 50, "unipc"), train)

    show = list(range(0, len(prompts), max(1, len(prompts) // 6)))[:6]
    rows, labels = [], []
    for i in show:
        for name, video in (("truth", truth[i]), ("50 steps", clips["teacher@50 unipc cfg"][i]),
                            ("4 steps", clips["teacher@4 euler cfg"][i])):
            rows.append(video)
            labels.append(f"{name}: {prompts[i]}")
    docs.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame_grid(rows, n_frames=5, labels=labels, scale=2)).save(docs / "tiny-teacher-grid.png")
    report = {"teacher": teacher_ref, "suite": "toyworld/held_out", "n_clips": len(prompts), "seeds": seeds,
              "guidance": cfg.sampler.guidance, "shift": cfg.sampler.shift, "device": str(teacher.device),
              "torch_threads": torch.get_num_threads(), "results": results}
    (docs / "tiny-teacher.json").write_text(json.dumps(report, indent=2) + "\n")
    for name, r in results.items():
        print(f"{name:38s} all {r['all']:.3f}  shape {r['shape']:.2f} colour {r['colour']:.2f} "
              f"bg {r['background']:.2f} dir {r['direction']:.2f} speed {r['speed']:.2f}  "
              f"palette error {r['palette_error']:.1f}")
    return report


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="builtin:tiny-wan")
    p.add_argument("--docs", type=Path, default=Path("docs"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    write_report(a.teacher, a.docs, a.device, a.seed)
