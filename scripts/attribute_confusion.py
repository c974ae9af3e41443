#!/usr/bin/env python
"""Where a teacher misses an attribute: the toy world's reader on many clips of the held-out prompts, tallied by
the prompted value against the value read back, and the misses broken down by the clip's other attributes.

    python scripts/attribute_confusion.py --teacher builtin:tiny-wan --seeds 4 --field colour --field shape \
        --out conf.json

Each held-out prompt is sampled with `--seeds` seeds (seed s of prompt i is 1000·s + i, so a run with more seeds
extends one with fewer) at the teacher's own sampler settings. `--teacher` may be given more than once: every
teacher then draws the same prompts with the same seeds. The renders of the same prompts are read too (`truth`):
a miss there is the reader's, not the teacher's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from distill import toyworld  # noqa: E402
from distill.teachers.config import load_teacher_config  # noqa: E402
from distill.teachers.wan import WanTeacher  # noqa: E402
from scripts.tiny_teacher_report import sample_clips  # noqa: E402


def tally(videos: np.ndarray, prompts: list[str], field: str) -> dict:
    """{"accuracy", "confusion": {prompted: {read: n}}, "misses_by": {other field: {value: [misses, clips]}}}."""
    confusion: dict = defaultdict(Counter)
    misses_by: dict = {f: defaultdict(lambda: [0, 0]) for f in ("shape", "colour", "background", "direction")
                       if f != field}
    hits = 0
    for video, prompt in zip(videos, prompts):
        asked = toyworld.parse_caption(prompt)
        want, got = getattr(asked, field), toyworld.read_clip(video)[field]
        confusion[want][str(got)] += 1
        hits += got == want
        for other, row in misses_by.items():
            cell = row[getattr(asked, other)]
            cell[0] += got != want
            cell[1] += 1
    return {"accuracy": hits / len(prompts), "clips": len(prompts),
            "confusion": {k: dict(v) for k, v in confusion.items()},
            "misses_by": {k: dict(v) for k, v in misses_by.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", action="append", required=True, help="a teacher ref or folder (repeatable)")
    p.add_argument("--field", action="append", choices=toyworld.FIELDS, help="repeatable (default: colour, shape)")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--prompts", type=int, default=0, help="only the first N held-out prompts (0: all)")
    p.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE",
                   help="only the prompts with this attribute (repeatable), e.g. --where colour=green")
    p.add_argument("--split", default="held_out", choices=("held_out", "train"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a teacher config override for every teacher, e.g. --set sampler.guidance=3")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    fields = args.field or ["colour", "shape"]

    base = toyworld.prompt_suite(args.split).prompts
    for cond in args.where:
        field, _, value = cond.partition("=")
        if field not in toyworld.FIELDS or value not in toyworld.VALUES[field]:
            raise SystemExit(f"--where {cond!r}: want FIELD=VALUE with FIELD one of {toyworld.FIELDS} "
                             f"and VALUE one of that field's values")
        base = [q for q in base if getattr(toyworld.parse_caption(q), field) == value]
    base = base[:args.prompts or None]
    if not base:
        raise SystemExit(f"no {args.split} prompt matches {args.where}")
    prompts = [q for s in range(args.seeds) for q in base]
    seeds = [1000 * s + i for s in range(args.seeds) for i in range(len(base))]
    truth = np.stack([toyworld.render(toyworld.parse_caption(q), s) for q, s in zip(prompts, seeds)])
    out = {"suite": f"toyworld/{args.split}", "where": args.where, "overrides": args.set, "fields": fields, "seeds_per_prompt": args.seeds,
           "seed_rule": "1000*s + i", "device": args.device,
           "truth": {f: tally(truth, prompts, f) for f in fields}, "teachers": {}}
    for ref in args.teacher:
        cfg = load_teacher_config(ref, args.set)
        teacher = WanTeacher.from_pretrained(cfg.source, dtype=cfg.dtype, device=args.device,
                                             max_sequence_length=cfg.max_sequence_length)
        started = time.time()
        clips = sample_clips(teacher, cfg, prompts, seeds, cfg.sampler.steps, cfg.sampler.name, args.batch)
        result = {f: tally(clips, prompts, f) for f in fields}
        result["seconds"] = round(time.time() - started, 1)
        out["teachers"][ref] = result
        print(f"{ref}: {len(prompts)} clips in {result['seconds']} s", flush=True)
        for f in fields:
            r = result[f]
            print(f"  {f} {r['accuracy']:.3f}\n    confusion {r['confusion']}\n    misses by {r['misses_by']}",
                  flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}; the renders read", {f: round(out["truth"][f]["accuracy"], 3) for f in fields})


if __name__ == "__main__":
    main()
