"""Confidence intervals for eval metrics.

Two families live here:

- Set-level statistics (FVD, KVD, their model-vs-model differences): `set_interval`, `set_difference_interval`.
  The feature sets are MATCHED (row i of every set comes from the same prompt and seed), so they are resampled
  jointly, and the interval is a delete-one (or delete-one-cluster) jackknife standard error with a Student-t
  interval. Two targets, and every record names its own (`target`): the expected value of the same statistic at
  the same n (the plain statistic, centred on the point estimate), or, with `bias_correction=True`, the
  population value (the jackknife bias-corrected statistic: FVD is biased at n ~ d by an amount that depends on
  each model's covariance, so only the corrected one ranks two models by their population distances). Why a
  jackknife and not a bootstrap, and the coverages measured by `scripts/simulate_intervals.py`, are in
  docs/eval-statistics.md.
- Per-clip metrics: `clustered_mean_interval` (prompts as clusters, so several seeds per prompt count once per
  prompt), and the older percentile bootstrap helpers `bootstrap_ci`, `paired_diff_ci`, `metric_record`.
- Multiplicity: an eval prints dozens of marginal 95% intervals. `count_intervals` counts them; `adjust_family`
  gives a family of them (the model-vs-model rows) Holm-adjusted p-values and Bonferroni simultaneous intervals.

Everything is deterministic: the jackknife has no randomness, and the bootstrap helpers use a fresh
`numpy.random.default_rng(seed)` per call, so the same values always give the same interval and `eval.json`
files are reproducible byte for byte.

Records built here follow the `eval.json` contract (DESIGN.md, schema "distill.eval/1"):
`{"value", "ci95": [lo, hi], "n", "higher_is_better", "paired_diff_vs_teacher": {"value", "ci95"},
"ratio_to_teacher"}`, with plain Python floats and `None` in place of NaN/inf so `json.dumps` never writes
the non-standard `NaN` token.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from scipy.special import ndtri, stdtr, stdtrit

CI_LEVEL = 0.95  # the level behind every "ci95" in eval.json


def _as_values(values: Sequence[float] | np.ndarray, what: str = "values") -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D sequence of per-clip values, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{what}: no values; a confidence interval needs at least one clip")
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:
        raise ValueError(f"{what}: {bad} of {arr.size} values are NaN or infinite; fix the metric, not the CI")
    return arr


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _percentile_interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(samples, [tail, 1.0 - tail])
    return float(lo), float(hi)


def _resample_indices(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    return rng.integers(0, n, size=(n_boot, n))


def _check_n_boot(n_boot: int) -> None:
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.mean,
    n_boot: int = 1000,
    level: float = CI_LEVEL,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over per-clip `values` (clips resampled with replacement)."""
    arr = _as_values(values)
    _check_level(level)
    _check_n_boot(n_boot)
    rng = np.random.default_rng(seed)
    idx = _resample_indices(rng, arr.size, n_boot)
    samples = np.array([statistic(arr[i]) for i in idx], dtype=np.float64)
    return _percentile_interval(samples, level)


def paired_diff_ci(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.mean,
    n_boot: int = 1000,
    level: float = CI_LEVEL,
    seed: int = 0,
) -> tuple[float, tuple[float, float]]:
    """`statistic(a) - statistic(b)` and its bootstrap interval, for `a` (student) and `b` (teacher) scored on
    the same prompt/seed pairs in the same order.

    Pair indices are resampled, so both sides of a pair always travel together: the clip-to-clip spread that
    student and teacher share (an easy prompt is easy for both) cancels, and a small consistent shift is
    resolved that two independent intervals would not separate. Identical inputs give exactly `(0.0, (0.0,
    0.0))`.
    """
    a_arr = _as_values(a, "a (student values)")
    b_arr = _as_values(b, "b (teacher values)")
    if a_arr.size != b_arr.size:
        raise ValueError(
            f"paired_diff_ci: a has {a_arr.size} values and b has {b_arr.size}; a paired difference needs the "
            "same prompt/seed pairs in the same order on both sides"
        )
    _check_level(level)
    _check_n_boot(n_boot)
    diff = float(statistic(a_arr) - statistic(b_arr))
    rng = np.random.default_rng(seed)
    idx = _resample_indices(rng, a_arr.size, n_boot)
    samples = np.array([statistic(a_arr[i]) - statistic(b_arr[i]) for i in idx], dtype=np.float64)
    return diff, _percentile_interval(samples, level)


