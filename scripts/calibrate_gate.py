"""How often does the gate fail a model that did not get worse, and how often does it catch one that did?

    python scripts/calibrate_gate.py --student runs/demo/consistency/export@4 \
        --null-student runs/demo-seed1/consistency/export@4 --tune 20 --trials 60 \
        --cache runs/calibrate/cache --out runs/calibrate

Every trial is CI's situation: a baseline eval and a current eval on the SAME prompts and seeds, gated by
`distill.eval.gate.evaluate` exactly as `distill gate` runs it (the paired fixed-suite test, Holm over rules x
models). Trial t is one eval of the held-out suite at suite seed 600 + K t, K the larger of the seeds per prompt S
and the diversity set's seeds (prompt i gets seeds 1000 i + 600 + K t .. + S - 1, its diversity clips 500,000 more
.. + its diversity seeds - 1), so no two trials share a clip, and none shares one with scripts/replicate_eval.py,
whose sets use per-prompt offsets below 600 (up to 149 sets at S = 4). Each trial scores, besides the teacher:

    student        the baseline (`--student`), fresh in every trial;
    null           `--null-student`, a second training of the same recipe with another training seed: what an
                   unchanged recipe gives when CI retrains. Gated against the trial's baseline: a failure is a FALSE
                   ALARM. (Gating the student against itself is no trial: the same seeds give identical clips.)
    teacher-2step  the teacher at 2 Euler steps (a distillation that did nothing);
    student-below  the student sampled below its step count (`--below-steps`, default half of its steps);
    collapsed      the student's diversity collapsed: the same prompts, and for every seed of a prompt the clip of
                   its first seed (sampled once; the clip cache serves it).
Each regression, gated against the same trial's baseline: a failure is a DETECTION.

The first `--tune` trials are tuning sets: on them alone the script picks the tolerance r of the policy's
vs-baseline rules (the smallest in `--tolerances` with no false alarm there), then measures the shipped and the
tuned policy on the other `--trials` trials, which played no part in choosing it. False alarms are reported with
the exact one-sided 95% upper bound (Clopper-Pearson; with zero failures in n trials it is 1 - 0.05^(1/n), about
3/n), detections with the exact two-sided 95% interval; every row also with Wilson's score interval (two-sided
95%; its upper end at 0 of 60 is 0.060). Trials are independent given the two trained models. Beside the counts,
the report gives the retrained student's paired statistic over all trials (t = worse-by / seed-level se at tolerance
0): an equivalent retraining with an honest se has mean 0 and SD 1, and then a zero tolerance fails it in alpha of
the trials by construction; a mean above 0 is a real gap between the two trainings, an SD above 1 an se too small.

Resumable: each trial's eval is kept in --out/trials/trial-NNN.json (written whole or not at all) and its clips
in --cache; a rerun evaluates only the trials that are missing. `--gates-only` gates the trials already there.
`--keep DIR` also keeps every trial's eval gzipped in DIR (trial-NNN.json.gz, byte-identical for the same eval),
a folder that goes into the repository (`make calibrate` keeps docs/gate-calibration/): a new machine restores the
trials from it and continues, provided it trained the same two students (a rerun of `make demo` and of the second
training reproduces them on this machine; the checkpoint hashes in the records decide, and other weights are
refused by name).
`--minutes M` runs a block: it starts no trial that the last one's time says would end past M minutes, then gates
the trials in. Until all are in, the report says it is interim and how many it holds, so the 80 trials can be run a
block at a time on a machine whose --out and --cache persist.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import sys
import time
from pathlib import Path

from scipy.stats import beta, chi2, t as student_t

from distill.core.config import CONFIG_DIR, ConfigError, load
from distill.eval.gate import BASELINE_KINDS, Policy, evaluate, load_eval, load_policy
from distill.eval.harness import Harness
from distill.eval.stats import wilson_interval
from distill.eval.suite import ModelSpec, SuiteConfig, parse_model_spec, real_clips_for, suite_prompts
from distill.teachers.config import load_teacher_config

SUITE_FILE = CONFIG_DIR / "eval" / "suites" / "toyworld-held-out.yaml"
SEED_BASE = 600  # per-prompt seed offsets from here up to 999: above scripts/replicate_eval.py's, below the next prompt
STUDENT, NULL, COLLAPSED = "student", "null", "collapsed"
REGRESSIONS = ("teacher-2step", "student-below", COLLAPSED)
RELATIVE_GRID = "0,0.02,0.05,0.1,0.15,0.25,0.5"  # max_regression_vs_baseline: fractions of the baseline's value
ABSOLUTE_GRID = "0,0.25,0.5,1,1.5,2,3,5"  # max_worsening_vs_baseline: the metric's units (FVD vs teacher: CD-4 ~1.5)


class CollapsingHarness(Harness):
    """The harness, with the `collapsed` model sampled at each prompt's first seed for all of its seeds."""

    def clips(self, cand, items, desc):
        if cand.spec.name == COLLAPSED:
            first: dict[str, int] = {}
            items = [(p, first.setdefault(p, seed)) for p, seed in items]
        return super().clips(cand, items, desc)


