#!/usr/bin/env python
"""What a VAE decoder trained further does to the tiny teacher's still subjects, measured side by side.

    python scripts/decoder_trial.py --steps 400 --work runs/decoder-trial                  # stage 2, trained longer
    python scripts/decoder_trial.py --steps 400 --work runs/decoder-trial --still-guidance 1.5 2 3 4  # and a sweep

docs/tiny-teacher.md: VBench's static filter keeps 4 of the 9 held-out still prompts' clips of the shipped teacher at
50 steps, and the VAE's own round trip of the still renders 6 of 9: is the cap the decoder's or the DiT's? The
shipped decoder (stage 2 of scripts/train_tiny_teacher.py: 200 steps on whole 17-frame clips, encoder frozen) trains
`--steps` more here, from where it shipped, with that stage's own loop and loss (`--temporal-weight` adds its
frame-to-frame term); the encoder stays frozen, so the latents, and with them the DiT, are the shipped ones. Then the
same latents are decoded by both decoders: the VAE round trip of the 87 held-out renders, and the teacher's 50-step
UniPC clips of the 87 held-out prompts (seed i for prompt i, CFG and shift of its config, as
scripts/tiny_teacher_report.py samples them). Every clip is read back with the toy-world reader, and the 9 still
prompts' clips go through VBench's static filter (Farnebäck flow in place of RAFT). The shipped decoder's row must
repeat the report's figures (docs/tiny-teacher.json): it is printed beside them. `--still-guidance` adds the still
prompts alone at other CFG scales and seeds, through both decoders.

The teacher in teachers/builtin/ is not changed. A new decoder is a new teacher: every student, eval baseline and
gate-calibration trial measured on this one would be measured again. Resumable (re-run the command; the decoder's
checkpoints are under --work). Writes --work/report.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from distill import toyworld  # noqa: E402
from distill.eval.flicker import static_clips  # noqa: E402
from distill.teachers.config import load_teacher_config  # noqa: E402
from distill.teachers.wan import WanTeacher  # noqa: E402
from scripts.train_tiny_teacher import build_parser, finetune_decoder  # noqa: E402


def still_score(clips: np.ndarray, prompts: list[str]) -> dict:
    """Still prompts' clips [B, T, H, W, 3] through VBench's static filter, with each subject's track (the toy
    world's reader): how many the filter keeps, by shape, and how far the kept and the rejected subjects stray."""
    is_static, motion = static_clips(torch.from_numpy(clips), flow="farneback")
    keep = [bool(k) for k in is_static]
    tracks = [toyworld.subject_track(c) for c in clips]
    drift = [t["drift_px"] for t in tracks]
    by_shape: dict = {}
    for k, prompt in zip(keep, prompts):
        row = by_shape.setdefault(toyworld.parse_caption(prompt).shape, [0, 0])
        row[0], row[1] = row[0] + k, row[1] + 1

    def median(values: list[float]) -> float | None:
        return round(float(np.median(values)), 2) if values else None

    return {"n": len(keep), "still_subjects_static": sum(keep) / len(keep), "static": keep,
            "static_by_shape": by_shape, "still_subjects_motion_px": [round(float(m), 3) for m in motion],
            "subject_drift_px": [round(d, 2) for d in drift],
            "subject_area_ratio": [round(t["area_ratio"], 2) for t in tracks],
            "median_drift_px_kept": median([d for d, k in zip(drift, keep) if k]),
            "median_drift_px_rejected": median([d for d, k in zip(drift, keep) if not k])}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="builtin:tiny-wan")
    p.add_argument("--steps", type=int, default=400, help="decoder steps beyond the shipped ones")
    p.add_argument("--temporal-weight", type=float, default=0.0,
                   help="stage 2's frame-to-frame L1 term (0: the shipped loss)")
    p.add_argument("--lr", type=float, default=None, help="decoder learning rate (default: stage 2's)")
    p.add_argument("--seed", type=int, default=1, help="the training clips' seed (stage 2 shipped with 0: the same "
                                                       "clips again)")
    p.add_argument("--work", type=Path, default=Path("runs/decoder-trial"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=14, help="clips sampled at once")
    p.add_argument("--still-guidance", type=float, nargs="*", default=[],
                   help="also sample the still prompts at these CFG scales, --still-seeds seeds each (seed "
                        "1000 s + i for prompt i), and put both decoders' clips through the static filter")
    p.add_argument("--still-seeds", type=int, default=4)
    a = p.parse_args(argv)
    started = time.time()
    cfg = load_teacher_config(a.teacher)
    teacher = WanTeacher.from_pretrained(cfg.source, dtype=cfg.dtype, device=a.device,
                                         max_sequence_length=cfg.max_sequence_length)
    shipped = teacher.vae
    trained = copy.deepcopy(shipped)
    stage = build_parser().parse_args([])  # stage 2's defaults: batch, learning rate, object weight
    stage.decoder_steps, stage.decoder_temporal_weight = a.steps, a.temporal_weight
    stage.seed, stage.device = a.seed, a.device
    if a.lr is not None:
        stage.decoder_lr = a.lr
    a.work.mkdir(parents=True, exist_ok=True)
    finetune_decoder(trained, stage, a.work)
    train_minutes = (time.time() - started) / 60

    prompts = toyworld.prompt_suite("held_out").prompts
    seeds = list(range(len(prompts)))
    still = [i for i, q in enumerate(prompts) if toyworld.STILL in q.split()]
    truth = np.stack([toyworld.render(toyworld.parse_caption(q), s) for q, s in zip(prompts, seeds)])
    z_truth = teacher.encode_video(torch.from_numpy(truth))  # the encoder is frozen: one encoding serves both
    v = cfg.video

    def sample(suite: list[str], suite_seeds: list[int], guidance: float) -> torch.Tensor:
        return torch.cat([
            teacher.sample(suite[i:i + a.batch], steps=50, sampler="unipc", guidance=guidance,
                           shift=cfg.sampler.shift, seed=suite_seeds[i:i + a.batch], negative=cfg.negative_prompt,
                           frames=v.frames, height=v.height, width=v.width)
            for i in range(0, len(suite), a.batch)])

    latents = sample(prompts, seeds, cfg.sampler.guidance)
    still_prompts = [prompts[i] for i in still for _ in range(a.still_seeds)]
    still_seeds = [1000 * s + i for i in still for s in range(a.still_seeds)]
    still_latents = {g: sample(still_prompts, still_seeds, g) for g in a.still_guidance}
    label = f"decoder +{a.steps} steps" + (f", temporal weight {a.temporal_weight:g}" if a.temporal_weight else "")
    results = {}
    for name, vae in (("shipped decoder", shipped), (label, trained)):
        teacher.vae = vae.eval()
        results[name] = {}
        for what, lat in (("VAE round trip of the renders", z_truth), ("teacher@50 unipc cfg", latents)):
            clips = teacher.decode(lat).numpy()  # the reader over all 87, the static filter over the 9 still
            results[name][what] = {**toyworld.attribute_accuracy(clips, prompts),
                                   **still_score(clips[still], [prompts[i] for i in still])}
        for g, lat in still_latents.items():
            results[name][f"still prompts x {a.still_seeds} seeds, 50 unipc steps, guidance {g:g}"] = still_score(
                teacher.decode(lat).numpy(), still_prompts)
    teacher.vae = shipped
    report = {"teacher": a.teacher, "suite": "toyworld/held_out", "n_clips": len(prompts), "n_still": len(still),
              "seeds": seeds, "still_seeds": still_seeds, "decoder_steps_added": a.steps,
              "temporal_weight": a.temporal_weight, "decoder_lr": stage.decoder_lr,
              "decoder_batch": stage.decoder_batch, "training_seed": a.seed,
              "train_minutes": round(train_minutes, 1), "torch_threads": torch.get_num_threads(),
              "results": results}
    (a.work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    shipped_report = Path(__file__).resolve().parent.parent / "docs" / "tiny-teacher.json"
    if a.teacher == "builtin:tiny-wan" and shipped_report.exists():
        r = json.loads(shipped_report.read_text())["results"]
        print(f"docs/tiny-teacher.json (the report): round trip still kept still "
              f"{r['VAE round trip of the renders']['still_subjects_static']:.2f}, 50 steps all "
              f"{r['teacher@50 unipc cfg']['all']:.3f} still {r['teacher@50 unipc cfg']['still_subjects_static']:.2f}")
    for name, rows in results.items():
        for what, s in rows.items():
            reader = (f"all {s['all']:.3f} shape {s['shape']:.2f} colour {s['colour']:.2f} dir {s['direction']:.2f} "
                      f"speed {s['speed']:.2f} palette error {s['palette_error']:.1f} ") if "all" in s else ""
            print(f"{name:22s} {what:56s} {reader}still kept still {sum(s['static'])}/{s['n']} by shape "
                  f"{s['static_by_shape']} median drift px kept {s['median_drift_px_kept']} rejected "
                  f"{s['median_drift_px_rejected']}; drift px {s['subject_drift_px']}; fastest pair px "
                  f"{s['still_subjects_motion_px']}")
    print(f"decoder trained {train_minutes:.1f} min; all done in {(time.time() - started) / 60:.1f} min")
    return report


if __name__ == "__main__":
    main()
