"""`distill eval`: score models against the teacher on a prompt suite (the eval harness, `distill.eval`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from distill.core.paths import check_output_dir
from distill.core.config import ConfigError
from distill.teachers.resolve import DEFAULT_TEACHER


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="score models against the teacher on a prompt suite",
                       description="Sample the teacher and every --model on the same prompts and seeds, compute "
                                   "CLIP adherence, FVD (vs teacher, vs real, noise floor), flicker, diversity and "
                                   "speed with intervals, and write eval.json, summary.md and report.html.\n"
                                   "Models: teacher@4 (the teacher, 4 Euler steps, its CFG), teacher@8:unipc, "
                                   "NAME=FOLDER@4 (a pipeline folder, e.g. a student export; no CFG unless "
                                   "guidance=G), NAME=FOLDER@2:euler,guidance=1,shift=5",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="toyworld-held-out", help="suite YAML or name under configs/eval/suites")
    p.add_argument("--teacher", default=DEFAULT_TEACHER, help="teacher config, name, folder or builtin:NAME")
    p.add_argument("--model", action="append", default=[], help="a model to score (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="run folder for eval.json, summary.md, report.html")
    p.add_argument("--cache", type=Path, help="clip cache (default OUT/cache), with the prompt embeddings in CACHE/conditioning; "
                                                 "shareable between runs")
    p.add_argument("--sequence", type=int, default=1, metavar="N",
                   help="under torchrun: split each clip's tokens over N ranks in every DiT forward (DeepSpeed-"
                        "Ulysses sequence parallelism, for clips too long for one GPU); N must divide the rank count, "
                        "every DiT's heads and the clip's tokens. Default 1: each rank samples whole clips")
    p.add_argument("--compile", action="store_true",
                   help="run every model's DiT under torch.compile (the suite key compile=true); refused, saying why, "
                        "where this device cannot compile. Compile time falls in the untimed warm-up clips")
    p.add_argument("overrides", nargs="*", help="suite overrides key=value, e.g. seeds_per_prompt=2 or "
                                                "speed.text=cached (timed clips read cached prompt embeddings)")
    p.set_defaults(func=run)


def run(args) -> int:
    from distill.eval.suite import load_suite, parse_model_spec, suite_prompts
    from distill.teachers.config import load_teacher_config

    if args.sequence < 1:
        raise ConfigError(f"--sequence must be at least 1, got {args.sequence}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world % args.sequence:
        raise ConfigError(f"--sequence={args.sequence} does not divide the job's {world} ranks (WORLD_SIZE); "
                          f"launch with torchrun --nproc_per_node {args.sequence} (or a multiple)")
    check_output_dir(args.out)
    if args.cache is not None:
        check_output_dir(args.cache, "--cache")
    suite, path = load_suite(args.suite, [*args.overrides, *(["compile=true"] if args.compile else [])])
    prompts = suite_prompts(suite, path)
    teacher_cfg = load_teacher_config(args.teacher)
    try:
        specs = [parse_model_spec(m) for m in args.model]
    except Exception as err:  # pydantic errors for a bad sampler name etc. carry the model text
        raise ConfigError(str(err)) from None
    return evaluate(suite, prompts, teacher_cfg, specs, args.out, args.cache, sequence=args.sequence)


def check_student_teacher(name: str, folder: Path, teacher_source: str, teacher_folder: Path) -> None:
    """A student exported from this teacher's name but other weights (a retrained built-in teacher, say) is scored
    against a teacher it never learned from: refused, naming both hashes. A student of another teacher name is a
    comparison the user chose and passes."""
    from distill.core.hashing import checkpoint_hash
    from distill.teachers.retired import retired_note

    path = Path(folder) / "distill_export.json"
    if not path.is_file():
        return
    try:
        made = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"--model {name}: {str(path)!r} is not valid JSON ({err})") from None
    recorded = made.get("teacher_hash") if isinstance(made, dict) else None
    if recorded is None or made.get("teacher") != teacher_source:
        return
    now = checkpoint_hash(teacher_folder)
    if recorded != now:
        raise ConfigError(f"--model {name}: {str(folder)!r} was distilled from teacher {teacher_source!r} with weights "
                          f"hash {recorded}{retired_note(recorded)}, but that teacher now hashes {now} (its weights "
                          f"changed); re-distil the student from this teacher, or evaluate against the teacher it was "
                          f"made from")


def evaluate(suite, prompts: list[str], teacher_cfg, specs, out: Path, cache: Path | None = None,
             print_summary: bool = True, sequence: int = 1) -> int:
    """Check every model's folder and clip size, run the harness (joining the process group under torchrun) and
    write eval.json, summary.md and report.html to `out`. The library path `distill demo` takes too."""
    from distill.eval.harness import Harness
    from distill.eval.report import summary_markdown, write_outputs
    from distill.eval.suite import real_clips_for
    from distill.teachers.resolve import TeacherNotFound, open_teacher

    teacher_folder = None
    for spec in specs:  # refuse a bad folder or size before any sampling
        teacher = spec.source == "teacher"
        try:
            family, folder = open_teacher(teacher_cfg.source if teacher else spec.source,
                                          teacher_cfg.revision if teacher else None,
                                          teacher_cfg.family if teacher else None)
        except TeacherNotFound as err:  # say which --model (its folder is named in the message)
            if teacher:
                raise
            raise ConfigError(f"--model {spec.name}: {err}") from None
        family.check_video_size(suite.frames, suite.height, suite.width, family.video_factors(folder))
        if not teacher:
            if teacher_folder is None:
                teacher_folder = open_teacher(teacher_cfg.source, teacher_cfg.revision, teacher_cfg.family)[1]
            check_student_teacher(spec.name, folder, teacher_cfg.source, teacher_folder)
    teacher_cfg = _join_ranks(teacher_cfg)
    harness = Harness(suite, teacher_cfg, prompts, out, cache, real_clips_for(suite), sequence=sequence)
    harness.preflight(specs)  # output folders, models, detector (I3D sha256), CLIP, flow, real clips: before sampling
    result = harness.run(specs)
    if not result:  # a non-zero rank under torchrun
        return 0
    paths = write_outputs(result, out, harness.videos)
    if print_summary:
        print(summary_markdown(result))
    for p in paths:
        print(p, file=sys.stderr)
    return 0


def _join_ranks(teacher_cfg):
    """Under torchrun: join the process group (gloo on CPU, NCCL on GPU), one GPU per local rank."""
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