def model_specs(args) -> list[ModelSpec]:
    def named(text: str, name: str, **update) -> ModelSpec:
        return parse_model_spec(text).model_copy(update={"name": name, "role": "student", **update})

    student = named(args.student, STUDENT)
    below = args.below_steps or max(1, student.steps // 2)
    if below >= student.steps:
        raise ConfigError(f"--below-steps {below} is not below the student's {student.steps} steps")
    specs = [student, named(args.student, "student-below", steps=below), named(args.student, COLLAPSED),
             named("teacher@2:euler", "teacher-2step")]
    if args.null_student:
        specs.append(named(args.null_student, NULL))
    return specs


def trial_seed(t: int, seeds: int) -> int:
    """Trial t's suite seed, `seeds` apart: the most seeds a prompt gets in one trial (its suite clips, or its
    diversity clips, which the harness draws from the same per-prompt offsets 500,000 higher)."""
    seed = SEED_BASE + seeds * t
    if seed + seeds > 1000:  # the next prompt's block of seeds starts at 1000: its noise would be reused
        raise ConfigError(f"trial {t} at {seeds} seeds per prompt needs per-prompt seeds up to {seed + seeds - 1}, "
                          f"past 999; use fewer trials or seeds")
    return seed


def out_of_time(started: float, minutes: float | None, last_trial_s: float | None) -> bool:
    """Whether a block of `minutes` (None: no limit) that began at `started` (time.time()) has no room left for
    another trial as long as the last one evaluated in it (before the first, only a block already spent is out of
    time). Wall-clock time: a block ends at a time of day (a machine's lease, a session's end), and a virtual
    machine's monotonic clock can fall behind it (here a 100-minute block timed by it ended 101.4 minutes after it
    began by the wall clock, and started its last trial past the point this rule would have stopped it)."""
    if minutes is None:
        return False
    return time.time() - started + (last_trial_s or 0.0) > 60 * minutes


def run_trials(args, count: int) -> list[Path]:
    """The first `count` trials' files, evaluating those missing; with `--minutes`, only as many as fit in the block
    (the trials kept are always a prefix: trial t only after every trial before it)."""
    suite_file = SUITE_FILE
    teacher = load_teacher_config("tiny-wan")
    folder = args.out / "trials"
    folder.mkdir(parents=True, exist_ok=True)
    specs = model_specs(args)
    step = max(args.seeds, load(SuiteConfig, suite_file).diversity.seeds)
    paths, first = [], None  # first: the earliest trial's eval, read once, that every new trial must match
    started, last_s = time.time(), None
    for t in range(count):
        path = folder / f"trial-{t:03d}.json"
        if path.is_file():
            paths.append(path)
            continue
        if out_of_time(started, args.minutes, last_s):
            print(f"stopped before trial {t} of {count}: the {args.minutes:g}-minute block is spent; the same command "
                  f"continues from it", file=sys.stderr, flush=True)
            break
        paths.append(path)
        # the suite as CI runs it, its diversity set included (the collapsed student is caught there), less what
        # no quality rule reads: the noise floor, and timings beyond one clip (speed is gated apart)
        overrides = [f"seeds_per_prompt={args.seeds}", f"seed={trial_seed(t, step)}", "noise_floor=false",
                     "speed.clips=1", "speed.warmup=0"]
        if args.prompts:
            overrides.append(f"max_prompts={args.prompts}")
        suite = load(SuiteConfig, suite_file, overrides)
        t0 = time.perf_counter()
        harness = CollapsingHarness(suite, teacher, suite_prompts(suite, suite_file), args.out / "scratch",
                                    args.cache, real_clips_for(suite), progress=False)
        result = harness.run(specs)
        result["calibration"] = {"trial": t, "role": "tune" if t < args.tune else "measure",
                                 "eval_seconds": time.perf_counter() - t0}
        if paths[0] != path:  # other weights than the trials already in (restored ones, say): refuse after one,
            first = first or json.loads(paths[0].read_text())  # before it is written
            check_trials([first, result], [paths[0], path])
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result))
        tmp.replace(path)
        if args.keep:
            keep_trial(path, args.keep)
        last_s = time.perf_counter() - t0
        print(f"trial {t}: eval in {last_s:.0f} s ({len(harness.items)} clips per model)", file=sys.stderr, flush=True)
    return paths


