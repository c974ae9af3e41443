"""Compare recipes: train each run of a compare config, export it, score every model in ONE eval against the same
teacher clips, and write `comparison.md` / `comparison.json` (`distill compare` is its command; `distill demo` is
this machinery on configs/compare/demo.yaml).

A compare config (configs/compare/*.yaml, the class `CompareConfig` below):

    teacher: NAME                      # the eval's teacher config (default: the built-in teacher's); every run
                                       # must distil this teacher
    suite: toyworld-held-out           # an eval suite (name or file), with `suite_overrides: [key=value, ...]`
    nproc: 2                           # training ranks per run (`--nproc` overrides it)
    data_cache: data-cache             # every run's data.cache_dir, under --out (null: each recipe's own)
    baselines: [teacher@4, teacher@1]  # model specs as `distill eval --model` takes them
    runs:
      first:                           # a run name: its folder is OUT/first
        recipe: RECIPE-tiny            # a file of configs/recipes/ (or a path to a recipe YAML)
        overrides: [train.steps=1500]  # key=value overrides of that recipe config
        models: {first-4step: 4, first-1step: 1}   # eval model name -> sampling steps, from OUT/first/export
        # or: {first-4step-dec: {steps: 4, decoder: "{runs.dec}/export"}}  decoded by a distilled decoder (a decoder
        # folder, or the export of a decoder run of this config) instead of the teacher's VAE
      second:
        recipe: OTHER-RECIPE-tiny
        overrides: ["student.init={runs.first}/export"]   # starts from the first run's student
        models: {second-1step: 1}

`{runs.NAME}` in an override stands for the folder of run NAME (`OUT/NAME`), so `{runs.first}/export` is its
export (configs/compare/toyworld.yaml is a real one).
A run that names another waits for it: runs train in dependency order (config order otherwise), each exported
before the next starts. An unknown run, a cycle, a missing recipe config, a bad override or a run distilled from
another teacher is refused before any work, naming the file and the key: every run's training config is validated
up front (`load_train_config`, with the run folder, the data cache and the fast overrides in).

Each run is trained (`torchrun ... distill train` in a child process, because it needs its ranks), reused when its
latest checkpoint has reached `train.steps`, and continued with `--resume latest` when it is partial. The wall time
of each training process is measured and added up, across resumes, in `RUN/compare-cost.json`; a run trained
elsewhere is "not measured". Export and eval run in this process; the eval writes eval.json, summary.md and
report.html in OUT, and its per-clip cache keeps finished clips across reruns.

`--fast` adds `fast_overrides` to every run (a few steps each: checks the plumbing, not quality), each run's own
`fast_overrides`, and `fast_suite_overrides` to the suite.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import Field, StringConstraints

from distill.core.config import CONFIG_DIR, REPO_ROOT, ConfigError, Strict, load
from distill.teachers.resolve import DEFAULT_TEACHER

COMPARE_DIR = CONFIG_DIR / "compare"
RECIPE_DIR = CONFIG_DIR / "recipes"
COST_FILE = "compare-cost.json"
SCHEMA = "distill.compare/1"
RUN_REF = re.compile(r"\{runs\.([^{}]*)\}")
# a few steps per run and a small suite: checks the plumbing, not quality
FAST_TRAIN = ["train.steps=4", "train.checkpoint_every=2", "train.validate_every=null", "data.size=32"]
FAST_SUITE = ["max_prompts=6", "seeds_per_prompt=1", "diversity.prompts=2", "diversity.seeds=2", "speed.clips=1",
              "speed.warmup=0"]

RunName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")]
ModelName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@+-]*$")]


class ModelEntry(Strict):
    steps: int = Field(ge=1)
    decoder: str | None = None  # a decoder folder or export; `{runs.NAME}` for a run's folder; None: the VAE


class RunSpec(Strict):
    recipe: str  # a file of configs/recipes/ (with or without .yaml), or a path to a recipe YAML
    overrides: list[str] = []
    fast_overrides: list[str] = []  # with --fast only, after the config's own fast_overrides
    # eval model name -> sampling steps (or steps and a distilled decoder)
    models: dict[ModelName, Annotated[int, Field(ge=1)] | ModelEntry] = {}

    def entries(self) -> dict[str, ModelEntry]:
        return {name: m if isinstance(m, ModelEntry) else ModelEntry(steps=m) for name, m in self.models.items()}


class CompareConfig(Strict):
    teacher: str = DEFAULT_TEACHER
    suite: str = "toyworld-held-out"
    suite_overrides: list[str] = []
    nproc: int = Field(2, ge=1)
    data_cache: str | None = "data-cache"  # relative to --out unless absolute; None: each recipe's data.cache_dir
    fast_overrides: list[str] = FAST_TRAIN
    fast_suite_overrides: list[str] = FAST_SUITE
    baselines: list[str] = []
    runs: dict[RunName, RunSpec] = Field(min_length=1)


@dataclass(frozen=True)
class PlannedRun:
    name: str
    recipe_file: Path
    folder: Path
    overrides: list[str]  # what `distill train` gets after the recipe file, `out=` excluded
    needs: tuple[str, ...]  # the runs it references, trained and exported before it
    cfg: object  # its validated TrainConfig
    models: dict[str, ModelEntry]  # decoders resolved to folders

    @property
    def export(self) -> Path:
        return self.folder / "export"


@dataclass(frozen=True)
class Plan:
    config: CompareConfig
    path: Path
    out: Path
    nproc: int
    fast: bool
    runs: list[PlannedRun]  # in dependency order
    specs: list  # the eval's distill.eval.suite.ModelSpec list: baselines, then each run's models
    suite_overrides: list[str]
    what: str  # the command, for messages


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


# --- the config, checked before any work ----------------------------------------------------------------------------
def resolve_config(ref: str | Path) -> Path:
    """A compare config by file, or by name under configs/compare/."""
    path = Path(ref)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"compare config {str(path)!r} does not exist")
        return path
    named = COMPARE_DIR / f"{ref}.yaml"
    if not named.is_file():
        known = sorted(p.stem for p in COMPARE_DIR.glob("*.yaml"))
        raise ConfigError(f"no compare config {str(ref)!r}; give a YAML file or one of {known}")
    return named


def recipe_file(recipe: str, origin: str) -> Path:
    for candidate in (RECIPE_DIR / recipe, RECIPE_DIR / f"{recipe}.yaml", Path(recipe)):
        if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
            return candidate
    known = sorted(p.name for p in RECIPE_DIR.glob("*.yaml"))
    raise ConfigError(f"{origin}: no recipe config {recipe!r} (neither a file of {RECIPE_DIR} nor a path to one); "
                      f"one of {known}")


def references(spec: RunSpec) -> list[str]:
    """The runs a run's overrides name with `{runs.NAME}`, in order of first mention."""
    names: list[str] = []
    for item in (*spec.overrides, *spec.fast_overrides):
        for name in RUN_REF.findall(item):
            if name not in names:
                names.append(name)
    return names


