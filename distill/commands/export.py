"""`distill export`: a run's student as a diffusers folder that the teacher family's stock pipeline samples in few
steps."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distill.core.paths import check_output_dir


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export", help="write a run's student as a diffusers folder that the teacher's stock pipeline samples in "
                       "few steps",
        description="Export the student of a `distill train` run (its latest checkpoint, or --checkpoint) as a "
                    "complete diffusers folder of the teacher's pipeline class: the student transformer(s) (LoRA "
                    "runs: fused into the base, and the adapter alone under lora/), the teacher's text encoder, "
                    "tokenizer and VAE, and a scheduler that does the student's consistency sampling. Example:\n"
                    "  distill export runs/cd --out runs/cd/export\n"
                    "  python -c \"from diffusers import DiffusionPipeline; "
                    "DiffusionPipeline.from_pretrained('runs/cd/export')\"",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run folder (the `out` of distill train) or one of its checkpoints/step-N folders")
    p.add_argument("--out", type=Path, required=True, help="the folder to write (must not exist, or be empty)")
    p.add_argument("--checkpoint", default="latest", help="a checkpoint name under RUN/checkpoints, e.g. step-000200 "
                                                          "(default: latest)")
    p.add_argument("--steps", type=int, help="sampling steps to record (default: the steps the student was "
                                             "distilled for)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--decoder", type=Path, metavar="PATH",
                   help="ship a distilled video decoder (a decoder folder, or the export of a decoder run) in "
                        "OUT/decoder/, checked against the teacher's latents")
    p.set_defaults(func=run)


def run(args) -> int:
    from distill.export import export

    check_output_dir(args.out)
    out = export(args.run, args.out, checkpoint=args.checkpoint, steps=args.steps, overwrite=args.overwrite,
                 decoder=args.decoder)
    print(f"exported {args.run} to {out}", file=sys.stderr)
    print(out)
    return 0
