#!/usr/bin/env python
"""Sampling speed: the 50-step teacher (with CFG) against few-step students, measured side by side in one run.

    python scripts/bench_sampling.py                                   # the tiny teacher and the demo's students
    python scripts/bench_sampling.py --student cd=runs/consistency-tiny/export@4 --student apt=runs/apt-tiny/export@1
    python scripts/bench_sampling.py --shape wan-1.3b                  # a Wan-2.1-1.3B-shaped DiT, 81x480x832 (GPU)

Per model, one clip at a time (batch 1), `--warmup` untimed clips then the median of `--clips` timed ones, the
device synchronised before every clock read: end-to-end latency (text encoding + denoising + VAE decode) and
denoising alone. Speed-up = the teacher's latency / the model's, both from this run. Its bound is the NFE ratio
after the fixed costs: (text + teacher denoise + decode) / (text + teacher denoise x NFE_model / NFE_teacher +
decode), with this run's text and decode times, so "speed-up / bound" says how much of the possible gain the
sampler delivers. Speed does not depend on the weights: without --student (or with --shape wan-1.3b, random
weights) the students are the teacher's own DiT run by the consistency sampler at 4 and 1 steps, labelled so.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from distill.teachers.config import load_teacher_config  # noqa: E402
from distill.eval.harness import Candidate  # noqa: E402
from distill.eval.suite import ModelSpec  # noqa: E402
from distill.teachers.wan import WanTeacher  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="tiny-wan", help="teacher config name, YAML or source")
    p.add_argument("--student", action="append", default=[], help="NAME=FOLDER@STEPS (a distill export; repeatable)")
    p.add_argument("--clips", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--shape", choices=("tiny", "wan-1.3b"), default="tiny")
    p.add_argument("--out", type=Path, default=Path("runs/bench/sampling.json"))
    return p.parse_args()


def time_clip(teacher: WanTeacher, prompt: str, seed: int, steps: int, sampler: str, guidance: float, shift: float,
              negative: str, video) -> dict[str, float]:
    """text / denoise / decode / total seconds of one clip, timed by the eval harness's own sampler (synchronised)."""
    spec = ModelSpec(name="bench", source="bench", steps=steps, sampler=sampler, guidance=guidance, shift=shift)
    timing: dict = {}
    Candidate(spec, teacher, steps, sampler, guidance, shift, negative, "").sample(
        [prompt], [seed], video.frames, video.height, video.width, timing)
    return timing


def measure(teacher, steps, sampler, guidance, shift, negative, video, args) -> dict:
    prompt = "a red disc moving left slowly on a black background"
    runs = [time_clip(teacher, prompt, 100 + i, steps, sampler, guidance, shift, negative, video)
            for i in range(args.warmup + args.clips)][args.warmup:]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return {**med, "steps": steps, "sampler": sampler, "guidance": guidance,
            "nfe": steps * (2 if guidance > 1 else 1), "runs_total_s": [r["total_s"] for r in runs]}


def wan_shape_teacher(tmp: Path):
    """A random-weight Wan-2.1-1.3B-shaped folder (scripts/bench_train.py builds it) and its teacher config."""
    spec = importlib.util.spec_from_file_location("bench_train", REPO / "scripts" / "bench_train.py")
    bench_train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_train)
    folder = tmp / "wan-1.3b-random"
    bench_train.build_wan_folder(folder, bench_train.WAN_1_3B["num_layers"])
    cfg = {"name": "wan2.1-1.3b-shape-random", "source": str(folder), "dtype": "bfloat16",
           "sampler": {"name": "unipc", "steps": 50, "guidance": 6.0, "shift": 8.0},
           "video": {"frames": 81, "height": 480, "width": 832, "fps": 16}, "max_sequence_length": 512}
    path = tmp / "teacher.yaml"
    path.write_text(json.dumps(cfg))
    return str(path)


def default_students() -> list[str]:
    demo = REPO / "runs" / "demo"
    found = [f"cd-4step={demo / 'consistency' / 'export'}@4", f"apt-1step={demo / 'apt' / 'export'}@1"]
    return found if all(Path(s.split("=")[1].rsplit("@", 1)[0]).is_dir() for s in found) else []


def main() -> None:
    args = parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-sampling-"))
    teacher_ref = wan_shape_teacher(tmp) if args.shape == "wan-1.3b" else args.teacher
    tc = load_teacher_config(teacher_ref)
    s, v = tc.sampler, tc.video
    teacher = WanTeacher.from_pretrained(tc.source, dtype=tc.dtype, device=tc.device,
                                         max_sequence_length=tc.max_sequence_length)
    rows = {f"teacher@{s.steps} ({s.name}, CFG {s.guidance})":
            measure(teacher, s.steps, s.name, s.guidance, s.shift, tc.negative_prompt, v, args)}
    students = args.student or ([] if args.shape == "wan-1.3b" else default_students())
    if students:
        for item in students:
            name, _, rest = item.partition("=")
            folder, _, steps = rest.rpartition("@")
            model = WanTeacher.from_pretrained(folder, dtype=tc.dtype, device=tc.device,
                                               max_sequence_length=tc.max_sequence_length)
            rows[f"{name} (consistency, no CFG)"] = measure(model, int(steps), "consistency", 1.0, s.shift, "", v, args)
    else:  # speed does not depend on the weights: the teacher's DiT with the students' sampler
        for steps in (4, 1):
            rows[f"{steps}-step sampler on the teacher's DiT (no CFG)"] = measure(
                teacher, steps, "consistency", 1.0, s.shift, "", v, args)

    ref = next(iter(rows.values()))
    device = torch.cuda.get_device_name(teacher.device) if teacher.device.type == "cuda" else \
        f"cpu, {torch.get_num_threads()} threads"
    print(f"sampling, batch 1, {v.frames}x{v.height}x{v.width}, median of {args.clips} after {args.warmup} warm-up; "
          f"device: {device}")
    print(f"{'model':48s} {'NFE':>4s} {'total s':>8s} {'denoise s':>9s} {'speed-up':>8s} {'bound':>7s} "
          f"{'denoise speed-up':>16s}")
    for name, r in rows.items():
        fixed = r["text_s"] + r["decode_s"]
        bound = (fixed + ref["denoise_s"]) / (fixed + ref["denoise_s"] * r["nfe"] / ref["nfe"])
        r.update(speedup=ref["total_s"] / r["total_s"], bound=bound,
                 denoise_speedup=ref["denoise_s"] / r["denoise_s"], nfe_ratio=ref["nfe"] / r["nfe"])
        print(f"{name:48s} {r['nfe']:4d} {r['total_s']:8.3f} {r['denoise_s']:9.3f} {r['speedup']:7.2f}x "
              f"{bound:6.2f}x {r['denoise_speedup']:9.2f}x (NFE {r['nfe_ratio']:.0f}x)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": device, "shape": args.shape, "video": v.model_dump(),
                                    "torch": torch.__version__, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