def run_order(runs: dict[str, RunSpec], origin: str) -> list[str]:
    """Runs in dependency order (config order among runs that are ready); unknown references and cycles refused."""
    needs = {}
    for name, spec in runs.items():
        needs[name] = references(spec)
        unknown = [n for n in needs[name] if n not in runs]
        if unknown:
            key = "overrides" if any(f"{{runs.{unknown[0]}}}" in item for item in spec.overrides) else "fast_overrides"
            raise ConfigError(f"{origin}: key 'runs.{name}.{key}': {{runs.{unknown[0]}}} names no run of this "
                              f"config; its runs are {list(runs)}")
    state: dict[str, str] = {}  # "visiting" | "done"

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = path[path.index(name):] + [name]
            raise ConfigError(f"{origin}: key 'runs': the runs reference each other in a cycle: "
                              + " -> ".join(cycle) + " (each waits for the next's export)")
        state[name] = "visiting"
        for n in needs[name]:
            visit(n, [*path, name])
        state[name] = "done"

    for name in runs:
        visit(name, [])
    order: list[str] = []
    while len(order) < len(runs):
        order.append(next(n for n in runs if n not in order and all(d in order for d in needs[n])))
    return order


def _substitute(items: list[str], folders: dict[str, Path]) -> list[str]:
    return [RUN_REF.sub(lambda m: str(folders[m.group(1)]), item) for item in items]


