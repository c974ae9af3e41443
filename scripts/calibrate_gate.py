"""Measure how often the shipped toy-world gate policy raises a false alarm, and how often it catches a regression.

    python scripts/calibrate_gate.py --student runs/demo/consistency/export@4 \
        --undertrained runs/cd-150/export@4 --sets 21 --cache runs/calibrate/cache --out runs/calibrate

Stage 1 (evals). `--sets` independent evaluations of the held-out suite, set k at suite seed k (42 prompts, one seed
each: prompt i gets seed 1000 i + k, so no clip is shared between sets). Each scores the 50-step teacher, the
student and the injected regressions; clips go through the harness's per-clip cache, so a re-run (or a pool made
earlier with the same seeds) costs only the metrics.

Stage 2 (gates), run with `distill.eval.gate` exactly as CI runs it:
- false alarm: the unchanged student of set k (k = 1 .. sets-1) gated against the student of set 0 as its
  baseline; a failure (exit 1) is a false alarm. The trials share that baseline, so they are independent only in
  their current eval: the rate over every ordered pair (i, j), i != j, is printed beside it as a check.
- detection: each regression of set k (k = 1 .. --detect-sets), posing as the student (renamed), gated against the same baseline; a failure
  is a detection:
    teacher-2step  the teacher at 2 Euler steps (a distillation that did nothing);
    undertrained   the student's own run stopped at 10% of its steps (`--undertrained`);
    student-2step  the finished student sampled at 2 steps instead of its 4 (a subtle configuration regression).
Rates come with Wilson 95% intervals. A threshold sweep of the policy's teacher-relative rules gives the trade-off
curve (false-alarm rate against detection rate) when the goals are not met at this suite size.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

from distill.core.config import CONFIG_DIR, load
from distill.eval.gate import evaluate, load_eval, load_policy
from distill.eval.harness import Harness
from distill.eval.suite import SuiteConfig, parse_model_spec, real_clips_for, suite_prompts
from distill.teachers.config import load_teacher_config

STUDENT = "student"


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def run_evals(args, regressions: dict[str, str]) -> list[Path]:
    suite_file = CONFIG_DIR / "eval" / "suites" / "toyworld-held-out.yaml"
    teacher = load_teacher_config("tiny-wan")
    paths = []
    for k in range(args.sets):
        path = args.out / f"eval-{k:02d}.json"
        paths.append(path)
        if path.is_file():
            continue
        t0 = time.perf_counter()
        suite = load(SuiteConfig, suite_file, [f"seed={k}", "seeds_per_prompt=1", "diversity.prompts=0",
                                               "noise_floor=false"])
        specs = [parse_model_spec(f"{STUDENT}={args.student}")]
        if k <= args.detect_sets:
            specs += [parse_model_spec(f"{name}={source}") for name, source in regressions.items()]
        harness = Harness(suite, teacher, suite_prompts(suite, suite_file), args.out / "scratch", args.cache,
                          real_clips_for(suite), progress=False)
        result = harness.run(specs)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(path)
        print(f"set {k}: eval in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return paths


def posing(doc: dict, model: str) -> dict:
    """The eval with `model` in the student's place (and the real student removed)."""
    out = copy.deepcopy(doc)
    entry = out["models"].pop(model)
    for name in [n for n, e in out["models"].items() if e.get("role") != "teacher"]:
        del out["models"][name]
    entry["role"] = "student"
    out["models"][STUDENT] = entry
    return out


def gate_fails(policy, current: dict, baseline: dict, scratch: Path) -> list[str]:
    """The metrics of the rules that failed (empty: the gate passed)."""
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "cur.json").write_text(json.dumps(current))
    (scratch / "base.json").write_text(json.dumps(baseline))
    result = evaluate(policy, load_eval(scratch / "cur.json"), load_eval(scratch / "base.json", "baseline"))
    if result.exit_code == 2:
        raise SystemExit(f"the gate could not judge: {result.errors or [c.message for c in result.checks]}")
    return [c.metric for c in result.checks if c.status == "fail"]


