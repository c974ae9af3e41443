"""Two models of one eval side by side, paired: every per-clip metric's difference A − B on the same prompts and
seeds (a prompt-clustered interval, as the eval's own paired rows), and the eval's FVD/KVD model-vs-model rows for
the pair. For a question one eval's tables answer only per model: the same student decoded by the VAE and by a
distilled decoder, say.

    PYTHONPATH=. python scripts/pair_table.py runs/eval-decoder/eval.json cd-4step+dec cd-4step

Prints a markdown table (`--json PATH` also writes the rows). Nothing is re-sampled: it reads eval.json's per-clip
values.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from distill.eval.stats import clustered_mean_interval


def paired_rows(result: dict, a: str, b: str) -> list[dict]:
    models = result["models"]
    for name in (a, b):
        if name not in models:
            raise SystemExit(f"pair_table: no model {name!r} in the eval; it has {list(models)}")
    clusters = np.asarray(result["per_clip"]["prompt_of_clip"])
    per_clip = result["per_clip"]["models"]
    rows = []
    for key, rec in per_clip[a].items():
        if "values" not in rec or "values" not in per_clip[b].get(key, {}):
            continue
        va = np.array([np.nan if v is None else v for v in rec["values"]], dtype=float)
        vb = np.array([np.nan if v is None else v for v in per_clip[b][key]["values"]], dtype=float)
        both = ~np.isnan(va) & ~np.isnan(vb)
        if len(np.unique(clusters[both])) < 2:
            rows.append({"metric": key, "value": None, "ci95": None, "n": int(both.sum()),
                         "note": "fewer than 2 prompts scored in both"})
            continue
        d = clustered_mean_interval(va[both] - vb[both], clusters[both])
        rows.append({"metric": key, **d, "value_a": float(va[both].mean()), "value_b": float(vb[both].mean()),
                     "higher_is_better": models[a]["metrics"].get(key, {}).get("higher_is_better")})
    for key, rec in models[a]["metrics"].items():
        d = (rec.get("paired_diff_vs_models") or {}).get(b)
        if d is not None:
            rows.append({"metric": key, **{k: d.get(k) for k in ("value", "ci95", "se", "value_a", "value_b",
                                                                  "target")},
                         "higher_is_better": rec.get("higher_is_better")})
    return rows


def markdown(rows: list[dict], a: str, b: str) -> str:
    def f(x):
        return "–" if x is None else f"{x:.4g}"
    lines = [f"| metric | {a} | {b} | A − B [95% CI] | resolved? |", "|---|---|---|---|---|"]
    for r in rows:
        ci = r.get("ci95")
        resolved = "–" if ci is None else ("no (contains 0)" if ci[0] <= 0 <= ci[1] else "yes")
        interval = "–" if ci is None else f"{f(r['value'])} [{f(ci[0])}, {f(ci[1])}]"
        lines.append(f"| {r['metric']} | {f(r.get('value_a'))} | {f(r.get('value_b'))} | {interval} | {resolved} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("eval_json", type=Path)
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    result = json.loads(args.eval_json.read_text())
    rows = paired_rows(result, args.a, args.b)
    print(markdown(rows, args.a, args.b))
    if args.json:
        args.json.write_text(json.dumps({"eval": str(args.eval_json), "a": args.a, "b": args.b, "rows": rows},
                                        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