def plan(config: str | Path, overrides: list[str] = (), out: Path | None = None, nproc: int | None = None,
         fast: bool = False, what: str = "compare") -> Plan:
    """Load and check everything a comparison needs, before any work: the config, every run's training config,
    the order of the runs, the model names, the baselines, the suite and the teacher."""
    from distill.checkpoint import check_out_folder
    from distill.eval.suite import ModelSpec, load_suite, parse_model_spec
    from distill.teachers.config import load_teacher_config
    from distill.train_config import load_train_config

    path = resolve_config(config)
    cfg = load(CompareConfig, path, overrides)
    out = Path(out) if out is not None else Path("runs") / f"compare-{path.stem}"
    nproc = cfg.nproc if nproc is None else nproc
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    origin = str(path)
    try:
        teacher = load_teacher_config(cfg.teacher)
    except (ConfigError, OSError) as err:
        raise ConfigError(f"{origin}: key 'teacher': {err}") from None
    for i, text in enumerate(cfg.suite_overrides):
        if "=" not in text:
            raise ConfigError(f"{origin}: key 'suite_overrides.{i}': {text!r} is not of the form key=value")
    suite_overrides = [*cfg.suite_overrides, *(cfg.fast_suite_overrides if fast else [])]
    try:
        load_suite(cfg.suite, suite_overrides)
    except ConfigError as err:
        raise ConfigError(f"{origin}: key 'suite': {err}") from None

    order = run_order(cfg.runs, origin)
    folders = {name: out / name for name in cfg.runs}
    data = [f"data.cache_dir={out / cfg.data_cache}"] if cfg.data_cache else []  # an absolute path stays itself
    runs = []
    for name in order:
        spec = cfg.runs[name]
        where = f"{origin}: key 'runs.{name}"
        file = recipe_file(spec.recipe, f"{where}.recipe'")
        items = _substitute([*data, *spec.overrides, *((cfg.fast_overrides + spec.fast_overrides) if fast else [])],
                            folders)
        try:
            train_cfg = load_train_config(file, [*items, f"out={folders[name]}"])
        except ConfigError as err:
            # the train config's loader calls our overrides "command-line"; here they are the run's
            cause = str(err).replace("command-line override", f"an override of runs.{name}")
            raise ConfigError(f"{where}' (recipe config {_relative(file)}): {cause}") from None
        run_teacher = load_teacher_config(train_cfg.teacher)
        if (run_teacher.source, run_teacher.revision) != (teacher.source, teacher.revision):
            raise ConfigError(f"{where}': it distils teacher {train_cfg.teacher!r} ({run_teacher.source}), but the "
                              f"comparison scores against {cfg.teacher!r} ({teacher.source}); set the run's "
                              f"teacher= or the config's teacher")
        try:
            check_out_folder(folders[name])
        except ConfigError as err:
            raise ConfigError(f"{where}': its folder: {err}") from None
        runs.append(PlannedRun(name, file, folders[name], items, tuple(references(spec)), train_cfg,
                               _resolve_decoders(spec, folders, f"{where}.models")))

    specs, reference = [], f"teacher@{teacher.sampler.steps}"
    for i, text in enumerate(cfg.baselines):
        try:
            specs.append(parse_model_spec(text))
        except ValueError as err:
            raise ConfigError(f"{origin}: key 'baselines.{i}': {err}") from None
    specs += [ModelSpec(name=model, source=str(run.export), steps=m.steps, decoder=m.decoder)
              for run in runs for model, m in run.models.items()]
    seen: set[str] = set()
    for spec in specs:
        if spec.name == reference:
            raise ConfigError(f"{origin}: model {spec.name!r} is the eval's reference (the teacher at its own "
                              f"{teacher.sampler.steps} steps), which every eval scores; remove it")
        if spec.name in seen:
            raise ConfigError(f"{origin}: model name {spec.name!r} is given twice; model names must be unique")
        seen.add(spec.name)
    if not specs:
        raise ConfigError(f"{origin}: nothing to score: give `models` to a run or `baselines`")
    return Plan(cfg, path, out, nproc, fast, runs, specs, suite_overrides, what)


def _resolve_decoders(spec: RunSpec, folders: dict[str, Path], where: str) -> dict[str, ModelEntry]:
    """A run's models with `{runs.NAME}` in their decoders replaced by that run's folder; an unknown name refused."""
    out = {}
    for model, m in spec.entries().items():
        if m.decoder is not None:
            unknown = [n for n in RUN_REF.findall(m.decoder) if n not in folders]
            if unknown:
                raise ConfigError(f"{where}.{model}.decoder': {{runs.{unknown[0]}}} names no run of this config; its "
                                  f"runs are {list(folders)}")
            m = m.model_copy(update={"decoder": _substitute([m.decoder], folders)[0]})
        out[model] = m
    return out


# --- training: reuse, resume or start each run, timing every training process ---------------------------------
def _final_meta(run: Path) -> tuple[Path, dict] | None:
    """The run's latest checkpoint folder and its meta.json, or None before its first checkpoint."""
    from distill.checkpoint import complete, find

    if not complete(run / "checkpoints"):  # a lost `latest` is found again (find falls back to the newest intact)
        return None
    folder = find(run)
    return folder, json.loads((folder / "meta.json").read_text())