def keep_trial(path: Path, keep: Path) -> Path:
    """Trial file `path` gzipped into `keep` (written whole or not at all; no timestamp in the gzip header, so the
    same eval gives the same bytes and a rerun leaves the repository unchanged)."""
    keep.mkdir(parents=True, exist_ok=True)
    out = keep / f"{path.name}.gz"
    tmp = out.with_suffix(".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(filename=path.name, mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(path.read_bytes())
    tmp.replace(out)
    return out


def sync_kept(folder: Path, keep: Path) -> tuple[int, int]:
    """Restore into `folder` every kept trial it lacks, and keep every trial of `folder` that `keep` lacks; the
    counts (restored, kept). A record in both is left as it is: the protocol check compares them afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    restored = kept = 0
    for packed in sorted(keep.glob("trial-*.json.gz")) if keep.is_dir() else []:
        path = folder / packed.name[:-len(".gz")]
        if not path.is_file():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(gzip.decompress(packed.read_bytes()))
            tmp.replace(path)
            restored += 1
    for path in sorted(folder.glob("trial-*.json")):
        if not (keep / f"{path.name}.gz").is_file():
            keep_trial(path, keep)
            kept += 1
    return restored, kept


MODEL_KEYS = ("source", "steps", "sampler", "guidance", "shift", "checkpoint_hash", "decoder")
PER_TRIAL = ("seed", "seeds")  # the suite keys a trial changes: everything else is one protocol


def check_trials(docs: list[dict], paths: list[Path]) -> None:
    """Refuse a calibration whose trials are not of one protocol: the same models (weights by checkpoint hash,
    steps, sampler) on the same suite apart from its seeds. A calibration run a block at a time can otherwise mix,
    say, trials of a student retrained between two blocks. Names the first trial that differs and how."""
    def protocol(doc: dict) -> dict:
        return {"models": {name: {k: entry.get(k) for k in MODEL_KEYS} for name, entry in doc["models"].items()},
                "suite": {k: v for k, v in doc["suite"].items() if k not in PER_TRIAL}}

    first = protocol(docs[0])
    for doc, path in zip(docs[1:], paths[1:]):
        other = protocol(doc)
        if other == first:
            continue
        diffs = [f"suite.{k}" for k in sorted(set(first["suite"]) | set(other["suite"]))
                 if first["suite"].get(k) != other["suite"].get(k)]
        for name in sorted(set(first["models"]) | set(other["models"])):
            a, b = first["models"].get(name), other["models"].get(name)
            if a is None or b is None:
                diffs.append(f"model {name!r} {'only in ' + path.name if a is None else 'missing'}")
            else:
                diffs += [f"{name}.{k}: {a[k]!r} in {paths[0].name}, {b[k]!r} here" for k in MODEL_KEYS if a[k] != b[k]]
        raise SystemExit(f"{path}: not the protocol of {paths[0].name} ({'; '.join(diffs)}); a calibration's trials "
                         f"must share their models and suite. Move the trials of the other protocol out of "
                         f"{path.parent}, or calibrate them apart with another --out")


def posing(doc: dict, model: str) -> dict:
    """The eval with `model` (and its per-clip values) as the student, the other non-teacher models removed."""
    out = copy.deepcopy(doc)
    entry = out["models"].pop(model)
    for name in [n for n, e in out["models"].items() if e.get("role") != "teacher"]:
        del out["models"][name]
    entry["role"] = "student"
    out["models"][STUDENT] = entry
    clips = out.get("per_clip", {}).get("models", {})
    if model in clips:
        clips[STUDENT] = clips.pop(model)
    return out


def gate(policy: Policy, current: dict, baseline: dict, scratch: Path):
    """The gate's result for `current` against `baseline`, as `distill gate` decides it (from files, as it reads them)."""
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "current.json").write_text(json.dumps(current))
    (scratch / "baseline.json").write_text(json.dumps(baseline))
    result = evaluate(policy, load_eval(scratch / "current.json"), load_eval(scratch / "baseline.json", "baseline"))
    if result.exit_code == 2:
        raise SystemExit(f"the gate could not judge: {result.errors or [c.message for c in result.checks]}")
    return result


