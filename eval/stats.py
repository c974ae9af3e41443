"""Confidence intervals for eval metrics: percentile bootstrap over per-clip values, paired differences on the
same prompt/seed pairs, and set statistics (FVD) whose two feature sets are resampled independently.

Everything is deterministic by `seed` (a fresh `numpy.random.default_rng(seed)` per call), so the same per-clip
values always give the same interval and `eval.json` files are reproducible byte for byte.

Records built here follow the `eval.json` contract (DESIGN.md, schema "distill.eval/1"):
`{"value", "ci95": [lo, hi], "n", "higher_is_better", "paired_diff_vs_teacher": {"value", "ci95"},
"ratio_to_teacher"}`, with plain Python floats and `None` in place of NaN/inf so `json.dumps` never writes
the non-standard `NaN` token.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

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
    """Percentile bootstrap interval of a statistic of whole sets, e.g. `fn(features_x, features_y)` = FVD.

    Rows (clips) of `x` and of `y` are resampled independently, each set keeping its own size; with `y=None`
    the statistic is of one set, `fn(x)` (diversity). Resampling with replacement repeats rows, which shrinks a
    set's covariance, so for FVD-like statistics the bootstrap distribution sits above the point estimate: the
    interval measures the spread from the finite clip sample and need not contain the point value.
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
