#!/usr/bin/env python
"""The tiny teacher's quality report: held-out prompts at 50 UniPC steps (CFG) vs 4 Euler steps (CFG).

    python scripts/tiny_teacher_report.py --teacher builtin:tiny-wan --docs docs

Each clip is read back with the toy world's network-free reader (distill.toyworld.read_clip): the share of clips
showing the prompted shape, colour, background, direction and speed, and the palette error (mean distance in RGB
units of each pixel to the nearer of the clip's two colours; clean renders score ~0.4). Ground-truth renders of
the same prompts are scored the same way as the reference, with the VAE's round trip of them (the ceiling the
VAE leaves) and 50-step clips of as many *trained* prompts (does the DiT draw an attribute at all, or only fail
to compose it?).

Where an attribute is lost: the renders' latents are re-noised to a level t and denoised by the teacher (20 Euler
steps from t, CFG) before they are read back. A perfect denoiser keeps the round trip's figures at every t; the
level at which an attribute falls to chance is where the DiT fails to draw it. The renders box-filtered to the
latent grid and to the DiT's token grid show the scale at which each attribute exists.

Writes docs/tiny-teacher.json (with the shapes read back from the 50-step clips, by prompted shape) and
docs/tiny-teacher-grid.png.
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
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from distill import toyworld  # noqa: E402
from distill.teachers.config import load_teacher_config  # noqa: E402
from distill.core.media import frame_grid  # noqa: E402
from distill.eval.flicker import static_clips  # noqa: E402
from distill.teachers.samplers import sample_euler  # noqa: E402
from distill.teachers.wan import WanTeacher  # noqa: E402

RENOISE_LEVELS = (0.3, 0.5, 0.7, 0.9)


def write_report(teacher_ref: str, docs: Path, device: str = "cpu", seed: int = 0, batch: int = 14) -> dict:
    cfg = load_teacher_config(teacher_ref)
    teacher = WanTeacher.from_pretrained(cfg.source, dtype=cfg.dtype, device=device,
                                         max_sequence_length=cfg.max_sequence_length)
    prompts = toyworld.prompt_suite("held_out").prompts
    seeds = [seed + i for i in range(len(prompts))]
    settings = {
        "teacher@50 unipc cfg": dict(steps=50, sampler="unipc"),
        "teacher@4 euler cfg": dict(steps=4, sampler="euler"),
    }

    def sample(suite: list[str], steps: int, sampler: str) -> np.ndarray:
        return sample_clips(teacher, cfg, suite, seeds, steps, sampler, batch)

    results, clips = {}, {}
    for name, s in settings.items():
        started = time.time()
        clips[name] = sample(prompts, s["steps"], s["sampler"])
        results[name] = {**toyworld.attribute_accuracy(clips[name], prompts),
                         "seconds_per_clip": (time.time() - started) / len(prompts)}
    # which shape the reader sees in the 50-step clips, by the prompted one
    results["teacher@50 unipc cfg"]["shapes_read"] = shapes_read(clips["teacher@50 unipc cfg"], prompts)
    # still subjects stay still: the share of still prompts' clips that VBench's static filter keeps
    still = [i for i, p in enumerate(prompts) if toyworld.STILL in p.split()]
    for name in settings:
        is_static, motion = static_clips(torch.from_numpy(clips[name][still]), flow="farneback")
        results[name]["still_subjects_static"] = float(is_static.double().mean())
        results[name]["still_subjects_motion_px"] = [round(float(m), 3) for m in motion]
    truth = np.stack([toyworld.render(toyworld.parse_caption(p), s) for p, s in zip(prompts, seeds)])
    results["ground truth render"] = toyworld.attribute_accuracy(truth, prompts)
    results["ground truth render"]["still_subjects_static"] = float(
        static_clips(torch.from_numpy(truth[still]), flow="farneback")[0].double().mean())
    # the ceiling the VAE leaves: its round trip of the same renders
    z0 = teacher.encode_video(torch.from_numpy(truth))
    round_trip = teacher.decode(z0).numpy()
    results["VAE round trip of the renders"] = toyworld.attribute_accuracy(round_trip, prompts)
    results["VAE round trip of the renders"]["still_subjects_static"] = float(  # the decoder's own shimmer
        static_clips(torch.from_numpy(round_trip[still]), flow="farneback")[0].double().mean())
    results.update(renoised(teacher, z0, prompts, seeds, cfg, batch))
    # the scale the shape lives at: the renders seen through the latent grid and through the DiT's token grid
    cell = teacher.vae_scale_spatial
    token = cell * teacher.transformer.config.patch_size[-1]
    for name, factor in ((f"latent grid ({cell}x{cell} px)", cell), (f"token grid ({token}x{token} px)", token)):
        results[f"renders box-filtered to the {name}"] = toyworld.attribute_accuracy(
            box_filtered(truth, factor), prompts)
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
        still_line = f"  still kept still {r['still_subjects_static']:.2f}" if "still_subjects_static" in r else ""
        print(f"{name:50s} all {r['all']:.3f}  shape {r['shape']:.2f} colour {r['colour']:.2f} "
              f"bg {r['background']:.2f} dir {r['direction']:.2f} speed {r['speed']:.2f}  "
              f"palette error {r['palette_error']:.1f}{still_line}")
    print("shapes read in the 50-step clips, by prompted shape:", results["teacher@50 unipc cfg"]["shapes_read"])
    return report


def sample_clips(teacher: WanTeacher, cfg, prompts: list[str], seeds: list[int], steps: int, sampler: str,
                 batch: int) -> np.ndarray:
    """uint8 clips [B, T, H, W, 3] of `prompts` (seed i for prompt i), decoded, at the config's CFG, shift and size."""
    v, out = cfg.video, []
    for i in range(0, len(prompts), batch):
        lat = teacher.sample(prompts[i:i + batch], steps=steps, sampler=sampler, guidance=cfg.sampler.guidance,
                             shift=cfg.sampler.shift, seed=seeds[i:i + batch], negative=cfg.negative_prompt,
                             frames=v.frames, height=v.height, width=v.width)
        out.append(teacher.decode(lat).numpy())
    return np.concatenate(out)


