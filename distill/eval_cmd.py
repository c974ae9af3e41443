"""`distill eval` and `distill gate`: suite files resolved into prompts and real clips, then the eval harness."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distill import toyworld
from distill.core.config import CONFIG_DIR, ConfigError, load
from distill.teachers.config import load_teacher_config


def load_suite(ref: str, overrides: list[str] = ()):
    """A suite by file or by name under configs/eval/suites/."""
    from distill.eval.suite import SuiteConfig

    path = Path(ref)
    if path.suffix not in (".yaml", ".yml"):
        path = CONFIG_DIR / "eval" / "suites" / f"{ref}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in (CONFIG_DIR / "eval" / "suites").glob("*.yaml"))
            raise ConfigError(f"no eval suite {ref!r}; give a YAML file or one of {known}")
    return load(SuiteConfig, path, overrides), path


def suite_prompts(suite, path: Path) -> list[str]:
    prompts = list(suite.prompts)
    if suite.toyworld_split:
        prompts += toyworld.prompt_suite(suite.toyworld_split).prompts
    if suite.prompts_file:
        file = (path.parent / suite.prompts_file) if not Path(suite.prompts_file).is_absolute() else Path(suite.prompts_file)
        if not file.is_file():
            raise ConfigError(f"{path}: key 'prompts_file': {str(file)!r} does not exist")
        prompts += [line.strip() for line in file.read_text().splitlines() if line.strip()]
    if suite.max_prompts:
        # an even spread over the list rather than its head, so every attribute stays represented
        step = max(1, len(prompts) // suite.max_prompts)
        prompts = prompts[::step][:suite.max_prompts]
    if not prompts:
        raise ConfigError(f"{path}: the suite resolved to no prompts")
    return prompts


def real_clips_for(suite):
    if suite.real != "toyworld":
        return None

    def render(prompt: str, seed: int):
        return toyworld.render(toyworld.parse_caption(prompt), seed, suite.frames, suite.height, suite.width)
    return render


def add_parsers(sub) -> None:
    p = sub.add_parser("eval", help="score models against the teacher on a prompt suite",
                       description="Sample the teacher and every --model on the same prompts and seeds, compute "
                                   "CLIP adherence, FVD (vs teacher, vs real, noise floor), flicker, diversity and "
                                   "speed with intervals, and write eval.json, summary.md and report.html.\n"
                                   "Models: teacher@4 (the teacher, 4 Euler steps, its CFG), teacher@8:unipc, "
                                   "NAME=FOLDER@4 (a Wan folder, e.g. a student export; no CFG unless "
                                   "guidance=G), NAME=FOLDER@2:euler,guidance=1,shift=5",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="toyworld-held-out", help="suite YAML or name under configs/eval/suites")
    p.add_argument("--teacher", default="tiny-wan", help="teacher config, name, folder or builtin:NAME")
    p.add_argument("--model", action="append", default=[], help="a model to score (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="run folder for eval.json, summary.md, report.html")
    p.add_argument("--cache", type=Path, help="clip cache (default OUT/cache); shareable between runs")
    p.add_argument("overrides", nargs="*", help="suite overrides key=value, e.g. seeds_per_prompt=2")
    p.set_defaults(func=cmd_eval)

    g = sub.add_parser("gate", help="pass/fail an eval.json against a policy (exit 0 pass, 1 regression, 2 error)",
                       description="Apply a gate policy to eval.json: absolute bounds, bounds relative to the "
                                   "teacher or to a baseline eval.json, interval-aware. Writes gate.json, "
                                   "gate.junit.xml and gate.md. Exit 0 on pass, 1 on a regression, 2 on an error.")
    g.add_argument("--current", type=Path, required=True)
    g.add_argument("--baseline", type=Path)
    g.add_argument("--policy", type=Path, required=True, help="e.g. configs/eval/gates/toyworld.yaml")
    g.add_argument("--out", type=Path, help="where gate.* go (default: next to --current)")
    g.set_defaults(func=cmd_gate)


def cmd_eval(args) -> int:
    from distill.eval.suite import parse_model_spec

    suite, path = load_suite(args.suite, args.overrides)
    prompts = suite_prompts(suite, path)
    teacher_cfg = load_teacher_config(args.teacher)
    try:
        specs = [parse_model_spec(m) for m in args.model]
    except Exception as err:  # pydantic errors for a bad sampler name etc. carry the model text
        raise ConfigError(str(err)) from None

    from distill.eval.harness import Harness
    from distill.eval.report import summary_markdown, write_outputs
    from distill.teachers.resolve import resolve
    from distill.teachers.wan import check_video_size, video_factors

    for spec in specs:  # refuse a bad folder or size before any sampling
        check_video_size(suite.frames, suite.height, suite.width,
                         *video_factors(resolve(teacher_cfg.source if spec.source == "teacher" else spec.source)))
    teacher_cfg = _join_ranks(teacher_cfg)
    harness = Harness(suite, teacher_cfg, prompts, args.out, args.cache, real_clips_for(suite))
    result = harness.run(specs)
    if not result:  # a non-zero rank under torchrun
        return 0
    paths = write_outputs(result, args.out, harness.videos)
    print(summary_markdown(result))
    for p in paths:
        print(p, file=sys.stderr)
    return 0


def _join_ranks(teacher_cfg):
    """Under torchrun: join the process group (gloo on CPU, NCCL on GPU), one GPU per local rank."""
    import os

    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return teacher_cfg
    cuda = torch.cuda.is_available() and teacher_cfg.device in ("auto", "cuda")
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return teacher_cfg.model_copy(update={"device": f"cuda:{local}"})
    return teacher_cfg


def cmd_gate(args) -> int:
    from distill.eval.gate import run_gate

    return run_gate(args.current, args.baseline, args.policy, args.out or args.current.parent)