def gate_fails(policy: Policy, current: dict, baseline: dict, scratch: Path) -> list[str]:
    """The metrics of the rules that failed (empty: the gate passed)."""
    return [c.metric for c in gate(policy, current, baseline, scratch).checks if c.status == "fail"]


def per_trial(policy: Policy, docs: list[dict], scratch: Path) -> list[str]:
    """One line per trial and model posing as current: each paired check's worse-by and se, and the rules failed."""
    lines = []
    for doc in docs:
        base = posing(doc, STUDENT)
        for model in (m for m in (NULL, *REGRESSIONS) if m in doc["models"]):
            result = gate(policy, posing(doc, model), base, scratch)
            paired = "; ".join(f"{c.metric} worse by {c.paired['worse_by']:.2f} (se {c.paired['se']:.2f})"
                               for c in result.checks if c.paired)
            failed = [c.metric for c in result.checks if c.status == "fail"]
            lines.append(f"trial {doc['calibration']['trial']} {model}: {paired}; failed: {failed or 'none'}")
    return lines


def null_statistics(policy: Policy, docs: list[dict], scratch: Path) -> dict[str, list[dict]]:
    """Per paired rule, the retrained student's paired statistic in every trial at tolerance 0: worse-by, its
    seed-level se and df, and t = worse-by / se. For a retraining that is no worse on these prompts, with an honest
    se, t follows Student's t: mean 0, SD about 1, above its one-sided 5% point in 5% of trials. That is the
    false-alarm rate of a zero tolerance by construction, so the spread says whether a rate seen in the trials is
    the test's level, a gap between the two trainings (mean above 0) or an se too small (SD above 1)."""
    out: dict[str, list[dict]] = {}
    zero = with_tolerance(policy, 0.0)
    for i, doc in enumerate(docs):
        if NULL not in doc["models"]:
            continue
        for c in gate(zero, posing(doc, NULL), posing(doc, STUDENT), scratch).checks:
            if c.paired and c.paired["se"] > 0:
                t = c.paired
                trial = doc.get("calibration", {}).get("trial", i)
                out.setdefault(c.metric, []).append({"trial": trial, "worse_by": t["worse_by"],
                                                     "se": t["se"], "df": t["df"], "t": t["worse_by"] / t["se"]})
    return out