def shapes_read(videos: np.ndarray, prompts: list[str]) -> dict:
    """{prompted shape: {shape read back: clips}}."""
    table = {shape: {} for shape in toyworld.SHAPES}
    for video, prompt in zip(videos, prompts):
        read = str(toyworld.read_clip(video)["shape"])
        row = table[toyworld.parse_caption(prompt).shape]
        row[read] = row.get(read, 0) + 1
    return table


def box_filtered(video: np.ndarray, factor: int) -> np.ndarray:
    """uint8 [B, T, H, W, 3] averaged over factor x factor boxes and scaled back up bilinearly: what of each frame
    survives on a grid that coarse."""
    b, t, h, w, c = video.shape
    x = torch.from_numpy(video).float().permute(0, 1, 4, 2, 3).reshape(b * t, c, h, w)
    y = F.interpolate(F.avg_pool2d(x, factor), size=(h, w), mode="bilinear", align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8).reshape(b, t, c, h, w).permute(0, 1, 3, 4, 2).numpy()


def denoise_from(teacher: WanTeacher, z0: torch.Tensor, noise: torch.Tensor, cond, t: float, guidance: float,
                 steps: int = 20) -> torch.Tensor:
    """Latents z0 re-noised to level t (the flow-matching path: (1 - t) z0 + t noise), then denoised by the
    teacher's guided velocity with `steps` Euler steps from t to 0."""
    sigmas = torch.linspace(t, 0.0, steps + 1, dtype=torch.float64)
    model = lambda x_t, s: teacher.velocity(x_t, s, cond, guidance)  # noqa: E731
    return sample_euler(model, (1 - t) * z0 + t * noise, sigmas)


def renoised(teacher: WanTeacher, z0: torch.Tensor, prompts: list[str], seeds: list[int], cfg, batch: int,
             levels=RENOISE_LEVELS, steps: int = 20) -> dict:
    """Attribute accuracy of the renders' latents z0 re-noised to each level t and denoised by the teacher from t."""
    v = cfg.video
    noise = teacher.noise(len(prompts), v.frames, v.height, v.width, seeds)
    cond = teacher.encode(prompts, cfg.negative_prompt)
    out = {}
    for t in levels:
        clips = [teacher.decode(denoise_from(teacher, z0[i:i + batch], noise[i:i + batch], cond[i:i + batch], t,
                                             cfg.sampler.guidance, steps)).numpy()
                 for i in range(0, len(prompts), batch)]
        out[f"renders re-noised to t={t}, {steps} Euler steps back"] = toyworld.attribute_accuracy(
            np.concatenate(clips), prompts)
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="builtin:tiny-wan")
    p.add_argument("--docs", type=Path, default=Path("docs"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    write_report(a.teacher, a.docs, a.device, a.seed)
