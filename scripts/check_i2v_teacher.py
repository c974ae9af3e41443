#!/usr/bin/env python
"""Does the image-conditioned tiny teacher keep the given first frame, and move it as prompted?

    python scripts/check_i2v_teacher.py --teacher tiny-wan-ti2v --base tiny-wan --docs docs

On the image-to-video toy-world suite (configs/eval/suites/toyworld-i2v-held-out.yaml: the 87 held-out
combinations, each prompt's first image frame 0 of the toy world's render of that prompt, the prompt saying the
motion), one clip per prompt at the suite's first clip seed, 50 UniPC steps with CFG over text (the image kept in
both halves, as the stock pipelines do). Each clip is scored:

  - first-frame fidelity: PSNR of frame 0 against the image (eval/first_frame.py, uint8 scale), and the toy world's
    reader on frame 0 alone (held as a still clip): does frame 0 show the image's shape, colour and background;
  - motion: the reader on the whole clip (direction, speed, and every attribute); the track error, the mean
    distance over frames 1.. between the subject's centroid and that of the ground-truth render (which starts from
    the same image and moves as prompted); and for the 9 still subjects the share VBench's static filter keeps
    (distill.eval.flicker.static_clips, Farnebäck flow);

next to the same for: the renders themselves, the VAE's round trip of them (the ceiling: frame 0 of a TI2V clip is
the decoded image latent) and the same teacher at 4 Euler steps (what a few-step student must recover); with
--text-only, the same teacher from text alone (TI2V also samples text-to-video), and with --base, the
text-to-video teacher it was fine-tuned from (no image: its PSNR says how far a clip that ignores the image lands).

With `--student NAME=FOLDER` (repeatable; a student export), each student is sampled the same way at its own
sampler and steps (its distill_teacher.json), scored alike, and compared with the teacher's 50-step clips per clip,
paired (the same image, prompt and seed): track error, direction and speed read correctly, with 95% t intervals
over the prompts (one clip each).

Writes docs/tiny-teacher-i2v.json and the frame grid docs/tiny-teacher-i2v-grid.png (--out-name renames both).
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
from distill.core.media import frame_grid  # noqa: E402
from distill.eval.first_frame import first_frame_psnr  # noqa: E402
from distill.eval.flicker import static_clips  # noqa: E402
from distill.eval.stats import clustered_mean_interval  # noqa: E402
from distill.eval.suite import clip_seed, first_images_for, load_suite, suite_prompts  # noqa: E402
from distill.teachers.config import load_teacher, load_teacher_config  # noqa: E402

FRAME0_FIELDS = ("shape", "colour", "background")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def frame0_accuracy(videos: np.ndarray, prompts: list[str]) -> dict:
    """The reader on frame 0 alone, held still for all the clip's frames: the share of clips whose frame 0 shows the
    prompt's (= the image's) shape, colour and background."""
    held = np.repeat(videos[:, :1], videos.shape[1], axis=1)
    acc = toyworld.attribute_accuracy(held, prompts)
    return {f: acc[f] for f in FRAME0_FIELDS}


def centroids(videos: np.ndarray) -> np.ndarray:
    """The subject's centroid (x, y) in pixels per frame [B, T, 2]: pixels weighted by their distance from the
    background colour (the border's median, as the reader takes it), below 30 RGB units ignored."""
    v = videos.astype(np.float32)
    out = np.zeros((*v.shape[:2], 2))
    ys, xs = np.mgrid[0:v.shape[2], 0:v.shape[3]] + 0.5
    for b, clip in enumerate(v):
        border = np.concatenate([clip[:, 0], clip[:, -1], clip[:, :, 0], clip[:, :, -1]], axis=1).reshape(-1, 3)
        dist = np.abs(clip - np.median(border, axis=0)).sum(-1)
        weight = dist * (dist > 30) + 1e-6
        out[b, :, 0] = (xs * weight).sum((1, 2)) / weight.sum((1, 2))
        out[b, :, 1] = (ys * weight).sum((1, 2)) / weight.sum((1, 2))
    return out


def track_error(videos: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per clip, the mean distance in pixels over frames 1.. between the subject's centroid and the ground-truth
    render's (which starts from the same image and moves as prompted): a clip that continues from its first frame
    in the prompted direction at the prompted speed stays near 0; one that ignores the image starts elsewhere."""
    return np.linalg.norm(centroids(videos)[:, 1:] - centroids(truth)[:, 1:], axis=-1).mean(axis=1)


def per_clip(videos: np.ndarray, prompts: list[str], truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per clip: the track error (px) and whether the reader reads the prompted direction and speed (0/1)."""
    reads = [toyworld.read_clip(v) for v in videos]
    wants = [toyworld.parse_caption(q) for q in prompts]
    return {"track_error_px": track_error(videos, truth),
            **{f"{f}_correct": np.array([float(r[f] == getattr(w, f)) for r, w in zip(reads, wants)])
               for f in ("direction", "speed")}}


def paired_vs(mine: dict[str, np.ndarray], teacher: dict[str, np.ndarray]) -> dict:
    """mine − teacher per clip, the mean with its 95% t interval over the clips (one per prompt)."""
    out = {}
    for key, values in mine.items():
        d = clustered_mean_interval(values - teacher[key])
        out[key] = {"value": d["value"], "ci95": d["ci95"], "n": d["n"]}
    return out


def score(videos: np.ndarray, images: np.ndarray, prompts: list[str], still: list[int], truth: np.ndarray) -> dict:
    track = track_error(videos, truth)
    psnr = first_frame_psnr(torch.from_numpy(videos), torch.from_numpy(images)).numpy()
    is_static, motion = static_clips(torch.from_numpy(videos[still]), flow="farneback") if still else \
        (torch.zeros(0, dtype=torch.bool), torch.zeros(0))
    return {"first_frame_psnr_db": {"mean": float(psnr.mean()), "median": float(np.median(psnr)),
                                    "min": float(psnr.min())},
            "frame0_read": frame0_accuracy(videos, prompts),
            "track_error_px": {"mean": float(track.mean()), "median": float(np.median(track))},
            "clip_read": toyworld.attribute_accuracy(videos, prompts),
            "still_subjects_static": float(is_static.double().mean()),
            "still_subjects_motion_px": [round(float(m), 3) for m in motion]}


def sample(teacher, cfg, prompts: list[str], seeds: list[int], images: list | None, steps: int, sampler: str,
           batch: int) -> np.ndarray:
    v, s = cfg.video, cfg.sampler
    out = []
    for i in range(0, len(prompts), batch):
        lat = teacher.sample(prompts[i:i + batch], steps=steps, sampler=sampler, guidance=s.guidance, shift=s.shift,
                             grid=s.grid, seed=seeds[i:i + batch], negative=cfg.negative_prompt, frames=v.frames,
                             height=v.height, width=v.width,
                             images=None if images is None else images[i:i + batch])
        out.append(teacher.decode(lat).numpy())
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="tiny-wan-ti2v", help="the image-conditioned teacher (config or source)")
    p.add_argument("--base", default="", help="also sample the text-to-video teacher it was fine-tuned from, e.g. "
                   "tiny-wan ('': skip; its reader figures are docs/tiny-teacher.json's)")
    p.add_argument("--text-only", action="store_true", help="also sample the teacher from text alone (no image)")
    p.add_argument("--suite", default="toyworld-i2v-held-out")
    p.add_argument("--docs", type=Path, default=Path("docs"))
    p.add_argument("--max-prompts", type=int, default=0, help="the suite's first N prompts only (0: all; a dry run)")
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--device", default="cpu")
    p.add_argument("--student", action="append", default=[], metavar="NAME=FOLDER",
                   help="also score a student export at its own sampler, paired against the teacher's 50 steps")
    p.add_argument("--out-name", default="tiny-teacher-i2v", help="the stem of the JSON and grid under --docs")
    args = p.parse_args(argv)
    started = time.time()
    suite, path = load_suite(args.suite, [f"max_prompts={args.max_prompts}"] if args.max_prompts else [])
    if suite.first_images is None:
        p.error(f"suite {args.suite!r} ({path}) has no first_images: it is a text-to-video suite")
    prompts = suite_prompts(suite, path)
    seeds = [clip_seed(suite, i, 0) for i in range(len(prompts))]
    images = first_images_for(suite, prompts)  # frame 0 of each prompt's render at that very seed
    pil = [Image.fromarray(im) for im in images]
    still = [i for i, q in enumerate(prompts) if toyworld.STILL in q.split()]
    cfg = load_teacher_config(args.teacher)
    teacher = load_teacher(cfg, args.device)
    if teacher.image_input == "none":
        p.error(f"teacher {args.teacher!r} takes no image")

    results, clips, seconds = {}, {}, {}
    truth = np.stack([toyworld.render(toyworld.parse_caption(q), s, suite.frames, suite.height, suite.width)
                      for q, s in zip(prompts, seeds)])
    assert np.array_equal(truth[:, 0], images), "the suite's first images are frame 0 of these renders"
    clips["ground-truth render"] = truth
    clips["VAE round trip of the renders"] = teacher.decode(teacher.encode_video(torch.from_numpy(truth))).numpy()
    runs = {"image + text, 50 UniPC steps": (pil, 50, "unipc"),
            "image + text, 4 Euler steps": (pil, 4, "euler")}
    if args.text_only:
        runs["text only (no image), 50 UniPC steps"] = (None, 50, "unipc")
    for name, (given, steps, sampler) in runs.items():
        t0 = time.time()
        clips[name] = sample(teacher, cfg, prompts, seeds, given, steps, sampler, args.batch)
        seconds[name] = round((time.time() - t0) / len(prompts), 3)
        log(f"{name}: {seconds[name]} s per clip")
    if args.base:
        base_cfg = load_teacher_config(args.base)
        base = load_teacher(base_cfg, args.device)
        name = f"{args.base} (text-to-video, no image), 50 UniPC steps"
        t0 = time.time()
        clips[name] = sample(base, base_cfg, prompts, seeds, None, 50, "unipc", args.batch)
        seconds[name] = round((time.time() - t0) / len(prompts), 3)
    for spec in args.student:
        name, _, folder = spec.partition("=")
        if not folder:
            p.error(f"--student {spec!r}: give NAME=FOLDER")
        scfg = load_teacher_config(folder)
        student, ss = load_teacher(scfg, args.device), scfg.sampler
        t0 = time.time()
        clips[name] = sample(student, scfg, prompts, seeds, pil, ss.steps, ss.name, args.batch)
        seconds[name] = round((time.time() - t0) / len(prompts), 3)
        log(f"{name} ({ss.name}, {ss.steps} steps): {seconds[name]} s per clip")
    reference = per_clip(clips["image + text, 50 UniPC steps"], prompts, truth)
    for name, videos in clips.items():
        results[name] = score(videos, images, prompts, still, truth)
        if name in [spec.partition("=")[0] for spec in args.student] or name == "image + text, 4 Euler steps":
            results[name]["paired_vs_teacher_50"] = paired_vs(per_clip(videos, prompts, truth), reference)
        if name in seconds:
            results[name]["seconds_per_clip"] = seconds[name]
        r = results[name]
        c, f = r["clip_read"], r["frame0_read"]
        log(f"{name:58s} psnr {r['first_frame_psnr_db']['mean']:5.1f} dB | frame 0: shape {f['shape']:.2f} "
            f"colour {f['colour']:.2f} | track {r['track_error_px']['mean']:4.1f} px | clip: all {c['all']:.2f} shape {c['shape']:.2f} colour {c['colour']:.2f} "
            f"dir {c['direction']:.2f} speed {c['speed']:.2f} | still kept still {r['still_subjects_static']:.2f}")

    show = list(range(0, len(prompts), max(1, len(prompts) // 5)))[:5]
    rows, labels = [], []
    for i in show:
        for name, tag in (("ground-truth render", "truth"), ("image + text, 50 UniPC steps", "i2v 50 steps"),
                          ("image + text, 4 Euler steps", "i2v 4 steps")):
            rows.append(clips[name][i])
            labels.append(f"{tag}: {prompts[i]}")
    args.docs.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame_grid(rows, n_frames=5, labels=labels, scale=2)).save(args.docs / f"{args.out_name}-grid.png")
    report = {"teacher": args.teacher, "base": args.base, "suite": suite.name, "n_clips": len(prompts),
              "n_still": len(still), "seeds": seeds, "guidance": cfg.sampler.guidance, "shift": cfg.sampler.shift,
              "device": str(teacher.device), "torch_threads": torch.get_num_threads(),
              "minutes": round((time.time() - started) / 60, 1), "results": results}
    (args.docs / f"{args.out_name}.json").write_text(json.dumps(report, indent=1) + "\n")
    log(f"wrote {args.docs / (args.out_name + '.json')} in {report['minutes']} min")


if __name__ == "__main__":
    main()
