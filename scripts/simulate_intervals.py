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
  *_shipped       fvd, kvd_matched, fvd_diff, kvd_diff and mean_clustered in the shipped suite's clustered design
                  (`--shipped-prompts` x `--shipped-seeds`, 87 x 2; delete-one-prompt jackknife)

The ranking world (`--ranking`, `RankingWorld`): the review's set-up of issue 23 (its 42 x 4 design), in the shipped
suite's design (87 prompts x 2 seeds; `--shipped-prompts 42 --shipped-seeds 4` is the review's own), d = 128;
a clip's features are a prompt effect (a third of the variance), a seed effect shared by every model sampled from
that prompt and noise (a third) and the model's own noise (a third). Student A is the teacher's distribution
shifted (population Fréchet distance 0.20); student B lost diversity, the teacher's distribution shrunk towards
its mean (population distance 0.357). The targets are POPULATION values, known exactly: the Fréchet distances in
closed form, the KVD's MMD² from the Gaussian moments of the cubic kernel (`cubic_kernel_mmd2`). Rows, all from
the same trials (one draw per trial feeds every row):
  fvd_corrected_a/_b     the bias-corrected FVD interval (set_interval(..., bias_correction=True)) of A / B
  fvd_plain_a/_b         the plain FVD interval (target: E at this n) read against the population distance
  fvd_diff_corrected     FVD(A) - FVD(B), bias-corrected, and how often it excludes 0 on the wrong / right side
  fvd_diff_plain         the same for the plain difference (what the eval printed before issue 23)
  kvd_a/_b, kvd_diff     KVD (matched, unbiased), plain
  kvd_diff_corrected     KVD(A) - KVD(B) with the jackknife correction (what the eval's model rows print)
Checks: every corrected row and the KVD rows cover in 90-99%; the corrected FVD and the KVD differences exclude 0
on the wrong side in at most 2.5% of trials.
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
from distill.eval.frechet import frechet_distance, frechet_distance_of_features  # noqa: E402
from distill.eval.kvd import kvd  # noqa: E402
from distill.eval.stats import (bootstrap_set_statistic, clustered_mean_interval, set_difference_interval,  # noqa: E402
                                set_interval, wilson_interval)

SHIPPED = ("fvd_shipped", "kvd_matched_shipped", "fvd_diff_shipped", "kvd_diff_shipped", "mean_shipped")
CHECKED = ("fvd", "kvd", "kvd_matched", "fvd_diff", "kvd_diff", "fvd_clustered", "mean_clustered") + SHIPPED
COMPARISONS = ("fvd_plain_jk", "fvd_second_order_jk", "fvd_clustered_plain_jk", "fvd_clustered_second_order_jk",
               "mean_naive", "bootstrap_old")
# each scenario's random stream is its place here (the order the first table was made in, new ones appended)
STREAMS = CHECKED[:7] + COMPARISONS + SHIPPED


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
    shipped_prompts: int = 87   # the shipped held-out suite (toy world v2): 87 prompts x 2 seeds
    shipped_seeds: int = 2
    ranking_trials: int = 200   # trials of the ranking world (issue 23's review set-up)


QUICK = Setting(n=16, d=24, prompts=8, seeds_per_prompt=3, trials=200, truth_draws=1000, bootstrap_trials=20,
                shipped_prompts=8, shipped_seeds=4)


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


class RankingWorld:
    """Issue 23's review set-up (module docstring): A shifted, B with lost diversity, known population values."""

    total_variance = 4.0  # tr Σ of a clip's features: E[plain FVD at 168 clips] is then ~4x A's population distance
    shift_distance = 0.20
    diversity_distance = 0.357

    def __init__(self, d: int, rng: np.random.Generator):
        self.d = d
        spectrum = 1.0 / (1.0 + np.arange(d) / 8.0)
        self.sd = np.sqrt(spectrum * self.total_variance / spectrum.sum())
        direction = rng.normal(size=d)
        self.shift = math.sqrt(self.shift_distance) * direction / np.linalg.norm(direction)
        # B = c·(a teacher-like clip): covariance c²Σ, Fréchet distance tr Σ·(1 − c)²
        self.shrink = 1.0 - math.sqrt(self.diversity_distance / self.total_variance)

    def draw(self, rng: np.random.Generator, prompts: int, seeds: int):
        """Matched sets (ref, A, B), each [prompts * seeds, d], prompt-major; and the prompt ids."""
        rows, third = prompts * seeds, math.sqrt(1.0 / 3.0)
        shared = np.repeat(rng.normal(size=(prompts, self.d)), seeds, axis=0) + rng.normal(size=(rows, self.d))
        own = rng.normal(size=(3, rows, self.d))
        ref = third * (shared + own[0]) * self.sd
        a = self.shift + third * (shared + own[1]) * self.sd
        b = self.shrink * third * (shared + own[2]) * self.sd
        return ref, a, b, np.repeat(np.arange(prompts), seeds)

    def population(self) -> dict[str, float]:
        """The population Fréchet distances and MMD²s of A and B to the reference (closed forms)."""
        cov, zero = np.diag(self.sd ** 2), np.zeros(self.d)
        return {"fvd_a": frechet_distance(self.shift, cov, zero, cov),
                "fvd_b": frechet_distance(zero, self.shrink ** 2 * cov, zero, cov),
                "kvd_a": cubic_kernel_mmd2(self.shift, cov, zero, cov),
                "kvd_b": cubic_kernel_mmd2(zero, self.shrink ** 2 * cov, zero, cov)}


def _cubic_kernel_mean(mu1, cov1, mu2, cov2) -> float:
    """E[(a·b/d + 1)³] for independent a ~ N(mu1, cov1), b ~ N(mu2, cov2). Given b, a·b ~ N(m, v) with m = mu1·b,
    v = bᵀcov1 b, so E[(a·b)³] = E[m³ + 3mv] = m̄³ + 3m̄·mu1ᵀcov2 mu1 + 3m̄·(mu2ᵀcov1 mu2 + tr(cov1 cov2))
    + 6·mu1ᵀcov2 cov1 mu2 and E[(a·b)²] = m̄² + mu1ᵀcov2 mu1 + mu2ᵀcov1 mu2 + tr(cov1 cov2), with m̄ = mu1·mu2."""
    d = mu1.shape[0]
    mbar, trace = float(mu1 @ mu2), float(np.trace(cov1 @ cov2))
    q1, q2 = float(mu1 @ cov2 @ mu1), float(mu2 @ cov1 @ mu2)
    third = mbar ** 3 + 3 * mbar * q1 + 3 * mbar * (q2 + trace) + 6 * float(mu1 @ cov2 @ cov1 @ mu2)
    second = mbar ** 2 + q1 + q2 + trace
    return third / d ** 3 + 3 * second / d ** 2 + 3 * mbar / d + 1.0


def cubic_kernel_mmd2(mu1, cov1, mu2, cov2) -> float:
    """The population MMD² under KVD's kernel (a·b/d + 1)³ between N(mu1, cov1) and N(mu2, cov2): what KVD
    estimates without bias."""
    return (_cubic_kernel_mean(mu1, cov1, mu1, cov1) + _cubic_kernel_mean(mu2, cov2, mu2, cov2)
            - 2 * _cubic_kernel_mean(mu1, cov1, mu2, cov2))


RANKING_ROWS = ("fvd_corrected_a", "fvd_corrected_b", "fvd_diff_corrected", "kvd_a", "kvd_b", "kvd_diff",
                "kvd_diff_corrected", "fvd_plain_a", "fvd_plain_b", "fvd_diff_plain")
RANKING_CHECKED = RANKING_ROWS[:7]  # the plain FVD rows show the problem; they are not checks


def run_ranking(setting: Setting, log=print) -> list[dict]:
    """The ranking world's rows (module docstring): one draw per trial, every interval from the project's own
    functions with the shipped design's clusters (prompts)."""
    world = RankingWorld(setting.d, np.random.default_rng([setting.seed, 1000]))
    truth = world.population()
    truth["fvd_diff"], truth["kvd_diff"] = truth["fvd_a"] - truth["fvd_b"], truth["kvd_a"] - truth["kvd_b"]
    log(f"ranking world: population FVD A {truth['fvd_a']:.4g}, B {truth['fvd_b']:.4g}; population KVD (MMD²) "
        f"A {truth['kvd_a']:.4g}, B {truth['kvd_b']:.4g}")
    rng = np.random.default_rng([setting.seed, 1001])
    prompts, seeds = setting.shipped_prompts, setting.shipped_seeds
    got: dict[str, list[dict]] = {name: [] for name in RANKING_ROWS}
    start = time.perf_counter()
    for _ in range(setting.ranking_trials):
        ref, a, b, ids = world.draw(rng, prompts, seeds)
        f = set_difference_interval(fvd, a, b, ref, clusters=ids, bias_correction=True, components=True)
        k = set_difference_interval(kvd_matched, a, b, ref, clusters=ids, bias_correction=True, components=True)
        plain = {"fvd_plain_a": f["a"], "fvd_plain_b": f["b"], "fvd_diff_plain": f,
                 "kvd_a": k["a"], "kvd_b": k["b"], "kvd_diff": k}
        for name, rec in plain.items():
            got[name].append({**rec["at_n"], "se": rec["se"]})
        for name, rec in {"fvd_corrected_a": f["a"], "fvd_corrected_b": f["b"], "fvd_diff_corrected": f,
                          "kvd_diff_corrected": k}.items():
            got[name].append(rec)
    seconds = round(time.perf_counter() - start, 1)
    results = []
    for name in RANKING_ROWS:
        key = ("fvd" if name.startswith("fvd") else "kvd") + ("_diff" if "_diff" in name else "_" + name[-1])
        recs = got[name]
        r = _summary(name, truth[key], 0.0, [x["value"] for x in recs], [x["ci95"] for x in recs],
                     [x["se"] for x in recs], prompts * seeds, setting.d)
        r["checked"], r["seconds"] = name in RANKING_CHECKED, seconds
        r["target_kind"] = "population"
        if "_diff" in name:
            intervals = np.array([x["ci95"] for x in recs])
            wrong = (intervals[:, 0] > 0) if truth[key] < 0 else (intervals[:, 1] < 0)
            right = (intervals[:, 1] < 0) if truth[key] < 0 else (intervals[:, 0] > 0)
            r["wrong_direction"], r["right_direction"] = float(wrong.mean()), float(right.mean())
            r["wrong_direction_ci95"] = _wilson(int(wrong.sum()), len(recs))
            r["right_direction_ci95"] = _wilson(int(right.sum()), len(recs))
            r["mean_point"] = float(np.mean([x["value"] for x in recs]))
        results.append(r)
        log(_row(r) + (f"   wrong side {r['wrong_direction']:.3f} {_fmt_ci(r['wrong_direction_ci95'])}, right side "
                       f"{r['right_direction']:.3f}" if "_diff" in name else ""))
    return results


def _fmt_ci(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def fvd(x, y) -> float:
    """FVD of two feature sets: `fvd_from_features`' number (to round-off, tested), computed in the n × n space."""
    return frechet_distance_of_features(y, x)


def kvd_matched(x, y) -> float:
    return kvd(x, y, matched=True)


def _statistics():
    """name -> (point statistic of (ref, a, b, prompt ids) data, interval of it), for the feature scenarios."""
    return {
        "fvd_shipped": (lambda r, a, b: fvd(a, r), lambda r, a, b, c: set_interval(fvd, a, r, clusters=c)),
        "kvd_matched_shipped": (lambda r, a, b: kvd_matched(a, r),
                                lambda r, a, b, c: set_interval(kvd_matched, a, r, clusters=c)),
        "fvd_diff_shipped": (lambda r, a, b: fvd(a, r) - fvd(b, r),
                             lambda r, a, b, c: set_difference_interval(fvd, a, b, r, clusters=c)),
        "kvd_diff_shipped": (lambda r, a, b: kvd_matched(a, r) - kvd_matched(b, r),
                             lambda r, a, b, c: set_difference_interval(kvd_matched, a, b, r, clusters=c)),
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


def _wilson(hits: int, trials: int) -> list[float]:
    return list(wilson_interval(hits, trials))


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
        "checked": name in CHECKED, "target_kind": "expected value at this n",
    }


def _truth(world: World, rng, setting: Setting, prompts: int, seeds: int, point) -> tuple[float, float]:
    values = np.array([point(*world.draw(rng, prompts, seeds)[:3]) for _ in range(setting.truth_draws)])
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(values.size))


def run(setting: Setting, only: tuple[str, ...] | None = None, log=print) -> list[dict]:
    warnings.filterwarnings("ignore", message="feature_stats: only N=")  # n < d is the point of the exercise
    names = only or CHECKED + COMPARISONS + ("ranking",)
    unknown = sorted(set(names) - set(CHECKED + COMPARISONS + ("ranking",)))
    if unknown:
        raise ValueError(f"unknown scenario(s) {unknown}; known: {', '.join(CHECKED + COMPARISONS)}, ranking")
    world = World(setting.d, np.random.default_rng(setting.seed))
    results = []
    for name in names:
        if name == "ranking":
            results += run_ranking(setting, log)
            continue
        start = time.perf_counter()
        # Each scenario its own stream, so --only gives the same figures as the full run.
        rng = np.random.default_rng([setting.seed, STREAMS.index(name) + 1])
        clustered = name.startswith("fvd_clustered") or name in ("mean_clustered", "mean_naive")
        prompts, seeds = (setting.prompts, setting.seeds_per_prompt) if clustered else (setting.n, 1)
        if name.endswith("_shipped"):
            prompts, seeds = setting.shipped_prompts, setting.shipped_seeds
        rows = prompts * seeds
        if name in ("mean_clustered", "mean_naive", "mean_shipped"):
            truth, truth_se = -1.0, 0.0  # the mean of a mean is known exactly
            points, intervals, ses = [], [], []
            for _ in range(setting.trials):
                values, ids = world.clip_scores(rng, prompts, seeds)
                rec = clustered_mean_interval(values, None if name == "mean_naive" else ids)
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
    parser.add_argument("--only", action="append", help="run only this scenario (repeatable; `ranking`: the "
                                                            "ranking world's rows)")
    parser.add_argument("--ranking-trials", type=int, help="trials of the ranking world (default 200)")
    parser.add_argument("--shipped-prompts", type=int, help="prompts of the *_shipped and ranking rows (default 42)")
    parser.add_argument("--shipped-seeds", type=int, help="seeds per prompt of those rows (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the settings and results as JSON here")
    args = parser.parse_args(argv)
    setting = QUICK if args.quick else Setting()
    setting = Setting(**{**asdict(setting), "seed": args.seed,
                         **({"trials": args.trials} if args.trials else {}),
                         **({"truth_draws": args.truth_draws} if args.truth_draws else {}),
                         **({"ranking_trials": args.ranking_trials} if args.ranking_trials else {}),
                         **({"shipped_prompts": args.shipped_prompts} if args.shipped_prompts else {}),
                         **({"shipped_seeds": args.shipped_seeds} if args.shipped_seeds else {})})
    command = "python scripts/simulate_intervals.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"command: {command}")
    print(f"setting: {asdict(setting)}")
    print(HEADER)
    start = time.process_time()
    results = run(setting, tuple(args.only) if args.only else None)
    failures = check(results)
    print("all checks pass (coverage 90-99%; wrong side of 0 at most 2.5%)" if not failures
          else "FAILED: " + "; ".join(failures))
    print(f"CPU time {time.process_time() - start:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"command": command, "setting": asdict(setting), "results": results},
                                       indent=2) + "\n")
        print(f"wrote {args.out}")
    return 1 if failures else 0


def check(results: list[dict]) -> list[str]:
    """What fails the run: a checked row covering outside 90-99%, or a checked ranking row (a model-vs-model
    difference the eval prints) excluding 0 on the wrong side in more than 2.5% of trials."""
    failures = [f"{r['scenario']} covers {r['coverage']:.3f}" for r in results
                if r["checked"] and not 0.90 <= r["coverage"] <= 0.99]
    failures += [f"{r['scenario']} wrong side {r['wrong_direction']:.3f}" for r in results
                 if r["checked"] and r.get("wrong_direction", 0.0) > 0.025]
    return failures


if __name__ == "__main__":
    sys.exit(main())
