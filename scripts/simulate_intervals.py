#!/usr/bin/env python
"""Coverage of the eval's intervals (distill.eval.stats) on synthetic Gaussian features, by simulation.

    python scripts/simulate_intervals.py --out runs/simulate_intervals.json     # n = 42, d = 128 (minutes)
    python scripts/simulate_intervals.py --quick                                # n = 16, d = 24 (seconds)

The model of an eval: G prompts x S seeds; every (prompt, seed) row has an effect shared by all the sets scored
on it (the teacher's clip and a student's clip from the same prompt and noise look alike), made of a per-prompt
part (shared by the prompt's seeds too) and a per-seed part, plus each set's own noise. The reference ("teacher")
is that row effect plus noise; students A and B are shifted and rescaled versions of it plus their own noise.

For each statistic the target is its expected value AT THE SAME n, bias included, estimated from `--truth-draws`
fresh datasets (its Monte Carlo standard error is printed beside it). Then `--trials` fresh datasets each get an
interval, and the coverage is the fraction that contain the target (with a Wilson 95% interval for that
fraction). `se ratio` is the mean reported standard error over the standard deviation of the point estimates
across trials: 1 is a calibrated standard error, below 1 too narrow, above 1 conservative.

Scenarios (one seed per prompt unless named "clustered"; the default method, "balanced-jackknife"):
  fvd             FVD(A, ref), jackknife over matched rows
  kvd             KVD(A, ref), the KID/torchmetrics estimator
  kvd_matched     KVD(A, ref) without the matched cross pairs (distill.eval.kvd, matched=True)
  fvd_diff        FVD(A, ref) - FVD(B, ref), all three sets deleted jointly
  kvd_diff        KVD(A, ref) - KVD(B, ref)
  fvd_clustered   FVD(A, ref) with S seeds per prompt, delete-one-prompt jackknife
  mean_clustered  clustered_mean_interval of per-clip paired differences with S seeds per prompt
  mean_naive      the same data with every clip treated as independent (what clustering fixes; not a check)
  fvd_plain_jk, fvd_second_order_jk, fvd_clustered_plain_jk, fvd_clustered_second_order_jk
                  fvd and fvd_clustered with the plain jackknife variance (method="jackknife", conservative) and
                  the fully second-order corrected one (too small), which bracket the default (not checks)
  bootstrap_old   the old independent percentile bootstrap of FVD (bootstrap_set_statistic; not a check)
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # many tiny matrix products: threads only add overhead (set before numpy loads)
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from distill.eval.frechet import frechet_distance_of_features  # noqa: E402
from distill.eval.kvd import kvd  # noqa: E402
from distill.eval.stats import (bootstrap_set_statistic, clustered_mean_interval, set_difference_interval,  # noqa: E402
                                set_interval)

CHECKED = ("fvd", "kvd", "kvd_matched", "fvd_diff", "kvd_diff", "fvd_clustered", "mean_clustered")
COMPARISONS = ("fvd_plain_jk", "fvd_second_order_jk", "fvd_clustered_plain_jk", "fvd_clustered_second_order_jk",
               "mean_naive", "bootstrap_old")


@dataclass
class Setting:
    n: int = 42                 # prompts (rows) in the one-seed-per-prompt scenarios
    d: int = 128                # feature dimension
    prompts: int = 14           # prompts in the clustered scenarios
    seeds_per_prompt: int = 3   # seeds per prompt in the clustered scenarios (prompts x seeds rows)
    trials: int = 300
    truth_draws: int = 2000
    bootstrap_trials: int = 40  # the old bootstrap is slow and only shown for comparison
    seed: int = 0


QUICK = Setting(n=16, d=24, prompts=8, seeds_per_prompt=3, trials=200, truth_draws=1000, bootstrap_trials=20)


class World:
    """A fixed synthetic feature space: a decaying covariance spectrum and the students' mean shifts."""

    def __init__(self, d: int, rng: np.random.Generator):
        self.d = d
        self.scale = 1.0 / np.sqrt(1.0 + np.arange(d) / 8.0)  # per-dimension sd of the shared row effect
        direction = rng.normal(size=d)
        direction /= np.linalg.norm(direction)
        # A's mean is off by a fifth of the shared effect's total sd, B's by 1.5 times that.
        self.shift_a = 0.2 * math.sqrt(float(np.sum(self.scale ** 2))) * direction
        self.shift_b = 1.5 * self.shift_a

    def draw(self, rng: np.random.Generator, prompts: int, seeds: int):
        """Matched sets (ref, A, B), each [prompts * seeds, d], rows ordered prompt-major; and the prompt ids."""
        d, rows = self.d, prompts * seeds
        prompt_effect = np.repeat(rng.normal(size=(prompts, d)) * 0.8, seeds, axis=0)
        seed_effect = rng.normal(size=(rows, d)) * 0.6
        shared = (prompt_effect + seed_effect) * self.scale
        noise = rng.normal(size=(3, rows, d)) * self.scale
        ref = shared + 0.5 * noise[0]
        a = self.shift_a + 0.9 * shared + 0.6 * noise[1]
        b = self.shift_b + 0.85 * shared + 0.65 * noise[2]
        return ref, a, b, np.repeat(np.arange(prompts), seeds)

    def clip_scores(self, rng: np.random.Generator, prompts: int, seeds: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-clip paired differences (student − teacher, say CLIP points) with a per-prompt effect; mean −1."""
        prompt_effect = np.repeat(rng.normal(0.0, 2.0, prompts), seeds)
        return -1.0 + prompt_effect + rng.normal(0.0, 2.0, prompts * seeds), np.repeat(np.arange(prompts), seeds)


def fvd(x, y) -> float:
    """FVD of two feature sets: `fvd_from_features`' number (to round-off, tested), computed in the n × n space."""
    return frechet_distance_of_features(y, x)


def kvd_matched(x, y) -> float:
    return kvd(x, y, matched=True)


def _statistics():
    """name -> (point statistic of (ref, a, b, prompt ids) data, interval of it), for the feature scenarios."""
    return {
        "fvd": (lambda r, a, b: fvd(a, r), lambda r, a, b, c: set_interval(fvd, a, r)),
        "kvd": (lambda r, a, b: kvd(a, r), lambda r, a, b, c: set_interval(kvd, a, r)),
        "kvd_matched": (lambda r, a, b: kvd_matched(a, r), lambda r, a, b, c: set_interval(kvd_matched, a, r)),
        "fvd_diff": (lambda r, a, b: fvd(a, r) - fvd(b, r), lambda r, a, b, c: set_difference_interval(fvd, a, b, r)),
        "kvd_diff": (lambda r, a, b: kvd(a, r) - kvd(b, r), lambda r, a, b, c: set_difference_interval(kvd, a, b, r)),
        "fvd_clustered": (lambda r, a, b: fvd(a, r), lambda r, a, b, c: set_interval(fvd, a, r, clusters=c)),
        "fvd_plain_jk": (lambda r, a, b: fvd(a, r), lambda r, a, b, c: set_interval(fvd, a, r, method="jackknife")),
        "fvd_second_order_jk": (lambda r, a, b: fvd(a, r),
                                lambda r, a, b, c: set_interval(fvd, a, r, method="second-order-jackknife")),
        "fvd_clustered_plain_jk": (lambda r, a, b: fvd(a, r),
                                   lambda r, a, b, c: set_interval(fvd, a, r, clusters=c, method="jackknife")),
        "fvd_clustered_second_order_jk": (
            lambda r, a, b: fvd(a, r),
            lambda r, a, b, c: set_interval(fvd, a, r, clusters=c, method="second-order-jackknife")),
    }


def _wilson(hits: int, trials: int, z: float = 1.96) -> list[float]:
    p = hits / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return [centre - half, centre + half]


def _summary(name: str, truth: float, truth_se: float, points, intervals, ses, rows: int, dim: int | None) -> dict:
    points, intervals, ses = np.asarray(points), np.asarray(intervals), np.asarray(ses)
    hits = int(np.sum((intervals[:, 0] <= truth) & (truth <= intervals[:, 1])))
    contains_point = int(np.sum((intervals[:, 0] <= points) & (points <= intervals[:, 1])))
    spread = float(points.std(ddof=1))
    return {
        "scenario": name, "rows": rows, "d": dim, "trials": len(points),
        "target": truth, "target_mc_se": truth_se,
        "coverage": hits / len(points), "coverage_ci95": _wilson(hits, len(points)),
        "contains_point": contains_point / len(points),
        "mean_half_width": float(np.mean(intervals[:, 1] - intervals[:, 0]) / 2),
        "point_sd": spread, "mean_se": float(ses.mean()) if ses.size else None,
        "se_ratio": float(ses.mean()) / spread if ses.size and spread > 0 else None,
        "checked": name in CHECKED,
    }


def _truth(world: World, rng, setting: Setting, prompts: int, seeds: int, point) -> tuple[float, float]:
    values = np.array([point(*world.draw(rng, prompts, seeds)[:3]) for _ in range(setting.truth_draws)])
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(values.size))