def _check_teacher(run: Path, folder: Path, meta: dict, cfg, what: str) -> None:
    """A finished or partial run is reused only when it was distilled from today's teacher weights."""
    from distill.checkpoint import check_teacher
    from distill.core.hashing import checkpoint_hash
    from distill.teachers.config import load_teacher_config
    from distill.teachers.resolve import resolve

    tcfg = load_teacher_config(cfg.teacher)
    check_teacher(folder, meta, checkpoint_hash(resolve(tcfg.source, tcfg.revision)),
                  f"{what} (pass another --out, or remove {run})")


def _launch(cmd: list[str], env: dict) -> int:
    """The training process; its own output goes to the terminal. A SIGTERM to this process (a scheduler's stop, a
    `kill`) is passed on to it, so torchrun stops its ranks and the run keeps its last checkpoint; once it has
    exited, the stage ends as interrupted (KeyboardInterrupt), and its time is recorded like a Ctrl-C's."""
    import signal
    import threading

    proc = subprocess.Popen(cmd, env=env)
    stopped = []

    def forward(signum, frame):
        stopped.append(signum)
        proc.send_signal(signum)

    main = threading.current_thread() is threading.main_thread()  # handlers can only be set there
    previous = signal.signal(signal.SIGTERM, forward) if main else None
    try:
        code = proc.wait()
    except BaseException:  # Ctrl-C reaches the child from the terminal too; let it stop, then stop it for sure
        try:
            proc.wait(timeout=30)
        except BaseException:
            proc.kill()
        raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    if stopped:
        raise KeyboardInterrupt(f"signal {stopped[0]}")
    return code


def read_cost(run: Path) -> dict:
    path = run / COST_FILE
    if not path.is_file():
        return {"segments": []}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err}); remove it to forget the run's measured time") from None


def _record_segment(run: Path, segment: dict) -> None:
    cost = read_cost(run)
    cost["segments"].append(segment)
    cost["wall_s"] = sum(s["wall_s"] for s in cost["segments"])
    run.mkdir(parents=True, exist_ok=True)
    tmp = run / f".{COST_FILE}.tmp"
    tmp.write_text(json.dumps(cost, indent=1) + "\n")
    os.replace(tmp, run / COST_FILE)


