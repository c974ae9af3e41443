"""Does a claim made on one seed set hold on another? Re-run the real eval harness on several fresh seed sets and
compare the spread of every metric's point estimate with the standard error the eval itself reports.

    python scripts/replicate_eval.py --model cd-4step=runs/demo/consistency/export@4 \
        --model apt-1step=runs/demo/apt/export@1 --sets 5 --cache runs/replicate/cache --out runs/replicate

Set j runs the default held-out suite at suite seed `seeds_per_prompt * j` (prompt i gets seeds 1000 i + seed +
0 .. seeds_per_prompt-1, so the sets share no clip). `--reuse-first EVAL.json` takes an eval already made at seed
0 (the demo's) as set 0. For each model and metric it prints the observed standard deviation of the point estimates
across sets beside the two standard errors the eval reports:

  se_seeds  given these prompts (what a re-run on fresh seeds of the same suite varies by): the replication check,
            goal observed SD / mean se_seeds in 0.7-1.4;
  se        prompts as clusters (also counting the prompts as a sample of prompts like these): the one the
            intervals and the gate use; larger than the seed-to-seed spread when prompts differ.

For the CLIP paired difference to the teacher it prints the interval's half-width (goal <= 3 points), splits its
variance into a prompt part and a seed part (sigma_p^2 = P (se^2 - se_seeds^2), sigma_s^2 = P S se_seeds^2), and
says how many prompts a +-3-point interval needs at 1 and 4 seeds per prompt.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from distill.core.config import CONFIG_DIR, load
from distill.eval.harness import Harness
from distill.eval.suite import SuiteConfig, parse_model_spec, real_clips_for, suite_prompts
from distill.teachers.config import load_teacher_config


def run_set(args, j: int, suite_file: Path) -> dict:
    path = args.out / f"eval-set{j}.json"
    if path.is_file():
        return json.loads(path.read_text())
    base = load(SuiteConfig, suite_file)
    overrides = [f"seed={base.seeds_per_prompt * j}", "noise_floor=false", *args.overrides]
    suite = load(SuiteConfig, suite_file, overrides)
    t0 = time.perf_counter()
    harness = Harness(suite, load_teacher_config("tiny-wan"), suite_prompts(suite, suite_file), args.out / "scratch",
                      args.cache, real_clips_for(suite), progress=False)
    result = harness.run([parse_model_spec(m) for m in args.model])
    path.write_text(json.dumps(result, indent=1))
    print(f"set {j} (seed {suite.seed}): {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return result


def spread(docs: list[dict]) -> list[dict]:
    rows = []
    for model in docs[0]["models"]:
        for metric, rec in docs[0]["models"][model]["metrics"].items():
            recs = [d["models"].get(model, {}).get("metrics", {}).get(metric) for d in docs]
            if any(r is None or r.get("value") is None or r.get("se") is None for r in recs):
                continue
            values = np.array([r["value"] for r in recs], dtype=float)
            se = float(np.mean([r["se"] for r in recs]))
            sd = float(values.std(ddof=1))
            row = {"model": model, "metric": metric, "values": values.tolist(), "observed_sd": sd,
                   "mean_reported_se": se, "ratio": sd / se if se > 0 else None}
            if all(r.get("se_seeds") for r in recs):
                ses = float(np.mean([r["se_seeds"] for r in recs]))
                row.update(mean_se_seeds=ses, ratio_seeds=sd / ses)
            paired = [r.get("paired_diff_vs_teacher") for r in recs]
            if all(isinstance(p, dict) and p.get("ci95") and None not in p["ci95"] for p in paired):
                row["paired_values"] = [p["value"] for p in paired]
                row["paired_half_width"] = float(np.mean([(p["ci95"][1] - p["ci95"][0]) / 2 for p in paired]))
                if all(p.get("se") is not None for p in paired):
                    psd = float(np.std(row["paired_values"], ddof=1))
                    pse = float(np.mean([p["se"] for p in paired]))
                    row.update(paired_observed_sd=psd, paired_mean_reported_se=pse, paired_ratio=psd / pse)
                    if all(p.get("se_seeds") for p in paired):
                        pss = float(np.mean([p["se_seeds"] for p in paired]))
                        row.update(paired_mean_se_seeds=pss, paired_ratio_seeds=psd / pss)
                        prompts, seeds = recs[0].get("n_prompts") or recs[0].get("n_clusters"), None
                        seeds = recs[0]["n"] // prompts
                        var_p = prompts * max(pse ** 2 - pss ** 2, 0.0)
                        var_s = prompts * seeds * pss ** 2
                        row["variance_split"] = {"sigma_prompt": var_p ** 0.5, "sigma_seed": var_s ** 0.5,
                                                 "prompts": prompts, "seeds": seeds}
            rows.append(row)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, help="NAME=FOLDER@STEPS (repeatable)")
    p.add_argument("--sets", type=int, default=5)
    p.add_argument("--reuse-first", type=Path, help="an eval.json made at suite seed 0, taken as set 0")
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("overrides", nargs="*", help="suite overrides key=value for every set")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    suite_file = CONFIG_DIR / "eval" / "suites" / "toyworld-held-out.yaml"
    docs = []
    for j in range(args.sets):
        if j == 0 and args.reuse_first:
            docs.append(json.loads(args.reuse_first.read_text()))
            continue
        docs.append(run_set(args, j, suite_file))
    rows = spread(docs)
    n = len(docs[0]["suite"]["seeds"])
    lines = [f"Replication: {len(docs)} seed sets of {n} clips each (held-out suite)", "",
             "| model | metric | point per set | observed SD | mean se_seeds | SD / se_seeds | mean se (prompts) "
             "| SD / se |", "|---|---|---|---|---|---|---|---|"]
    f = lambda x: "–" if x is None else f"{x:.4g}"  # noqa: E731
    r2 = lambda x: "–" if x is None else f"{x:.2f}"  # noqa: E731
    needs = []
    for r in rows:
        vals = ", ".join(f"{v:.4g}" for v in r["values"])
        lines.append(f"| {r['model']} | {r['metric']} | {vals} | {r['observed_sd']:.4g} | {f(r.get('mean_se_seeds'))} "
                     f"| {r2(r.get('ratio_seeds'))} | {r['mean_reported_se']:.4g} | {r2(r['ratio'])} |")
        if "paired_ratio" in r:
            pv = ", ".join(f"{v:+.3g}" for v in r["paired_values"])
            lines.append(f"| {r['model']} | {r['metric']} − teacher (paired; 95% half-width "
                         f"{r['paired_half_width']:.2f}) | {pv} | {r['paired_observed_sd']:.4g} | "
                         f"{f(r.get('paired_mean_se_seeds'))} | {r2(r.get('paired_ratio_seeds'))} | "
                         f"{r['paired_mean_reported_se']:.4g} | {r2(r['paired_ratio'])} |")
        split = r.get("variance_split")
        if split and r["metric"].startswith("clipsim"):
            sp, ss = split["sigma_prompt"], split["sigma_seed"]
            for seeds in (1, 4):
                prompts = int(np.ceil(1.96 ** 2 * (sp ** 2 + ss ** 2 / seeds) / 9.0))
                needs.append(f"{r['model']}: sigma_prompt {sp:.2f}, sigma_seed {ss:.2f} points; a +-3-point paired "
                             f"interval needs about {prompts} prompts at {seeds} seed(s) per prompt")
    if needs:
        lines += ["", "CLIP paired difference, variance split and suite size:", *[f"- {n}" for n in needs]]
    text = "\n".join(lines)
    print(text)
    (args.out / "replication.md").write_text(text + "\n")
    (args.out / "replication.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