def run(setting: Setting, only: tuple[str, ...] | None = None, log=print) -> list[dict]:
    warnings.filterwarnings("ignore", message="feature_stats: only N=")  # n < d is the point of the exercise
    names = only or CHECKED + COMPARISONS
    unknown = sorted(set(names) - set(CHECKED + COMPARISONS))
    if unknown:
        raise ValueError(f"unknown scenario(s) {unknown}; known: {', '.join(CHECKED + COMPARISONS)}")
    world = World(setting.d, np.random.default_rng(setting.seed))
    results = []
    for name in names:
        start = time.perf_counter()
        # Each scenario its own stream, so --only gives the same figures as the full run.
        rng = np.random.default_rng([setting.seed, (CHECKED + COMPARISONS).index(name) + 1])
        clustered = name.startswith("fvd_clustered") or name.startswith("mean_")
        prompts, seeds = (setting.prompts, setting.seeds_per_prompt) if clustered else (setting.n, 1)
        rows = prompts * seeds
        if name in ("mean_clustered", "mean_naive"):
            truth, truth_se = -1.0, 0.0  # the mean of a mean is known exactly
            points, intervals, ses = [], [], []
            for _ in range(setting.trials):
                values, ids = world.clip_scores(rng, prompts, seeds)
                rec = clustered_mean_interval(values, ids if name == "mean_clustered" else None)
                points.append(rec["value"]), intervals.append(rec["ci95"]), ses.append(rec["se"])
            results.append(_summary(name, truth, truth_se, points, intervals, ses, rows, None))
        elif name == "bootstrap_old":
            point = _statistics()["fvd"][0]
            truth, truth_se = _truth(world, rng, setting, prompts, seeds, point)
            points, intervals = [], []
            for _ in range(setting.bootstrap_trials):
                ref, a, _b, _ids = world.draw(rng, prompts, seeds)
                points.append(fvd(a, ref))
                intervals.append(bootstrap_set_statistic(a, ref, fvd, n_boot=200))
            results.append(_summary(name, truth, truth_se, points, intervals, [], rows, setting.d))
        else:
            point, interval = _statistics()[name]
            truth, truth_se = _truth(world, rng, setting, prompts, seeds, point)
            points, intervals, ses = [], [], []
            for _ in range(setting.trials):
                ref, a, b, ids = world.draw(rng, prompts, seeds)
                rec = interval(ref, a, b, ids)
                points.append(rec["value"]), intervals.append(rec["ci95"]), ses.append(rec["se"])
            results.append(_summary(name, truth, truth_se, points, intervals, ses, rows, setting.d))
        results[-1]["seconds"] = round(time.perf_counter() - start, 1)
        log(_row(results[-1]))
    return results


