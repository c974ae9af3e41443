#!/usr/bin/env python
"""A few-step student end to end against its 50-step teacher, side by side in one run: how much of the denoising
speed-up reaches the user once text encoding and decoding are counted, with the VAE or a distilled decoder.

    python scripts/bench_end_to_end.py --student runs/compare-grids/cd/export --decoder runs/decoder-tiny/export
    python scripts/bench_end_to_end.py --student STUDENT --decoder DECODER --repeats 5 --out /tmp/e2e.json

Per clip (batch 1, the eval's speed protocol; 17x64x64 by default), each stage timed apart:

    teacher@50   text: the text encoder on the prompt and the negative prompt (no cache); denoise: 50 steps of the
                 teacher's sampler with CFG; decode: the teacher's VAE
    student      text: cached (`CondCache`, in memory: the lookup of an embedding computed before the clock) or
                 encoded; denoise: the student's sampler and steps (its export's distill_teacher.json); decode: the
                 VAE, or the distilled decoder (whole clip, and streamed: time to its first frame)

`--compile` adds a row with the distilled decoder under torch.compile (teachers/compiling.py; the DiTs stay eager,
so the denoise-only speed-up is the same measure), its compile paid in the warm-up round.

The rounds alternate the configurations. Reported (medians over --repeats rounds): the denoise-only speed-up,
teacher denoise / student denoise, and each student configuration's end-to-end speed-up, teacher total / student
total, with its fraction of the denoise-only one (the issue's goal: at least 0.8 with cached text and the distilled
decoder); time to first frame, text + denoise + the first streamed frame. Writes a JSON (--out), prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from distill.core.env import environment  # noqa: E402
from distill.teachers.conditioning import CondCache  # noqa: E402
from distill.teachers.config import load_teacher, load_teacher_config, open_config  # noqa: E402
from distill.teachers.decoders import check_decoder, load_decoder  # noqa: E402

PROMPT = "a red disc moving left slowly on a black background"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="tiny-wan", help="teacher config name, YAML or source (default tiny-wan)")
    p.add_argument("--student", required=True, help="a student export folder (`distill export`)")
    p.add_argument("--decoder", required=True, type=Path, help="a decoder folder or a decoder run's export")
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    p.add_argument("--compile", action="store_true", help="add a row with the decoder under torch.compile")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "end_to_end.json")
    return p.parse_args(argv)


def clock(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main(argv=None) -> int:
    args = parse_args(argv)
    clip = dict(frames=args.frames, height=args.height, width=args.width)
    tcfg = load_teacher_config(args.teacher, ["device=cpu"])
    scfg = load_teacher_config(args.student, ["device=cpu"])
    family, folder = open_config(tcfg)
    factors = family.video_factors(folder)
    decoder_folder = check_decoder(args.decoder, family.latent_channels(family.dit_config(folder)),
                                   factors.temporal, factors.spatial)
    teacher, student = load_teacher(tcfg), load_teacher(scfg)
    decoder = load_decoder(decoder_folder)
    ts, ss = tcfg.sampler, scfg.sampler
    t_neg = tcfg.negative_prompt if ts.guidance > 1.0 else None
    s_neg = scfg.negative_prompt if ss.guidance > 1.0 else None
    cache = CondCache()  # in memory; filled once here, before any clock, as a warm cache is
    cache.encode(student, [PROMPT], s_neg)

    def teacher_clip() -> dict:
        text, cond = clock(lambda: teacher.encode([PROMPT], t_neg))
        denoise, z = clock(lambda: teacher.sample([PROMPT], steps=ts.steps, guidance=ts.guidance, shift=ts.shift,
                                                  seed=7, sampler=ts.name, cond=cond, **clip))
        decode, _ = clock(lambda: teacher.decode(z))
        return {"text": text, "denoise": denoise, "decode": decode}

    compiled = None
    if args.compile:
        from distill.teachers.compiling import check_compile, compile_decoder

        check_compile("cpu")
        compiled = load_decoder(decoder_folder)
        compile_decoder(compiled)

    def student_clip(cached: bool, decode_with: str) -> dict:
        text, cond = clock(lambda: cache.encode(student, [PROMPT], s_neg) if cached else student.encode([PROMPT], s_neg))
        denoise, z = clock(lambda: student.sample([PROMPT], steps=ss.steps, guidance=ss.guidance, shift=ss.shift,
                                                  seed=7, sampler=ss.name, grid=ss.grid, cond=cond, **clip))
        row = {"text": text, "denoise": denoise}
        if decode_with == "vae":
            row["decode"], _ = clock(lambda: student.decode(z))
        else:
            dec = compiled if decode_with == "compiled decoder" else decoder
            row["decode"], _ = clock(lambda: dec.decode(z))
            start = time.perf_counter()
            next(iter(dec.decode_stream(z)))
            row["first_frame"] = time.perf_counter() - start
        return row

    configs = {"teacher@50": teacher_clip,
               "student (text encoded, VAE)": lambda: student_clip(False, "vae"),
               "student (text cached, VAE)": lambda: student_clip(True, "vae"),
               "student (text cached, distilled decoder)": lambda: student_clip(True, "decoder")}
    if compiled is not None:
        configs["student (text cached, compiled distilled decoder)"] = lambda: student_clip(True, "compiled decoder")
    for run in configs.values():  # warm-up: allocator, thread pools
        run()
    times: dict[str, list[dict]] = {name: [] for name in configs}
    for _ in range(args.repeats):
        for name, run in configs.items():
            times[name].append(run())

    def med(name: str, stage: str) -> float:
        return statistics.median(r[stage] for r in times[name])

    rows = {}
    for name, runs in times.items():
        row = {stage: med(name, stage) for stage in runs[0]}
        row["total"] = statistics.median(sum(v for k, v in r.items() if k != "first_frame") for r in runs)
        rows[name] = row
    teacher_row = rows["teacher@50"]
    for name, row in rows.items():
        row["denoise_speedup"] = teacher_row["denoise"] / row["denoise"]
        row["end_to_end_speedup"] = teacher_row["total"] / row["total"]
        row["fraction_of_denoise_speedup"] = row["end_to_end_speedup"] / row["denoise_speedup"]
        if "first_frame" in row:
            row["time_to_first_frame"] = row["text"] + row["denoise"] + row["first_frame"]
    result = {"schema": "distill.bench_end_to_end/1", "teacher": tcfg.source, "student": scfg.source,
              "student_sampler": {"name": ss.name, "steps": ss.steps, "guidance": ss.guidance, "grid": ss.grid},
              "decoder": str(decoder_folder), "clip": clip, "prompt": PROMPT, "repeats": args.repeats,
              "threads": torch.get_num_threads(), "rows": rows, "runs": times, "env": environment()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"{args.repeats} alternating rounds, batch 1, {args.frames}x{args.height}x{args.width}; medians in ms")
    print("| configuration | text | denoise | decode | total | denoise speed-up | end-to-end speed-up | fraction |"
          " first frame |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        first = f"{1000 * r['time_to_first_frame']:.0f}" if "time_to_first_frame" in r else "–"
        print(f"| {name} | {1000 * r['text']:.1f} | {1000 * r['denoise']:.0f} | {1000 * r['decode']:.0f} | "
              f"{1000 * r['total']:.0f} | {r['denoise_speedup']:.1f}x | {r['end_to_end_speedup']:.1f}x | "
              f"{r['fraction_of_denoise_speedup']:.2f} | {first} |")
    print(args.out, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
