#!/usr/bin/env python
"""Summarise a GPU sweep of the tiny teacher's DiT into one JSON file for docs/.

    python scripts/gpu_sweep_summary.py SWEEP_DIR --variant A="--dit-batch 64 ..." --variant B="..." \
        --what "..." --out docs/tiny-teacher-gpu-sweep-2.json

SWEEP_DIR holds what a device call packed: nvidia-smi.txt, versions.txt and one folder per variant with the
training log (train.log, from scripts/train_tiny_teacher.py) and the report (tiny-teacher.json, from
scripts/tiny_teacher_report.py). The losses and paces are read from the log's "dit step N/M loss L ... (Ss/step)"
lines; nothing is computed here that the run did not print.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

STEP = re.compile(r"dit step (\d+)/(\d+) loss ([0-9.]+) lr \S+ \(([0-9.]+)s/step\)")


def read_log(log: Path) -> dict:
    text = log.read_text(errors="replace").replace("\r", "\n")
    rows = [(int(m[1]), int(m[2]), float(m[3]), m[4]) for m in STEP.finditer(text)]
    if not rows:
        raise SystemExit(f"{log}: no 'dit step N/M loss L' lines; is it a train_tiny_teacher.py log?")
    paces = sorted({pace for *_, pace in rows})
    return {"dit_steps": rows[-1][1], "s_per_step": paces, "loss_at_last_logged_step": rows[-1][2],
            "loss_by_1000": {str(s): loss for s, _, loss, _ in rows if s % 1000 == 0}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", type=Path)
    p.add_argument("--variant", action="append", required=True, metavar="NAME=ARGS",
                   help="a variant's folder name and the training arguments it ran with")
    p.add_argument("--what", required=True, help="one sentence: what was run, where, when")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    summary = {"what": args.what,
               "device": (args.sweep / "nvidia-smi.txt").read_text().splitlines()[-1].strip(),
               "versions": (args.sweep / "versions.txt").read_text().strip(), "variants": {}}
    for spec in args.variant:
        name, _, train_args = spec.partition("=")
        folder = args.sweep / name
        if not folder.is_dir():
            raise SystemExit(f"--variant {spec!r}: no folder {folder}")
        report = json.loads((folder / "tiny-teacher.json").read_text())
        summary["variants"][name] = {"args": train_args, **read_log(folder / "train.log"), "report": report}
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
