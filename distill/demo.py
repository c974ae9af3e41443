"""`distill demo`: the main job end to end on the built-in teacher.

    1. distil a 4-step consistency student   (configs/recipes/consistency-tiny.yaml, 2 ranks under DeepSpeed)
    2. export it as a diffusers Wan folder
    3. post-train a 1-step APT student from it (configs/recipes/apt-tiny.yaml, 2 ranks)
    4. export it
    5. score the 50-step teacher, the teacher at 4 and 1 Euler steps, the consistency student at 4 and 1 steps and
       the APT student at 1 step on the toy world's held-out suite: eval.json, summary.md, report.html

Each stage is skipped when its output is complete and continued when it is partial (training resumes from its
latest checkpoint; the eval's per-clip cache keeps finished clips), so interrupting the demo and running it again
continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from distill.core.config import CONFIG_DIR

STAGES = ("consistency", "apt", "eval")


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="distil, post-train and score students of the built-in teacher (make demo)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--nproc", type=int, default=2, help="training ranks (default 2)")
    p.add_argument("--fast", action="store_true", help="a few steps per stage: checks the plumbing, not quality")
    p.set_defaults(func=cmd_demo)


def _say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _final_meta(run: Path) -> tuple[Path, dict] | None:
    """The run's latest checkpoint folder and its meta.json, or None before its first checkpoint."""
    from distill.checkpoint import find

    if not (run / "checkpoints" / "latest").is_file():
        return None
    folder = find(run)
    return folder, json.loads((folder / "meta.json").read_text())


def _check_teacher(run: Path, folder: Path, meta: dict, cfg) -> None:
    """A finished or partial stage is reused only when it was distilled from today's teacher weights."""
    from distill.checkpoint import check_teacher
    from distill.teachers.config import load_teacher_config
    from distill.core.hashing import checkpoint_hash
    from distill.teachers.resolve import resolve

    tcfg = load_teacher_config(cfg.teacher)
    check_teacher(folder, meta, checkpoint_hash(resolve(tcfg.source, tcfg.revision)),
                  f"demo (pass another --out, or remove {run})")


def _train(name: str, config: Path, run: Path, overrides: list[str], nproc: int) -> None:
    from distill.train_config import load_train_config

    cfg = load_train_config(config, [*overrides, f"out={run}"])
    final = _final_meta(run)
    done = None
    if final is not None:
        _check_teacher(run, *final, cfg)
        done = final[1]["step"]
    if done is not None and done >= cfg.train.steps:
        _say(f"{name}: done already ({run}, step {done})")
        return
    resume = ["--resume", "latest"] if done is not None else []
    _say(f"{name}: training {cfg.train.steps} steps on {nproc} ranks"
         + (f", resuming from step {done}" if done else "") + f" -> {run}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "distill.cli", "train", str(config), *overrides, f"out={run}", *resume]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("DISTILL_THREADS_PER_RANK", "1")}
    subprocess.run(cmd, check=True, env=env)


def _export(run: Path, out: Path) -> None:
    from distill.export import export

    if (out / "model_index.json").is_file():
        _say(f"export: done already ({out})")
        return
    _say(f"export: {run} -> {out}")
    export(run, out)


def cmd_demo(args) -> int:
    out: Path = args.out
    start = time.perf_counter()
    recipes = CONFIG_DIR / "recipes"
    data = [f"data.cache_dir={out / 'data-cache'}"]
    fast = ["train.steps=4", "train.checkpoint_every=2", "train.validate_every=null", "data.size=32"] if args.fast else []

    cd_run, apt_run = out / "consistency", out / "apt"
    _train("consistency", recipes / "consistency-tiny.yaml", cd_run, [*data, *fast], args.nproc)
    _export(cd_run, cd_run / "export")
    apt_fast = ["recipe.alarms.every=2"] if args.fast else []
    _train("apt", recipes / "apt-tiny.yaml", apt_run,
           [*data, *fast, *apt_fast, f"student.init={cd_run / 'export'}"], args.nproc)
    _export(apt_run, apt_run / "export")

    _say("eval: the teacher, its naive few-step baselines and both students on the held-out suite")
    from distill.cli import main as cli

    models = ["teacher@4", "teacher@1", f"cd-4step={cd_run / 'export'}@4", f"cd-1step={cd_run / 'export'}@1",
              f"apt-1step={apt_run / 'export'}@1"]
    argv = ["eval", "--suite", "toyworld-held-out", "--teacher", "tiny-wan", "--out", str(out)]
    for m in models:
        argv += ["--model", m]
    if args.fast:
        argv += ["max_prompts=6", "diversity.prompts=2", "diversity.seeds=2", "speed.clips=1", "speed.warmup=0",
                 "bootstrap=50"]
    code = cli(argv)
    _say(f"demo finished in {(time.perf_counter() - start) / 60:.1f} min: {out / 'summary.md'}, "
         f"{out / 'report.html'}, {out / 'eval.json'}")
    return code