def spread_table(stats: dict[str, list[dict]], alpha: float) -> list[str]:
    """The null statistic's summary per rule: mean worse-by, mean t and SD of t with 95% intervals (Student and
    chi-square, over trials), and how many trials' t passed the one-sided `alpha` point of their own df."""
    lines = [f"| rule | trials | mean worse-by | mean t [95%] | SD of t [95%] | t above its {alpha:g} point |",
             "|---|---|---|---|---|---|"]
    for metric, rows in stats.items():
        n = len(rows)
        ts = [r["t"] for r in rows]
        mean = sum(ts) / n
        above = sum(r["t"] > student_t.ppf(1 - alpha, r["df"]) for r in rows)
        worse = sum(r["worse_by"] for r in rows) / n
        if n < 2:
            lines.append(f"| {metric} | {n} | {worse:.3g} | {mean:.2f} | – | {above} / {n} |")
            continue
        var = sum((x - mean) ** 2 for x in ts) / (n - 1)
        half = student_t.ppf(0.975, n - 1) * (var / n) ** 0.5
        sd_lo, sd_hi = ((n - 1) * var / chi2.ppf(0.975, n - 1)) ** 0.5, ((n - 1) * var / chi2.ppf(0.025, n - 1)) ** 0.5
        lines.append(f"| {metric} | {n} | {worse:.3g} | {mean:.2f} [{mean - half:.2f}, {mean + half:.2f}] | "
                     f"{var ** 0.5:.2f} [{sd_lo:.2f}, {sd_hi:.2f}] | {above} / {n} |")
    return lines


def outcomes(policy: Policy, docs: list[dict], scratch: Path) -> dict[str, list[list[str]]]:
    """Per kind of trial ("false alarm", each regression), the failed metrics of every trial in `docs`."""
    out: dict[str, list[list[str]]] = {}
    for doc in docs:
        base = posing(doc, STUDENT)
        for model in (NULL, *REGRESSIONS):
            if model in doc["models"]:
                kind = "false alarm" if model == NULL else model
                out.setdefault(kind, []).append(gate_fails(policy, posing(doc, model), base, scratch))
    return out


def with_tolerance(policy: Policy, r: float) -> Policy:
    """The policy with every vs-baseline rule's tolerance set to r, in the rule's own form (a fraction of the
    baseline's value for max_regression_vs_baseline, the metric's units for max_worsening_vs_baseline)."""
    data = policy.model_dump(exclude_none=True)
    for rule in data["rules"]:
        for kind in BASELINE_KINDS:
            if kind in rule:
                rule[kind] = r
    return Policy.model_validate(data)


def default_grid(policy: Policy) -> str:
    """The tolerance grid for the policy's form of vs-baseline rule."""
    absolute = any(rule.kind == "max_worsening_vs_baseline" for rule in policy.rules)
    return ABSOLUTE_GRID if absolute else RELATIVE_GRID


def tune(policy: Policy, docs: list[dict], grid: list[float], scratch: Path) -> tuple[float, list[tuple]]:
    """The smallest tolerance with no false alarm on the tuning trials (the largest if none), and the trade-off."""
    rows = []
    for r in grid:
        res = outcomes(with_tolerance(policy, r), docs, scratch)
        rows.append((r, {kind: sum(bool(f) for f in fails) for kind, fails in res.items()}, len(docs)))
    clean = [r for r, counts, _ in rows if counts.get("false alarm", 0) == 0]
    return (min(clean) if clean else max(grid)), rows


def upper_bound(k: int, n: int, level: float = 0.95) -> float:
    """Clopper-Pearson one-sided upper bound on a rate with k failures in n independent trials."""
    return 1.0 if k >= n else float(beta.ppf(level, k + 1, n - k))