def tally(outcomes: list[list[str]]) -> tuple[int, int, dict[str, int]]:
    """(failed trials, trials, failures per rule's metric)."""
    per_rule: dict[str, int] = {}
    for failed in outcomes:
        for metric in set(failed):
            per_rule[metric] = per_rule.get(metric, 0) + 1
    return sum(bool(f) for f in outcomes), len(outcomes), per_rule


def rates(policy, docs: list[dict], regressions: list[str], scratch: Path) -> dict:
    base = posing(docs[0], STUDENT)
    out = {"false alarm (student vs its own baseline)":
           tally([gate_fails(policy, posing(d, STUDENT), base, scratch) for d in docs[1:]])}
    for name in regressions:
        out[f"detection: {name}"] = tally([gate_fails(policy, posing(d, name), base, scratch)
                                           for d in docs[1:] if name in d["models"]])
    return out


def all_pairs_false_alarm(policy, docs: list[dict], scratch: Path) -> tuple[int, int, dict[str, int]]:
    return tally([gate_fails(policy, posing(a, STUDENT), posing(b, STUDENT), scratch)
                  for i, a in enumerate(docs) for j, b in enumerate(docs) if i != j])


def scaled_policy(policy, scale: float):
    """The policy with every teacher-relative and absolute bound moved `scale` times further from zero (a looser
    gate for scale > 1)."""
    data = policy.model_dump(exclude_none=True)
    for rule in data["rules"]:
        for key in ("min_paired_diff_vs_teacher", "max", "min", "max_ratio_to_teacher",
                    "max_regression_vs_baseline"):
            if key in rule and rule[key] is not None:
                rule[key] = rule[key] * scale if key != "max_ratio_to_teacher" else 1 + (rule[key] - 1) * scale
    return type(policy).model_validate(data)


def without(policy, prefix: str):
    """The policy without the rules on metrics starting with `prefix`."""
    data = policy.model_dump(exclude_none=True)
    data["rules"] = [r for r in data["rules"] if not r["metric"].startswith(prefix)]
    return type(policy).model_validate(data)


def fvd_point_policy(policy, bound: float):
    """The policy with its FVD-vs-baseline rule as a point check (interval_aware off) at relative bound `bound`."""
    data = policy.model_dump(exclude_none=True)
    for rule in data["rules"]:
        if rule["metric"].startswith("fvd") and "max_regression_vs_baseline" in rule:
            rule.update(max_regression_vs_baseline=bound, interval_aware=False)
    return type(policy).model_validate(data)


def speed_spread(docs: list[dict]) -> str:
    """How much the student's measured speed-up moves between eval sets (timings on this machine)."""
    import statistics

    values = [d["models"][STUDENT]["metrics"]["speed.speedup_vs_teacher"]["value"] for d in docs
              if "speed.speedup_vs_teacher" in d["models"].get(STUDENT, {}).get("metrics", {})]
    if len(values) < 2:
        return "not measured"
    mean = statistics.mean(values)
    return (f"{len(values)} sets: mean {mean:.2f}, sd {statistics.stdev(values):.2f} "
            f"(cv {statistics.stdev(values) / mean:.0%}), range {min(values):.2f}-{max(values):.2f}")


