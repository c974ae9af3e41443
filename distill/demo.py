"""The demo: the main job end to end on the built-in teacher, as library calls (`distill demo` is its command).

    1. distil a 4-step consistency student   (configs/recipes/consistency-tiny.yaml, 2 ranks under DeepSpeed)
    2. export it as a diffusers Wan folder
    3. post-train a 1-step APT student from it (configs/recipes/apt-tiny.yaml, 2 ranks)
    4. export it
    5. score the 50-step teacher, the teacher at 4 and 1 Euler steps, the consistency student at 4 and 1 steps and
       the APT student at 1 step on the toy world's held-out suite: eval.json, summary.md, report.html

Each stage is skipped when its output is complete and continued when it is partial (training resumes from its
latest checkpoint; the eval's per-clip cache keeps finished clips), so interrupting the demo and running it again
continues where it stopped. Training runs as `torchrun ... distill train` in a child process, because it needs its
ranks; export and eval run in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from distill.core.config import CONFIG_DIR

STAGES = ("consistency", "apt", "eval")
SUITE = "toyworld-held-out"
TEACHER = "tiny-wan"
# a few steps per stage: checks the plumbing, not quality
FAST_TRAIN = ["train.steps=4", "train.checkpoint_every=2", "train.validate_every=null", "data.size=32"]
FAST_APT = ["recipe.alarms.every=2"]
FAST_SUITE = ["max_prompts=6", "seeds_per_prompt=1", "diversity.prompts=2", "diversity.seeds=2", "speed.clips=1",
              "speed.warmup=0"]


def say(text: str) -> None:
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
    from distill.core.hashing import checkpoint_hash
    from distill.teachers.config import load_teacher_config
    from distill.teachers.resolve import resolve

    tcfg = load_teacher_config(cfg.teacher)
    check_teacher(folder, meta, checkpoint_hash(resolve(tcfg.source, tcfg.revision)),
                  f"demo (pass another --out, or remove {run})")


def train_stage(name: str, config: Path, run: Path, overrides: list[str], nproc: int) -> None:
    """Train (or resume, or skip) one stage on `nproc` ranks."""
    from distill.train_config import load_train_config

    cfg = load_train_config(config, [*overrides, f"out={run}"])
    final = _final_meta(run)
    done = None
    if final is not None:
        _check_teacher(run, *final, cfg)
        done = final[1]["step"]
    if done is not None and done >= cfg.train.steps:
        say(f"{name}: done already ({run}, step {done})")
        return
    resume = ["--resume", "latest"] if done is not None else []
    say(f"{name}: training {cfg.train.steps} steps on {nproc} ranks"
        + (f", resuming from step {done}" if done else "") + f" -> {run}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "distill.cli", "train", str(config), *overrides, f"out={run}", *resume]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("DISTILL_THREADS_PER_RANK", "1")}
    proc = subprocess.run(cmd, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the {name} stage's training exited with code {proc.returncode} (its own error is "
                           f"printed above); rerun the demo to resume it from {run}")


def export_stage(run: Path, out: Path) -> None:
    from distill.export import export

    if (out / "model_index.json").is_file():
        say(f"export: done already ({out})")
        return
    say(f"export: {run} -> {out}")
    export(run, out)


def eval_stage(out: Path, models: list[str], suite_overrides: list[str]) -> dict:
    """Score `models` against the teacher on the held-out suite; writes eval.json, summary.md, report.html."""
    from distill.eval.harness import Harness
    from distill.eval.report import write_outputs
    from distill.eval.suite import load_suite, parse_model_spec, real_clips_for, suite_prompts
    from distill.teachers.config import load_teacher_config

    suite, path = load_suite(SUITE, suite_overrides)
    harness = Harness(suite, load_teacher_config(TEACHER), suite_prompts(suite, path), out, None,
                      real_clips_for(suite))
    result = harness.run([parse_model_spec(m) for m in models])
    write_outputs(result, out, harness.videos)
    return result


def run_demo(out: Path, nproc: int = 2, fast: bool = False) -> dict:
    """Every stage in turn; returns the eval result (eval.json's content)."""
    start = time.perf_counter()
    recipes = CONFIG_DIR / "recipes"
    data = [f"data.cache_dir={out / 'data-cache'}"]
    fast_train = FAST_TRAIN if fast else []

    cd_run, apt_run = out / "consistency", out / "apt"
    train_stage("consistency", recipes / "consistency-tiny.yaml", cd_run, [*data, *fast_train], nproc)
    export_stage(cd_run, cd_run / "export")
    train_stage("apt", recipes / "apt-tiny.yaml", apt_run,
                [*data, *fast_train, *(FAST_APT if fast else []), f"student.init={cd_run / 'export'}"], nproc)
    export_stage(apt_run, apt_run / "export")

    say("eval: the teacher, its naive few-step baselines and both students on the held-out suite")
    models = ["teacher@4", "teacher@1", f"cd-4step={cd_run / 'export'}@4", f"cd-1step={cd_run / 'export'}@1",
              f"apt-1step={apt_run / 'export'}@1"]
    result = eval_stage(out, models, FAST_SUITE if fast else [])
    say(f"demo finished in {(time.perf_counter() - start) / 60:.1f} min: {out / 'summary.md'}, "
        f"{out / 'report.html'}, {out / 'eval.json'}")
    return result