def exact_interval(k: int, n: int) -> tuple[float, float]:
    lo = 0.0 if k == 0 else float(beta.ppf(0.025, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(0.975, k + 1, n - k))
    return lo, hi


def table(res: dict[str, list[list[str]]]) -> list[str]:
    lines = ["| trial | k / n | rate | exact 95% | Wilson 95% | rules that failed (trials) |",
             "|---|---|---|---|---|---|"]
    for kind, fails in res.items():
        k, n = sum(bool(f) for f in fails), len(fails)
        per_rule: dict[str, int] = {}
        for f in fails:
            for metric in set(f):
                per_rule[metric] = per_rule.get(metric, 0) + 1
        rules = ", ".join(f"{m} ({c})" for m, c in sorted(per_rule.items(), key=lambda kv: -kv[1])) or "–"
        if kind == "false alarm":
            bound = f"≤ {upper_bound(k, n):.3f} (one-sided)"
        else:
            lo, hi = exact_interval(k, n)
            bound = f"[{lo:.2f}, {hi:.2f}]"
        lo, hi = wilson_interval(k, n)
        lines.append(f"| {kind} | {k} / {n} | {k / n:.3f} | {bound} | [{lo:.3f}, {hi:.3f}] | {rules} |")
    return lines


def report(args, docs: list[dict], policy: Policy, scratch: Path) -> tuple[list[str], dict]:
    """The calibration's tables (markdown lines) and record. Fewer trials than `--tune + --trials` make an interim
    report that says how many are in: the tuning trials' trade-off as far as they go, the measurement as far as it
    goes (the tolerance chosen on an incomplete tuning set is not the calibration's)."""
    tuning, measuring = docs[:args.tune], docs[args.tune:]
    grid = [float(r) for r in (args.tolerances or default_grid(policy)).split(",")]
    chosen, trade = tune(policy, tuning, grid, scratch) if tuning else (None, [])
    shipped = outcomes(policy, measuring, scratch) if measuring else {}
    tuned = outcomes(with_tolerance(policy, chosen), measuring, scratch) if measuring and chosen is not None else None
    seconds = [s for d in docs if (s := d.get("calibration", {}).get("eval_seconds"))]
    clips = len(docs[0]["suite"]["seeds"])
    interim = len(tuning) < args.tune or len(measuring) < args.trials
    lines = [f"Gate calibration: policy {args.policy}, {len(measuring)} measurement trials and {len(tuning)} tuning "
             f"trials, each a fresh baseline and current on {clips} clips of their own (toy-world held-out suite, "
             f"{args.seeds} seeds per prompt); paired fixed-suite test, Holm at alpha {policy.alpha:g}.", ""]
    if interim:
        lines += [f"INTERIM: {len(tuning)} of {args.tune} tuning and {len(measuring)} of {args.trials} measurement "
                  f"trials are in; the same command continues from trial {len(docs)}.", ""]
    if NULL not in docs[0]["models"]:
        lines += ["No --null-student: false alarms not measured.", ""]
    if measuring:
        lines += ["The shipped policy on the measurement trials:", "", *table(shipped), ""]
    if trade:
        form = ("in the metric's units" if default_grid(policy) == ABSOLUTE_GRID
                else "a fraction of the baseline's value")
        lines += [f"Tuning trials (vs-baseline tolerance r, {form}; failed trials of {len(tuning)}):", "",
                  "| r | " + " | ".join(trade[0][1]) + " |", "|---|" + "---|" * len(trade[0][1])]
        lines += [f"| {r:g} | " + " | ".join(str(v) for v in counts.values()) + " |" for r, counts, _ in trade]
        so_far = " so far" if len(tuning) < args.tune else ""
        lines += ["", f"Chosen on the tuning trials{so_far}: r = {chosen:g}."]
        if tuned is not None:
            lines += ["Measured on the other trials:", "", *table(tuned)]
    spread = null_statistics(policy, docs, scratch) if NULL in docs[0]["models"] else {}
    if spread:
        lines += ["", f"The retrained student's paired statistic at tolerance 0, over all {len(docs)} trials (t = "
                      "worse-by / seed-level se; an equivalent retraining with an honest se gives mean 0, SD 1, and "
                      f"{policy.alpha:g} of trials above the point, which with one paired rule is the false-alarm rate of "
                      "r = 0):", "",
                  *spread_table(spread, policy.alpha)]
    if seconds:
        lines += ["", f"Eval time per trial: {sum(seconds) / len(seconds):.0f} s on average over {len(seconds)} "
                      f"trials ({clips} clips per model)."]
    record = {"policy": str(args.policy), "interim": interim, "tune_trials": len(tuning),
              "measure_trials": len(measuring), "chosen_tolerance": chosen, "shipped": shipped, "tuned": tuned,
              "trade_off": [{"r": r, "failed": counts, "of": n} for r, counts, n in trade],
              "null_statistics": spread}
    return lines, record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", required=True, help="the baseline model: FOLDER@STEPS (or teacher@N for a smoke run)")
    p.add_argument("--null-student", help="a second training of the same recipe (another seed), FOLDER@STEPS; "
                                          "without it no false alarm is measured")
    p.add_argument("--below-steps", type=int, help="steps of the student-below regression (default: half)")
    p.add_argument("--policy", type=Path, default=CONFIG_DIR / "eval" / "gates" / "toyworld.yaml")
    p.add_argument("--trials", type=int, default=60, help="measurement trials (false alarms and detections)")
    p.add_argument("--tune", type=int, default=20, help="tuning trials, before them, that choose the tolerance")
    p.add_argument("--tolerances", help=f"tolerance grid for tuning (default: {RELATIVE_GRID} for a relative "
                   f"vs-baseline rule, {ABSOLUTE_GRID} for an absolute one)")
    p.add_argument("--prompts", type=int, help="only the first N prompts of the suite (a smoke run)")
    p.add_argument("--seeds", type=int, help="seeds per prompt (the paired se needs at least 2; default: the "
                   "suite's own, 2 for toyworld-held-out)")
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--keep", type=Path, help="also keep every trial's eval gzipped here (a folder for the "
                   "repository), and restore from it the trials --out lacks: the calibration moves between machines")
    p.add_argument("--gates-only", action="store_true", help="gate the trials already in --out, evaluate none")
    p.add_argument("--per-trial", action="store_true", help="also print each trial's paired checks under --policy")
    p.add_argument("--minutes", type=float, help="a block of at most M minutes: no trial is started that the last "
                   "one's time says would end past it; the trials in are then gated (an interim report until all "
                   "are in) and the same command continues")
    args = p.parse_args(argv)
    if args.seeds is None:  # the suite's own design, so that a trial is the eval CI runs
        args.seeds = load(SuiteConfig, SUITE_FILE).seeds_per_prompt
    args.out.mkdir(parents=True, exist_ok=True)
    if args.keep:
        restored, kept = sync_kept(args.out / "trials", args.keep)
        print(f"{args.keep}: restored {restored} trials into {args.out / 'trials'}, kept {kept} of its own",
              file=sys.stderr, flush=True)
    if args.gates_only:
        paths = sorted((args.out / "trials").glob("trial-*.json"))[:args.tune + args.trials]
    else:
        paths = run_trials(args, args.tune + args.trials)
    docs = [json.loads(path.read_text()) for path in paths]
    if not docs:
        raise SystemExit(f"no trials in {args.out / 'trials'}: run without --gates-only (or with more --minutes)")
    check_trials(docs, paths)
    lines, record = report(args, docs, load_policy(args.policy), args.out / "scratch-gate")
    if args.per_trial:
        lines += ["", *per_trial(load_policy(args.policy), docs, args.out / "scratch-gate")]
    text = "\n".join(lines)
    print(text)
    (args.out / "calibration.md").write_text(text + "\n")
    (args.out / "calibration.json").write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