def table_lines(table: dict) -> list[str]:
    lines = ["| trial | rate | 95% interval (Wilson) | k / n | rules that failed (trials) |", "|---|---|---|---|---|"]
    for name, (k, n, per_rule) in table.items():
        lo, hi = wilson(k, n)
        rules = ", ".join(f"{m} ({c})" for m, c in sorted(per_rule.items(), key=lambda kv: -kv[1])) or "–"
        lines.append(f"| {name} | {k / n:.2f} | [{lo:.2f}, {hi:.2f}] | {k} / {n} | {rules} |")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", required=True, help="the finished student, FOLDER@STEPS")
    p.add_argument("--undertrained", required=True, help="the same run at 10%% of its steps, FOLDER@STEPS")
    p.add_argument("--policy", type=Path, default=CONFIG_DIR / "eval" / "gates" / "toyworld.yaml")
    p.add_argument("--sets", type=int, default=21, help="independent eval sets (false alarms: sets - 1 trials)")
    p.add_argument("--detect-sets", type=int, default=10,
                   help="the regressions are scored in sets 1..N only (detection: N trials per regression)")
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--sweep", default="0.5,0.75,1,1.5,2,3", help="bound scales for the trade-off curve")
    p.add_argument("--speed-policy", type=Path, default=CONFIG_DIR / "eval" / "gates" / "toyworld-speed.yaml",
                   help="a speed-only policy, gated apart (timings need a dedicated machine)")
    p.add_argument("--fvd-sweep", default="0.15,0.5,1,1.5,2,3", help="FVD-vs-baseline point-check bounds")
    p.add_argument("--gates-only", action="store_true", help="stage 2 only, on the eval sets already in --out")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    folder, _, steps = args.student.rpartition("@")
    regressions = {"teacher-2step": "teacher@2:euler,role=student", "undertrained": args.undertrained,
                   "student-2step": f"{folder}@2"}
    paths = sorted(args.out.glob("eval-*.json"))[:args.sets] if args.gates_only else run_evals(args, regressions)
    docs = [json.loads(path.read_text()) for path in paths]
    policy = load_policy(args.policy)
    scratch = args.out / "scratch-gate"

    quality = without(policy, "speed.")
    tables = {}
    policies = [(f"the policy {args.policy.name}", policy)]
    if quality.rules != policy.rules:
        policies.append(("its quality rules alone (speed rules left out)", quality))
    if args.speed_policy and args.speed_policy.is_file():
        policies.append((f"the speed policy {args.speed_policy.name}", load_policy(args.speed_policy)))
    for label, pol in policies:
        table = rates(pol, docs, list(regressions), scratch)
        table["false alarm, every ordered pair of sets (correlated)"] = all_pairs_false_alarm(pol, docs, scratch)
        tables[label] = table
    sweep = {}
    for scale in [float(s) for s in args.sweep.split(",")]:
        sweep[scale] = rates(scaled_policy(quality, scale), docs, list(regressions), scratch)
    fvd_sweep = {}
    for bound in [float(s) for s in args.fvd_sweep.split(",")]:
        fvd_sweep[bound] = rates(fvd_point_policy(quality, bound), docs, list(regressions), scratch)

    lines = [f"Gate calibration: policy {args.policy}, {len(docs)} independent eval sets of "
             f"{len(docs[0]['suite']['seeds'])} clips (toy-world held-out suite, one seed per prompt)", ""]
    for label, table in tables.items():
        lines += [f"With {label}:", "", *table_lines(table), ""]
    lines += [f"The student's measured speed-up across the sets: {speed_spread(docs)}.", "",
              "Trade-off: every bound of the quality rules scaled (1 = the shipped policy; larger = looser)", "",
              "| scale | false alarm | " + " | ".join(regressions) + " |", "|---|---|" + "---|" * len(regressions)]
    for scale, res in sweep.items():
        cells = [f"{k}/{n}" for k, n, _ in res.values()]
        lines.append(f"| {scale:g} | " + " | ".join(cells) + " |")
    lines += ["", "Trade-off: the quality rules with the FVD-vs-baseline rule as a point check (no interval) at bound r "
              "(fail when FVD vs teacher > (1 + r) x the baseline's)", "",
              "| r | false alarm | " + " | ".join(regressions) + " |", "|---|---|" + "---|" * len(regressions)]
    for bound, res in fvd_sweep.items():
        cells = [f"{k}/{n}" for k, n, _ in res.values()]
        lines.append(f"| {bound:g} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    (args.out / "calibration.md").write_text(text + "\n")
    (args.out / "calibration.json").write_text(json.dumps(
        {"policy": str(args.policy), "sets": len(docs),
         "tables": {label: {k: list(v) for k, v in t.items()} for label, t in tables.items()},
         "sweep": {str(s): {k: list(v[:2]) for k, v in r.items()} for s, r in sweep.items()},
         "fvd_point_sweep": {str(s): {k: list(v[:2]) for k, v in r.items()} for s, r in fvd_sweep.items()}},
        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