HEADER = (f"{'scenario':<30}{'rows':>5}{'d':>5}{'trials':>7}{'target':>11}{'±mc':>8}{'coverage':>10}"
          f"{'(Wilson 95%)':>15}{'point in':>9}{'se ratio':>9}{'half-w':>9}{'s':>6}")


def _row(r: dict) -> str:
    lo, hi = r["coverage_ci95"]
    ratio = "-" if r["se_ratio"] is None else f"{r['se_ratio']:.2f}"
    return (f"{r['scenario']:<30}{r['rows']:>5}{r['d'] or '-':>5}{r['trials']:>7}{r['target']:>11.4g}"
            f"{r['target_mc_se']:>8.2g}{r['coverage']:>10.3f}{f'[{lo:.3f}, {hi:.3f}]':>15}"
            f"{r['contains_point']:>9.2f}{ratio:>9}{r['mean_half_width']:>9.3g}{r['seconds']:>6}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small n and d (seconds), as the fast test runs it")
    parser.add_argument("--trials", type=int, help="intervals per scenario (default 300, quick 200)")
    parser.add_argument("--truth-draws", type=int, help="fresh datasets behind each target (default 2000)")
    parser.add_argument("--only", action="append", help="run only this scenario (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the settings and results as JSON here")
    args = parser.parse_args(argv)
    setting = QUICK if args.quick else Setting()
    setting = Setting(**{**asdict(setting), "seed": args.seed,
                         **({"trials": args.trials} if args.trials else {}),
                         **({"truth_draws": args.truth_draws} if args.truth_draws else {})})
    print(f"setting: {asdict(setting)}")
    print(HEADER)
    results = run(setting, tuple(args.only) if args.only else None)
    checked = [r for r in results if r["checked"]]
    outside = [r["scenario"] for r in checked if not 0.90 <= r["coverage"] <= 0.99]
    print("all checked scenarios cover in 90-99%" if not outside else f"OUTSIDE 90-99%: {', '.join(outside)}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"setting": asdict(setting), "results": results}, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 1 if outside else 0


if __name__ == "__main__":
    sys.exit(main())