def train_stage(run: PlannedRun, nproc: int, what: str = "compare") -> str:
    """Train (or resume, or reuse) one run on `nproc` ranks; returns "reused", "trained" or "resumed"."""
    from distill.checkpoint import RUN_MARKERS

    folder, cfg = run.folder, run.cfg
    final = _final_meta(folder)
    done = None
    if final is not None:
        _check_teacher(folder, *final, cfg, what)
        done = final[1]["step"]
    if done is not None and done >= cfg.train.steps:
        say(f"{run.name}: done already ({folder}, step {done})")
        return "reused"
    resume = ["--resume", "latest"] if done is not None else []
    say(f"{run.name}: training {cfg.train.steps} steps on {nproc} ranks"
        + (f", resuming from step {done}" if done else "") + f" -> {folder}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "distill.cli", "train", str(run.recipe_file), *run.overrides, f"out={folder}", *resume]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("DISTILL_THREADS_PER_RANK", "1")}
    start, code = time.perf_counter(), 130  # 130: interrupted; the time it ran is counted all the same
    try:
        code = _launch(cmd, env)
    finally:
        wall = time.perf_counter() - start
        after = _final_meta(folder)
        # A process that stopped before it made the folder a run trained nothing; a file of ours there would make
        # the next `distill train` refuse the folder as someone else's.
        if any((folder / marker).exists() for marker in RUN_MARKERS):
            _record_segment(folder, {"from_step": done or 0, "to_step": after[1]["step"] if after else None,
                                     "wall_s": wall, "ranks": nproc, "exit_code": code,
                                     "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    if code != 0:
        raise RuntimeError(f"run {run.name!r}: training exited with code {code} (its own error is printed above); "
                           f"rerun to resume it from {folder}")
    return "resumed" if done else "trained"


def export_stage(run: PlannedRun) -> None:
    """Export the run's latest checkpoint; an export of an older checkpoint (the run was continued) is replaced."""
    from distill.export import export

    out = run.export
    final = _final_meta(run.folder)
    step = final[1]["step"] if final else None
    provenance = out / "distill_export.json"
    if (out / "model_index.json").is_file():
        exported = json.loads(provenance.read_text()).get("step") if provenance.is_file() else step
        if exported == step:
            say(f"export: done already ({out})")
            return
        say(f"export: {run.folder} (step {step}) -> {out}, replacing the export of step {exported}")
        export(run.folder, out, overwrite=True)
        return
    say(f"export: {run.folder} -> {out}")
    export(run.folder, out)


# --- the eval ---------------------------------------------------------------------------------------------------
def eval_stage(p: Plan) -> dict:
    """Score every model of the plan against the teacher in one eval; writes eval.json, summary.md, report.html."""
    from distill.eval.harness import Harness
    from distill.eval.report import write_outputs
    from distill.eval.suite import load_suite, real_clips_for, suite_prompts
    from distill.teachers.config import load_teacher_config

    suite, path = load_suite(p.config.suite, p.suite_overrides)
    harness = Harness(suite, load_teacher_config(p.config.teacher), suite_prompts(suite, path), p.out, None,
                      real_clips_for(suite))
    result = harness.run(p.specs)
    write_outputs(result, p.out, harness.videos)
    return result


def run_compare(p: Plan) -> tuple[dict, dict]:
    """Every run in order (train, export), then the one eval, then the comparison; returns (eval result,
    comparison record)."""
    for run in p.runs:
        train_stage(run, p.nproc, p.what)
        export_stage(run)
    n_base = sum(s.role == "baseline" for s in p.specs)
    n_students = len(p.specs) - n_base
    say(f"eval: the teacher, {n_base} baseline{'s' * (n_base != 1)} and {n_students} "
        f"student{'s' * (n_students != 1)} on the {p.config.suite} suite")
    result = eval_stage(p)
    comp = comparison(result, [run_cost(r) for r in p.runs], _relative(p.path))
    write_comparison(comp, p.out)
    return result, comp


# --- the training cost of each run --------------------------------------------------------------------------------
def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def passes_per_step(run: Path) -> dict | None:
    """DiT forward passes per optimizer step (summed over networks), from the `passes` entries the engine logs in
    RUN/metrics.jsonl; None when it logs none."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return None
    values = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if isinstance(rec, dict) and isinstance(rec.get("passes"), (int, float)):
            values.append(float(rec["passes"]))
    if not values:
        return None
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values), "n_logged": len(values)}


def run_cost(run: PlannedRun) -> dict:
    """What training the run cost, from its files: measured wall time (RUN/compare-cost.json), the step its latest
    checkpoint reached and its ranks (meta.json), and DiT passes per step (metrics.jsonl)."""
    final = _final_meta(run.folder)
    meta = final[1] if final else {}
    segments = read_cost(run.folder)["segments"]
    wall = sum(s["wall_s"] for s in segments) if segments else None
    first = min((s["from_step"] for s in segments), default=None)
    return {
        "run": run.name, "recipe_config": _relative(run.recipe_file), "recipe": run.cfg.recipe.name,
        "models": list(run.models), "builds_on": list(run.needs), "steps": run.cfg.train.steps,
        "step_reached": meta.get("step"), "ranks": meta.get("world_size"),
        "wall_s": wall,
        # "all": timed from step 0; "partial": steps before `from_step` ran elsewhere, untimed; "none": no timing
        "wall_measured": "none" if wall is None else ("all" if first == 0 else "partial"),
        "measured_from_step": first, "training_processes": len(segments),
        "passes_per_step": passes_per_step(run.folder),
    }


# --- the comparison -----------------------------------------------------------------------------------------------
# family -> (the field shown, its unit): CLIP adherence as the paired difference to the teacher, in points; the
# set distances as they are, against the teacher's clips and against real clips
QUALITY_FAMILIES = {"clipsim": ("paired_diff_vs_teacher", "points"), "fvd": ("value", ""), "kvd": ("value", ""),
                    "jedi": ("value", "")}
SET_REFERENCES = ("vs_teacher", "vs_real")


def _contains(ci, value) -> bool:
    return ci is not None and None not in ci and ci[0] <= value <= ci[1]


def _digits(*xs: float) -> int:
    """Decimals for numbers printed together (a point and its interval share one format, so rounding keeps the
    point inside its interval)."""
    big = max(abs(x) for x in xs)
    if big >= 100:
        return 1
    if big >= 1 or big == 0:
        return 2
    return min(8, 2 - math.floor(math.log10(big)))


def _num(x: float, digits: int, sign: bool = False) -> str:
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def estimate_cell(rec: dict | None, sign: bool = False) -> str:
    """`point [lo, hi]`; an interval that does not contain its point is withheld, never printed."""
    if rec is None or rec.get("value") is None:
        return "–"
    value, ci = rec["value"], rec.get("ci95")
    if rec.get("ci95_withheld"):
        return f"{_num(value, _digits(value), sign)} (interval withheld: {rec['ci95_withheld']})"
    if ci is None or None in ci:
        return f"{_num(value, _digits(value), sign)} (no interval)"
    if not _contains(ci, value):
        return f"{_num(value, _digits(value), sign)} (interval withheld: it does not contain the point)"
    d = _digits(value, *ci)
    return f"{_num(value, d, sign)} [{_num(ci[0], d, sign)}, {_num(ci[1], d, sign)}]"


def _timing_cell(rec: dict | None, unit: str) -> str:
    if rec is None or rec.get("value") is None:
        return "–"
    lo, hi = rec.get("min"), rec.get("max")
    d = _digits(rec["value"], *(x for x in (lo, hi) if x is not None))
    text = f"{_num(rec['value'], d)}{unit}"
    return text + (f" ({_num(lo, d)}–{_num(hi, d)})" if lo is not None and hi is not None else "")


def quality_columns(result: dict) -> list[dict]:
    """{metric: eval.json name, field, unit} for the table: each clip-level family's paired difference to the
    teacher, each set family against the teacher and against real clips; names read from eval.json."""
    from distill.eval.metrics import REGISTRY, family_of

    names: list[str] = []
    for model in result["models"].values():
        names += [k for k in model["metrics"] if k not in names]
    cols = []
    for k in names:
        m = family_of(k)
        if m is None or m.family not in QUALITY_FAMILIES:
            continue
        if m.level == "set" and not any(k.endswith(f":{ref}") for ref in SET_REFERENCES):
            continue
        field, unit = QUALITY_FAMILIES[m.family]
        cols.append({"metric": k, "field": field, "unit": unit, "higher_is_better": m.higher_is_better})
    families = [m.family for m in REGISTRY]
    return sorted(cols, key=lambda c: (families.index(family_of(c["metric"]).family),
                                       next((i for i, r in enumerate(SET_REFERENCES) if c["metric"].endswith(r)), -1),
                                       c["metric"]))


def _estimate(rec: dict | None) -> dict | None:
    if rec is None or rec.get("value") is None:
        return None
    out = {"value": rec["value"], "ci95": rec.get("ci95")}
    if out["ci95"] is not None and not _contains(out["ci95"], out["value"]):
        out["ci95"], out["ci95_withheld"] = None, "the interval in eval.json does not contain its point"
    return out


def comparison(result: dict, costs: list[dict], config: str = "") -> dict:
    """The comparison record (comparison.json) from an eval result and the runs' costs; every number is copied
    from eval.json or the runs' files, none computed here except sums of measured times."""
    model_run = {m: c["run"] for c in costs for m in c["models"]}
    cols = quality_columns(result)
    models = []
    for name, r in result["models"].items():
        met = r["metrics"]
        quality = {}
        for col in cols:
            key, field = col["metric"], col["field"]
            rec = met.get(key)
            quality[key] = _estimate(rec.get(field) if (rec and field != "value") else rec)
        speed = {k: {f: met[k].get(f) for f in ("value", "min", "max", "n")} if k in met else None
                 for k in ("speed.latency_s", "speed.speedup_vs_teacher")}
        models.append({"model": name, "role": r["role"], "run": model_run.get(name), "steps": r["steps"],
                       "nfe": r["nfe"], **speed, "quality": quality})
    students = {name for name, r in result["models"].items() if r["role"] == "student"}
    pairs, seen = [], set()
    for name, r in result["models"].items():
        if name not in students:
            continue
        for key, rec in r["metrics"].items():
            for other, d in (rec.get("paired_diff_vs_models") or {}).items():
                if other not in students or (key, other, name) in seen:
                    continue
                seen.add((key, name, other))
                est = _estimate(d)
                if est is None:
                    continue
                ci, lower_better = est["ci95"], not rec.get("higher_is_better", False)
                if ci is None or ci[0] <= 0 <= ci[1]:
                    verdict = "not resolved (the interval contains 0)"
                else:
                    a_better = (ci[1] < 0) == lower_better
                    verdict = f"{name if a_better else other} better"
                pairs.append({"metric": key, "a": name, "b": other, **est, "value_a": d.get("value_a"),
                              "value_b": d.get("value_b"), "higher_is_better": not lower_better,
                              "reading": verdict, "target": d.get("target"), "se": d.get("se"),
                              "n_clusters": d.get("n_clusters")})
    order = [c["metric"] for c in cols]
    pairs.sort(key=lambda p: (order.index(p["metric"]) if p["metric"] in order else len(order), p["metric"],
                              p["a"], p["b"]))
    from distill.eval.stats import adjust_family, count_intervals

    for p, adj in zip(pairs, adjust_family(pairs)):  # the pairs printed are one family (Holm, Bonferroni)
        p.update(adj)
    suite = result["suite"]
    return {"schema": SCHEMA, "config": config, "eval_schema": result.get("schema"), "suite": suite.get("name"),
            "intervals_in_eval": count_intervals(result["models"]),
            "n_clips": suite.get("n_clips"), "n_prompts": len(suite.get("prompts", [])),
            "teacher": suite.get("teacher"), "device": result.get("env", {}).get("device"),
            "quality_columns": cols,
            "models": models, "pairs": pairs, "runs": costs}


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def _wall_cell(c: dict) -> str:
    if c["wall_measured"] == "none":
        return "not measured"
    if c["wall_measured"] == "partial":
        return f"≥ {_minutes(c['wall_s'])} (steps from {c['measured_from_step']} timed)"
    return _minutes(c["wall_s"])


def _passes_cell(c: dict) -> str:
    p = c.get("passes_per_step")
    if p is None:
        return "–"
    if p["min"] == p["max"]:
        return f"{p['mean']:g}"
    return f"{p['mean']:.2f} (mean of {p['n_logged']} logged steps, {p['min']:g}–{p['max']:g})"


def comparison_markdown(comp: dict) -> str:
    qcols = comp["quality_columns"]
    cols = [c["metric"] for c in qcols]
    fields = {c["metric"]: c["field"] for c in qcols}
    head = ["model", "run", "steps", "NFE", "latency s (min–max)", "speed-up × (min–max)"]
    head += [(f"{c['metric']} − teacher" if c["field"] == "paired_diff_vs_teacher" else c["metric"])
             + (f" ({c['unit']})" if c["unit"] else "") for c in qcols]
    lines = [f"# Comparison ({comp['config']})", "",
             f"Suite `{comp['suite']}`: {comp['n_clips']} clips of {comp['n_prompts']} prompts, every model on the "
             f"same prompts and seeds; teacher `{comp['teacher']}`; device: {comp['device']}. Numbers are copied "
             f"from eval.json (schema {comp['eval_schema']}); summary.md and report.html in the same folder hold "
             "every metric, the flicker and diversity rows included.", "", "## Models", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in comp["models"]:
        row = [m["model"], m["run"] or f"({m['role']})", str(m["steps"]), str(m["nfe"]),
               _timing_cell(m["speed.latency_s"], ""), _timing_cell(m["speed.speedup_vs_teacher"], "")]
        for k in cols:
            est = m["quality"].get(k)
            if est is None and m["role"] == "teacher" and (fields[k] != "value" or k.endswith(":vs_teacher")):
                row.append("reference")
            else:
                row.append(estimate_cell(est, sign=fields[k] == "paired_diff_vs_teacher"))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Columns:", "",
              "- **run**: the run of this config the model was exported from (baselines and the reference teacher "
              "have none); **steps**: sampling steps; **NFE**: DiT forward passes per clip (two per step with "
              "classifier-free guidance).",
              "- **latency**: seconds per clip end to end (text + denoise + decode), the median of the eval's timed "
              "clips with their min–max, no interval; **speed-up**: the reference teacher's median latency over the "
              "model's, both measured in this eval on this device."]
    for c in qcols:
        if c["field"] == "paired_diff_vs_teacher":
            lines.append(f"- **{c['metric']} − teacher**: the model's mean minus the reference teacher's on the same "
                         f"prompts and seeds{' in ' + c['unit'] if c['unit'] else ''}, with its 95% interval (prompts "
                         f"are the independent units); {'higher' if c['higher_is_better'] else 'lower'} is better.")
    for better in (True, False):
        group = [c["metric"] for c in qcols if c["field"] == "value" and c["higher_is_better"] == better]
        if group:
            lines.append("- " + ", ".join(f"**{k}**" for k in group) + ": the statistic with its 95% interval (a "
                         f"jackknife over prompts); {'higher' if better else 'lower'} is better; `vs_teacher`: "
                         "against the reference teacher's clips of the same prompts and seeds, `vs_real`: against "
                         "real clips.")
    lines += ["- Intervals are printed only where they contain their point; \"reference\": the model every "
              "difference is taken against.", "",
              "## Model vs model (paired: same prompts and seeds, all sets resampled jointly)", ""]
    if comp["pairs"]:
        from distill.eval.report import multiplicity_note

        family = comp["pairs"][0].get("family_size") or len(comp["pairs"])
        lines += [f"| metric | A | B | A − B [95% CI] | A | B | reading | A − B [Bonferroni 95% of {family}] | "
                  "Holm p |", "|---|---|---|---|---|---|---|---|---|"]
        for p in comp["pairs"]:
            d = _digits(*(x for x in (p["value_a"], p["value_b"]) if x is not None)) if p["value_a"] is not None \
                else 2
            adj = p.get("ci95_bonferroni")
            bonferroni = "–" if adj is None else estimate_cell({"value": p["value"], "ci95": adj}, sign=True)
            holm = "–" if p.get("p_holm") is None else f"{p['p_holm']:.3g}" + (" (resolved)" if p["resolved_holm"]
                                                                                else "")
            lines.append(f"| {p['metric']} | {p['a']} | {p['b']} | {estimate_cell(p, sign=True)} | "
                         f"{'–' if p['value_a'] is None else _num(p['value_a'], d)} | "
                         f"{'–' if p['value_b'] is None else _num(p['value_b'], d)} | {p['reading']} | "
                         f"{bonferroni} | {holm} |")
        lines += ["", "Pairs of the compared models only (each against a baseline: summary.md). **A − B**: the "
                  "statistic of A minus that of B against the same reference, bias-corrected (its target is the "
                  "difference of the population distances, so the sign ranks the models), with its paired 95% "
                  "interval; **reading**: which is better where the marginal interval excludes 0.", "",
                  f"**Multiplicity**: the eval behind this file holds {comp.get('intervals_in_eval', '?')} "
                  f"intervals; this table prints {len(comp['pairs'])}. " + multiplicity_note(family)]
    else:
        lines.append("(fewer than two compared models with paired set-metric differences in eval.json)")
    lines += ["", "## Training cost per run", "",
              "| run | recipe config | recipe | scored as | builds on | steps (reached) | ranks | wall time | "
              "DiT passes / step |", "|---|---|---|---|---|---|---|---|---|"]
    for c in comp["runs"]:
        reached = "–" if c["step_reached"] is None else str(c["step_reached"])
        lines.append(f"| {c['run']} | {c['recipe_config']} | {c['recipe']} | {', '.join(c['models']) or '–'} | "
                     f"{', '.join(c['builds_on']) or '–'} | {c['steps']} ({reached}) | {c['ranks'] or '–'} | "
                     f"{_wall_cell(c)} | {_passes_cell(c)} |")
    lines += ["", "Columns:", "",
              "- **recipe**: the recipe config's `recipe.name`; **scored as**: the models exported from the run; "
              "**builds on**: runs whose export this run starts from (its total cost includes theirs).",
              "- **steps**: the config's `train.steps` (the step its latest checkpoint reached); **ranks**: "
              "training processes (the checkpoint's world size).",
              "- **wall time**: measured around each `distill train` process this command launched, summed over "
              "resumes and failed attempts (`RUN/compare-cost.json`); \"not measured\" for a run trained "
              "elsewhere, \"≥\" when its first steps were trained elsewhere.",
              "- **DiT passes / step**: DiT forward passes per optimizer step summed over networks, as the engine "
              "logs it in `RUN/metrics.jsonl`; – where it logs none.", ""]
    return "\n".join(lines)


def write_comparison(comp: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "comparison.json", out / "comparison.md"]
    paths[0].write_text(json.dumps(comp, indent=1) + "\n")
    paths[1].write_text(comparison_markdown(comp))
    return paths


def describe(p: Plan) -> str:
    """The plan in words: what `distill compare --dry-run` prints."""
    ranks = f"{p.nproc} rank{'s' * (p.nproc != 1)} per run"
    lines = [f"compare {p.path} -> {p.out} ({ranks}{', fast' if p.fast else ''})"]
    for i, run in enumerate(p.runs, 1):
        after = f" after {', '.join(run.needs)}" if run.needs else ""
        lines.append(f"  {i}. {run.name}: train {_relative(run.recipe_file)} ({run.cfg.recipe.name}, "
                     f"{run.cfg.train.steps} steps){after}; export -> {run.export}")
        for item in run.overrides:
            lines.append(f"       {item}")
    lines.append(f"  eval on {p.config.suite}: "
                 + ", ".join(f"{s.name} ({s.steps} step{'s' * (s.steps != 1)}"
                             + (f", decoded by {s.decoder})" if s.decoder else ")") for s in p.specs))
    return "\n".join(lines)