def bootstrap_set_statistic(
    x: np.ndarray,
    y: np.ndarray | None,
    fn: Callable[..., float],
    n_boot: int = 200,
    level: float = CI_LEVEL,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a statistic of whole sets, resampling the rows of `x` and of `y`
    independently; with `y=None` the statistic is of one set, `fn(x)`.

    Superseded by `set_interval` for matched sets and for FVD/KVD, and kept only until the harness stops calling
    it. It is wrong for both: independent resampling breaks the clip-for-clip pairing of matched sets (and mixes
    prompts, inflating a distance), and a resample with replacement has only ~63% distinct rows, so a statistic
    whose small-sample bias depends on the number of distinct rows (the Fréchet distance at n < d) is shifted in
    every resample and the interval can exclude its own point estimate (docs/eval-statistics.md).
    """
    x_arr = np.asarray(x)
    if x_arr.ndim < 1 or x_arr.shape[0] == 0:
        raise ValueError(f"bootstrap_set_statistic: x needs at least one row, got shape {x_arr.shape}")
    y_arr = None if y is None else np.asarray(y)
    if y_arr is not None and (y_arr.ndim < 1 or y_arr.shape[0] == 0):
        raise ValueError(f"bootstrap_set_statistic: y needs at least one row, got shape {y_arr.shape}")
    _check_level(level)
    _check_n_boot(n_boot)
    rng = np.random.default_rng(seed)
    samples = np.empty(n_boot, dtype=np.float64)
    for k in range(n_boot):
        xs = x_arr[rng.integers(0, x_arr.shape[0], size=x_arr.shape[0])]
        if y_arr is None:
            samples[k] = fn(xs)
        else:
            samples[k] = fn(xs, y_arr[rng.integers(0, y_arr.shape[0], size=y_arr.shape[0])])
    if not np.all(np.isfinite(samples)):
        raise ValueError("bootstrap_set_statistic: the statistic returned NaN or inf on a resampled set")
    return _percentile_interval(samples, level)


SET_INTERVAL_METHODS = ("balanced-jackknife", "second-order-jackknife", "jackknife")
SECOND_ORDER_PAIRS = 200  # delete-two evaluations behind the correction; all pairs when there are fewer


def _cluster_ids(clusters, n: int, what: str) -> tuple[np.ndarray, int]:
    """Cluster labels → integer ids 0..G-1 (in order of first appearance) and G; None → one cluster per row."""
    if clusters is None:
        return np.arange(n), n
    labels = np.asarray(clusters)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"{what}: clusters must be one label per row ({n}), got shape {labels.shape}")
    _, first, ids = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # relabel so cluster 0 is the first one met
    return order[ids.reshape(-1)], int(first.size)


def _t_interval(value: float, se: float, groups: int, level: float) -> tuple[float, float]:
    """value ± t_{G-1, (1+level)/2}·se; the t quantile because the jackknife variance has G-1 degrees of freedom
    (exactly so for a mean of G independent clusters)."""
    half = float(stdtrit(groups - 1, 0.5 + level / 2.0)) * se
    return value - half, value + half


def _matched_sets(sets: tuple, what: str) -> list[np.ndarray]:
    if not sets:
        raise ValueError(f"{what}: give at least one feature set")
    arrays = []
    for k, s in enumerate(sets):
        if hasattr(s, "detach"):  # a torch tensor
            s = s.detach().cpu().double().numpy()
        arr = np.asarray(s, dtype=np.float64)
        if arr.ndim < 1 or arr.shape[0] == 0:
            raise ValueError(f"{what}: set {k} needs at least one row, got shape {arr.shape}")
        arrays.append(arr)
    sizes = [a.shape[0] for a in arrays]
    if len(set(sizes)) != 1:
        raise ValueError(f"{what}: matched sets must have the same number of rows (row i of each from the same "
                         f"prompt and seed), got {sizes}")
    return arrays


TARGET_AT_N = "expected value at this n"
TARGET_POPULATION = "population value"
TARGET_POPULATION_DISTANCE = "population distance"
TARGET_POPULATION_MEAN = "population mean over prompts like these and fresh seeds"
# The plain statistic's bias is reported as mattering when the jackknife's estimate of it reaches this many standard
# errors: a 95% interval shifted off the population value by half a standard error covers it about 92% of the time
# (P(|Z + 0.5| < 1.96)), and the shortfall grows fast beyond (0.65 se: 90%; 1 se: 83%). See `bias_matters`.
BIAS_SE_FRACTION = 0.5
BIAS_CORRECTION = "jackknife (Quenouille 1956; Tukey 1958)"


def _jackknife_values(statistic, arrays, ids, groups, method, seed, pairs):
    """The statistic (a scalar or a vector of them) on the full sets, with each group left out [G, k], and for the
    delete-two methods with each chosen pair of groups left out [P, k] with the pairs [P, 2]."""
    value = _finite_vector(statistic(*arrays), "on the full sets")
    leave_out = np.array([_finite_vector(statistic(*(a[ids != g] for a in arrays)), f"with cluster {g} left out")
                          for g in range(groups)])
    if method == "jackknife":
        return value, leave_out, None, None
    all_pairs = groups * (groups - 1) // 2
    if all_pairs <= pairs:
        chosen = np.array(np.triu_indices(groups, k=1)).T
    else:
        rng = np.random.default_rng(seed)
        flat = rng.choice(all_pairs, size=int(pairs), replace=False)
        rows, cols = np.triu_indices(groups, k=1)
        chosen = np.stack([rows[flat], cols[flat]], axis=1)
    both_out = np.array([_finite_vector(statistic(*(a[(ids != g) & (ids != h)] for a in arrays)),
                                        f"with clusters {g} and {h} left out") for g, h in chosen])
    return value, leave_out, both_out, chosen


def _finite_vector(value, what: str) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"set_interval: the statistic is {arr.tolist()} {what}")
    return arr


def _jackknife_variance(value: float, leave_out: np.ndarray, both_out: np.ndarray | None,
                        chosen: np.ndarray | None, groups: int, method: str) -> float:
    """The variance estimate of `method` (see `set_interval`) for one scalar statistic."""
    variance = (groups - 1) / groups * float(np.sum((leave_out - leave_out.mean()) ** 2))
    if method == "jackknife":
        return variance
    second = value - leave_out[chosen[:, 0]] - leave_out[chosen[:, 1]] + both_out
    second_order = groups * (groups - 1) // 2 * float(np.mean(second ** 2))
    weight = 0.5 if method == "balanced-jackknife" else 1.0
    return max(variance - weight * second_order, variance / 2)


def _set_record(value, leave_out, both_out, chosen, groups, n, level, method, clusters, bias_correction) -> dict:
    """One scalar statistic's record from its jackknife values (`set_interval` says what each field is)."""
    se = math.sqrt(_jackknife_variance(value, leave_out, both_out, chosen, groups, method))
    lo, hi = _t_interval(value, se, groups, level)
    record = {"value": float(value), "ci95": [lo, hi], "se": se, "n": n, "n_clusters": groups,
              "method": method if clusters is None else f"cluster-{method}", "target": TARGET_AT_N}
    if not bias_correction:
        return record
    corrected = groups * value - (groups - 1) * float(leave_out.mean())
    lo_c, hi_c = _t_interval(corrected, se, groups, level)
    return {**record, "value": corrected, "ci95": [lo_c, hi_c], "target": TARGET_POPULATION,
            "bias_correction": BIAS_CORRECTION, "bias": float(value) - corrected,
            "at_n": {"value": float(value), "ci95": [lo, hi], "target": TARGET_AT_N}}


def _prepare(sets, what, level, method, clusters):
    _check_level(level)
    if method not in SET_INTERVAL_METHODS:
        raise ValueError(f"{what}: unknown method {method!r}; known: {', '.join(SET_INTERVAL_METHODS)}")
    arrays = _matched_sets(sets, what)
    n = arrays[0].shape[0]
    ids, groups = _cluster_ids(clusters, n, what)
    if groups < 2 or (method != "jackknife" and groups < 3):
        raise ValueError(f"{what}: method {method!r} needs at least {2 if method == 'jackknife' else 3} "
                         f"independent rows or clusters, got {groups}")
    return arrays, n, ids, groups


def set_interval(
    statistic: Callable[..., float],
    *sets,
    level: float = CI_LEVEL,
    method: str = "balanced-jackknife",
    seed: int = 0,
    clusters: Sequence | np.ndarray | None = None,
    pairs: int = SECOND_ORDER_PAIRS,
    bias_correction: bool = False,
) -> dict:
    """Point estimate and interval of `statistic(*sets)` for one or more MATCHED feature sets ([n, d] each, row
    i of every set from the same prompt and seed), e.g. `set_interval(fvd_from_features, student, teacher)`.

    Rows are deleted JOINTLY (the same index from every set), or one whole cluster at a time when `clusters`
    (one label per row, e.g. the prompt id when a suite has several seeds per prompt) is given: the rows of a
    cluster are not independent of each other, the clusters are. With G rows or clusters and θ_(g) the
    statistic with g left out, the jackknife variance is v = (G−1)/G · Σ_g (θ_(g) − θ̄)².

    - "jackknife": se = √v. Conservative: by Efron & Stein (1981), v counts the statistic's k-th order Hoeffding
      component k times (linear 1×, pairwise 2×, triple 3×, ...), and for the Fréchet distance and KVD at
      n < d the higher-order part is large: this interval covered 98–100% at n = 42, d = 128.
    - "second-order-jackknife": v − q, with q the second-order part estimated from delete-two values,
      q = C(G,2) · mean over pairs {g, h} of (θ − θ_(g) − θ_(h) + θ_(gh))² (all pairs, or `pairs` pairs drawn
      with `seed`). q counts the k-th component C(k,2) times, so v − q counts them k − C(k,2) = 1, 1, 0, −2, ...
      times: too small (it covered 89–94% in the same simulation).
    - "balanced-jackknife" (default): v − q/2, the midpoint of the two, counting the components 1, 1.5, 1.5, 1,
      0, ... times: at least once up to order 4, so still conservative unless components of order 5 and up
      matter, and far less so than the plain jackknife (docs/eval-statistics.md has its measured coverage).
    Estimates are floored at v/2.

    Which value the interval is about (the record's `target`):
    - `bias_correction=False`: the expected value of the same statistic at the same n, bias included
      (TARGET_AT_N). The interval is the point ± t_{G−1}·se, so it always contains the point.
    - `bias_correction=True`: the POPULATION value (TARGET_POPULATION), e.g. the Fréchet distance between the two
      distributions, which is what ranks two models: FVD's small-sample bias depends on each model's covariance,
      so E[FVD at n] of two models can be ordered the opposite way to their population distances. The value is
      the jackknife bias-corrected estimate θ_J = G·θ̂ − (G−1)·mean_g θ_(g) (Quenouille 1956; Tukey's
      pseudo-value mean, 1958; Efron & Tibshirani 1993, §10.5), which removes the O(1/n) term of the bias
      exactly. It is FID∞'s idea (Chong & Forsyth 2020: FID is linear in 1/n, extrapolate to 1/n = 0) with the
      line drawn through n and n − 1 using every delete-one subset, and it is chosen over FID∞'s fit through
      random subsets of several sizes because: it reuses the leave-out values the interval computes anyway
      (no extra cost); it is deterministic; it needs no subsets far below n, where at our n ~ d the bias is no
      longer linear in 1/n; and for a U-statistic (KVD with one seed per prompt) it is exactly zero, as it should
      be. The interval is θ_J ± t_{G−1}·se with the same se (Tukey's pseudo-value interval). `bias` = θ̂ − θ_J,
      and `at_n` holds the plain statistic with its interval (target TARGET_AT_N). Corrected values of a
      distance can be negative (a model as good as its reference); they are reported as they are, like KVD.
    docs/eval-statistics.md has the simulations that measure both coverages.

    Returns {"value", "ci95": [lo, hi] (at `level`), "se", "n" (rows), "n_clusters", "method", "target"}, plus
    "bias_correction", "bias" and "at_n" when corrected.
    """
    arrays, n, ids, groups = _prepare(sets, "set_interval", level, method, clusters)
    value, leave_out, both_out, chosen = _jackknife_values(statistic, arrays, ids, groups, method, seed, pairs)
    if value.size != 1:
        raise ValueError(f"set_interval: the statistic must return one number, got {value.size}")
    return _set_record(value[0], leave_out[:, 0], None if both_out is None else both_out[:, 0], chosen, groups, n,
                       level, method, clusters, bias_correction)


def set_difference_interval(
    statistic: Callable[..., float],
    a,
    b,
    ref,
    level: float = CI_LEVEL,
    method: str = "balanced-jackknife",
    seed: int = 0,
    clusters: Sequence | np.ndarray | None = None,
    pairs: int = SECOND_ORDER_PAIRS,
    bias_correction: bool = False,
    components: bool = False,
) -> dict:
    """Paired interval of `statistic(a, ref) − statistic(b, ref)`: two models (a, b) against the same reference,
    all three sets matched row for row and resampled jointly, e.g. FVD(student A, teacher) − FVD(student B,
    teacher). Their shared dependence on the reference sample cancels, which two separate intervals cannot
    show. Same arguments and return value as `set_interval` (`bias_correction=True`: the difference of the
    population values, which is what a ranking needs; the correction is linear, so it is the difference of the
    two corrected statistics); "value" is the difference, and "value_a" and "value_b" are the two statistics it
    is made of (corrected when it is). `components=True` adds "a" and "b": each statistic's own record from the
    same leave-out values (no extra cost)."""
    arrays, n, ids, groups = _prepare((a, b, ref), "set_difference_interval", level, method, clusters)
    value, leave_out, both_out, chosen = _jackknife_values(
        lambda x, y, r: (statistic(x, r), statistic(y, r)), arrays, ids, groups, method, seed, pairs)
    parts = [_set_record(value[k], leave_out[:, k], None if both_out is None else both_out[:, k], chosen, groups,
                         n, level, method, clusters, bias_correction) for k in (0, 1)]
    diff = np.array([1.0, -1.0])
    record = _set_record(value @ diff, leave_out @ diff, None if both_out is None else both_out @ diff, chosen,
                         groups, n, level, method, clusters, bias_correction)
    record["value_a"], record["value_b"] = parts[0]["value"], parts[1]["value"]
    if bias_correction:
        record["at_n"]["value_a"] = parts[0]["at_n"]["value"]
        record["at_n"]["value_b"] = parts[1]["at_n"]["value"]
    if components:
        record["a"], record["b"] = parts
    return record


def bias_matters(record: dict, fraction: float = BIAS_SE_FRACTION) -> bool:
    """Whether a bias-corrected record's estimated bias is large enough that the plain statistic and its interval
    (`at_n`) misdescribe the population value: |bias| ≥ `fraction` · se. Why this and not n < d: the bias of the
    Fréchet distance falls like 1/n but so does the noise of the distance between two close models (its
    standard error is O(1/n) when the distance is near 0, O(1/√n) otherwise), so whether the bias matters is a
    ratio of two things that both depend on the models, not a property of n and d alone. In the ranking world of
    docs/eval-statistics.md (n = 168 > d = 128, where the old n < d warning was silent) the bias is about 40-50
    standard errors. At half a standard error a plain 95% interval read as covering the population value covers it
    about 92% of the time."""
    bias, se = record.get("bias"), record.get("se")
    if bias is None or se is None:
        return False
    return abs(bias) >= fraction * se


# --- multiplicity: one eval prints many intervals -----------------------------------------------------------------

def wilson_interval(hits: int, trials: int, level: float = CI_LEVEL) -> tuple[float, float]:
    """Wilson's score interval (Wilson 1927) for a rate of `hits` in `trials` independent trials: the interval of
    rates whose normal-approximation test does not reject the observed share. Unlike the Wald interval it stays
    inside [0, 1] and is not empty at 0 or n hits (at 0 of n its upper end is z²/(n + z²): 0.060 at n = 60)."""
    if trials < 1 or not 0 <= hits <= trials:
        raise ValueError(f"wilson_interval: {hits} hits in {trials} trials")
    _check_level(level)
    z = float(ndtri(0.5 + level / 2))
    p = hits / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return (0.0 if hits == 0 else centre - half), (1.0 if hits == trials else centre + half)


def t_p_value(value: float, se: float, df: int) -> float:
    """Two-sided p-value of "the target is 0" from an estimate, its standard error and the t interval's degrees
    of freedom (G − 1): the p-value that matches the record's ci95 (p < 0.05 exactly when 0 is outside it)."""
    if se <= 0.0:
        return 0.0 if value != 0.0 else 1.0
    return float(2.0 * stdtr(df, -abs(value) / se))


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm's (1979) step-down adjusted p-values: sort ascending, p̃_(k) = max_{j ≤ k} min(1, (m − j + 1)·p_(j)),
    returned in the input order. Rejecting where p̃ < α controls the family-wise error rate at α for any
    dependence between the tests (the model pairs of one eval share the reference and the models), and rejects
    everything Bonferroni's m·p does and possibly more."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1 or np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError(f"holm_adjusted: p-values must be a 1-D sequence in [0, 1], got {p_values!r}")
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(stepped)
    return adjusted.tolist()


def bonferroni_interval(value: float, se: float, df: int, family_size: int,
                        level: float = CI_LEVEL) -> list[float]:
    """The interval at level 1 − (1 − level)/m: m such intervals all cover their targets together with
    probability ≥ `level` (Bonferroni's inequality, any dependence). Wider than the marginal one for m > 1."""
    _check_level(level)
    if family_size < 1:
        raise ValueError(f"bonferroni_interval: the family needs at least one interval, got {family_size}")
    return list(_t_interval(value, se, df + 1, 1.0 - (1.0 - level) / family_size))


def adjust_family(records: Sequence[dict], level: float = CI_LEVEL) -> list[dict]:
    """Family-wise adjustments for a family of interval records (the model-vs-model rows an eval prints), each
    with "value", "se" and "n_clusters": per record its p-value against 0 (`t_p_value`), Holm's adjusted p-value,
    whether Holm resolves it (0 excluded at family-wise level 1 − `level`) and its Bonferroni simultaneous
    interval. Records without an se get None in every field and do not count in the family."""
    usable = [k for k, r in enumerate(records) if r.get("se") is not None and r.get("value") is not None
              and r.get("n_clusters") is not None]
    out = [{"p": None, "p_holm": None, "resolved_holm": None, "ci95_bonferroni": None, "family_size": len(usable)}
           for _ in records]
    if not usable:
        return out
    p = [t_p_value(records[k]["value"], records[k]["se"], records[k]["n_clusters"] - 1) for k in usable]
    for k, p_k, p_holm in zip(usable, p, holm_adjusted(p)):
        r = records[k]
        out[k].update(p=p_k, p_holm=p_holm, resolved_holm=p_holm < 1.0 - level,
                      ci95_bonferroni=bonferroni_interval(r["value"], r["se"], r["n_clusters"] - 1, len(usable),
                                                          level))
    return out


def count_intervals(obj, skip: tuple[str, ...] = ("at_n",)) -> int:
    """How many intervals (non-null "ci95" entries, nested records included) an eval.json-like structure holds;
    sub-records under a key in `skip` are not counted (`at_n`: the plain difference kept beside a corrected row,
    which no report prints)."""
    if isinstance(obj, dict):
        own = 1 if isinstance(obj.get("ci95"), (list, tuple)) and None not in obj["ci95"] else 0
        return own + sum(count_intervals(v, skip) for k, v in obj.items() if k != "ci95" and k not in skip)
    if isinstance(obj, (list, tuple)):
        return sum(count_intervals(v, skip) for v in obj)
    return 0


def clustered_mean_interval(
    values: Sequence[float] | np.ndarray,
    clusters: Sequence | np.ndarray | None = None,
    level: float = CI_LEVEL,
) -> dict:
    """Mean of per-clip values (or of paired per-clip differences, e.g. CLIP score student − teacher on the same
    prompt and seed) with an interval that accounts for prompt AND seed variation.

    `clusters` gives each value's prompt (any hashable labels). Seeds of one prompt share the prompt's effect,
    so they are not independent draws: the standard error is the delete-one-cluster jackknife's, which for a
    mean is the cluster-robust (sandwich) standard error, and the interval uses t with G−1 degrees of freedom
    (G prompts). With one value per prompt (or `clusters=None`) it is exactly the ordinary t interval of a mean,
    mean ± t_{n−1}·s/√n. Returns {"value", "ci95", "se", "n" (values), "n_clusters", "method"}.
    """
    arr = _as_values(values)
    _check_level(level)
    ids, groups = _cluster_ids(clusters, arr.size, "clustered_mean_interval")
    value = float(arr.mean())
    if groups < 2:
        raise ValueError(f"clustered_mean_interval: an interval needs at least 2 clusters (prompts), got {groups}")
    sums = np.bincount(ids, weights=arr, minlength=groups)
    counts = np.bincount(ids, minlength=groups)
    leave_out = (arr.sum() - sums) / (arr.size - counts)
    se = math.sqrt((groups - 1) / groups * float(np.sum((leave_out - leave_out.mean()) ** 2)))
    lo, hi = _t_interval(value, se, groups, level)
    return {"value": value, "ci95": [lo, hi], "se": se, "n": int(arr.size), "n_clusters": groups,
            "method": "jackknife" if clusters is None else "cluster-jackknife"}


def within_prompt_se(values: Sequence[float] | np.ndarray, clusters: Sequence | np.ndarray) -> float | None:
    """The standard error of the mean over clips GIVEN the prompts: what a re-run on fresh seeds of the same prompts
    varies by. Only the seed-to-seed spread within each prompt counts (prompt i's n_i values have sample variance
    s_i²): se² = Σ n_i·s_i² / N². It is smaller than the cluster-jackknife se, which also counts the prompts as a
    sample from a population of prompts (a claim about prompts like these, not only these). None when a prompt
    has fewer than two values."""
    arr = _as_values(values)
    ids, groups = _cluster_ids(clusters, arr.size, "within_prompt_se")
    counts = np.bincount(ids, minlength=groups)
    if counts.min() < 2:
        return None
    means = np.bincount(ids, weights=arr, minlength=groups) / counts
    within = np.bincount(ids, weights=(arr - means[ids]) ** 2, minlength=groups) / (counts - 1)  # s_i²
    return math.sqrt(float(np.sum(counts * within))) / arr.size


def json_float(x) -> float | None:
    """A plain Python float for JSON, or None for NaN/inf (which strict JSON cannot hold)."""
    if x is None:
        return None
    f = float(x)
    return f if math.isfinite(f) else None


def json_safe(obj):
    """Recursively turn numpy scalars/arrays and tuples into JSON types, NaN/inf into None."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [json_safe(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return json_float(obj)
    return obj


def make_record(
    value: float,
    ci95: tuple[float, float] | None,
    n: int,
    higher_is_better: bool,
    /,
    paired_diff_vs_teacher: tuple[float, tuple[float, float]] | None = None,
    ratio_to_teacher: float | None = None,
    **extra,
) -> dict:
    """One metric's `eval.json` record from numbers already computed (set statistics such as FVD come here
    directly with the interval from `bootstrap_set_statistic`). Extra keyword fields are kept as given; one that
    repeats a core field (value, ci95, n, higher_is_better) must agree with it."""
    record = {
        "value": json_float(value),
        "ci95": None if ci95 is None else [json_float(ci95[0]), json_float(ci95[1])],
        "n": int(n),
        "higher_is_better": bool(higher_is_better),
    }
    if paired_diff_vs_teacher is not None:
        diff, (lo, hi) = paired_diff_vs_teacher
        record["paired_diff_vs_teacher"] = {"value": json_float(diff), "ci95": [json_float(lo), json_float(hi)]}
    if ratio_to_teacher is not None:
        record["ratio_to_teacher"] = json_float(ratio_to_teacher)
    extra = json_safe(extra)
    clashes = [k for k in ("value", "ci95", "n", "higher_is_better") if k in extra and extra[k] != record[k]]
    if clashes:
        raise ValueError(f"make_record: extra field(s) {clashes} disagree with the record: "
                         f"{ {k: (record[k], extra[k]) for k in clashes} }")
    record.update(extra)
    return record


def metric_record(
    values: Sequence[float] | np.ndarray,
    higher_is_better: bool,
    teacher_values: Sequence[float] | np.ndarray | None = None,
    statistic: Callable[[np.ndarray], float] = np.mean,
    n_boot: int = 1000,
    seed: int = 0,
    **extra,
) -> dict:
    """The `eval.json` record of a per-clip metric: `statistic` over clips with its 95% bootstrap interval and,
    when `teacher_values` (same prompts and seeds, same order) are given, the paired difference vs the teacher
    and the ratio `statistic(values) / statistic(teacher_values)` (None when the teacher's value is 0)."""
    arr = _as_values(values)
    value = float(statistic(arr))
    ci = bootstrap_ci(arr, statistic=statistic, n_boot=n_boot, level=CI_LEVEL, seed=seed)
    paired = ratio = None
    if teacher_values is not None:
        paired = paired_diff_ci(arr, teacher_values, statistic=statistic, n_boot=n_boot, level=CI_LEVEL, seed=seed)
        teacher_value = float(statistic(_as_values(teacher_values)))
        ratio = value / teacher_value if teacher_value != 0.0 else None
    return make_record(value, ci, arr.size, higher_is_better, paired_diff_vs_teacher=paired,
                       ratio_to_teacher=ratio, **extra)
