import json
import math

import numpy as np
import pytest

from distill.eval.stats import (bootstrap_ci, bootstrap_set_statistic, json_float, json_safe, make_record, metric_record,
                        paired_diff_ci)

N_BOOT = 300  # small: these tests run next to training jobs on two cores


def test_ci_contains_mean_and_narrows_with_more_data():
    rng = np.random.default_rng(1)
    small, large = rng.normal(3.0, 1.0, 20), rng.normal(3.0, 1.0, 500)
    lo_s, hi_s = bootstrap_ci(small, n_boot=N_BOOT)
    lo_l, hi_l = bootstrap_ci(large, n_boot=N_BOOT)
    assert lo_s <= small.mean() <= hi_s
    assert lo_l <= large.mean() <= hi_l
    assert hi_l - lo_l < 0.5 * (hi_s - lo_s)


def test_same_seed_same_interval_other_seed_other_interval():
    x = np.random.default_rng(2).normal(size=30)
    assert bootstrap_ci(x, n_boot=N_BOOT, seed=7) == bootstrap_ci(x, n_boot=N_BOOT, seed=7)
    assert bootstrap_ci(x, n_boot=N_BOOT, seed=7) != bootstrap_ci(x, n_boot=N_BOOT, seed=8)
    y = x + 0.1
    assert paired_diff_ci(x, y, n_boot=N_BOOT, seed=3) == paired_diff_ci(x, y, n_boot=N_BOOT, seed=3)


def test_other_statistic_and_single_value():
    x = np.array([1.0, 2.0, 3.0, 100.0])
    lo, hi = bootstrap_ci(x, statistic=np.median, n_boot=N_BOOT)
    assert 1.0 <= lo <= hi <= 100.0
    assert bootstrap_ci([4.0], n_boot=10) == (4.0, 4.0)


def test_refuses_empty_and_non_finite():
    with pytest.raises(ValueError, match="no values"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="NaN or infinite"):
        bootstrap_ci([1.0, float("nan")])


def test_paired_ci_of_identical_arrays_is_exactly_zero():
    x = np.random.default_rng(4).normal(size=25)
    assert paired_diff_ci(x, x.copy(), n_boot=N_BOOT) == (0.0, (0.0, 0.0))


def test_paired_ci_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match=r"a has 5 values and b has 4.*same prompt/seed pairs"):
        paired_diff_ci(np.ones(5), np.ones(4))


def test_paired_ci_resolves_a_shift_an_unpaired_ci_cannot():
    # Per-prompt difficulty varies a lot and is shared by student and teacher; the student is consistently 0.3
    # lower. Independent resampling sees the difficulty spread; pairing cancels it.
    rng = np.random.default_rng(5)
    teacher = rng.normal(30.0, 3.0, 40)
    student = teacher - 0.3 + rng.normal(0.0, 0.1, 40)
    diff, (lo, hi) = paired_diff_ci(student, teacher, n_boot=N_BOOT)
    assert hi < 0.0 and lo <= diff <= hi
    u_lo, u_hi = bootstrap_set_statistic(student, teacher, lambda s, t: s.mean() - t.mean(), n_boot=N_BOOT)
    assert u_lo < 0.0 < u_hi


def test_set_statistic_bootstrap():
    rng = np.random.default_rng(6)
    x, y = rng.normal(0.0, 1.0, (60, 3)), rng.normal(1.0, 1.0, (50, 3))

    def mean_distance(a, b):
        return float(np.linalg.norm(a.mean(0) - b.mean(0)))

    lo, hi = bootstrap_set_statistic(x, y, mean_distance, n_boot=N_BOOT)
    assert lo <= mean_distance(x, y) <= hi and lo > 0.5
    assert (lo, hi) == bootstrap_set_statistic(x, y, mean_distance, n_boot=N_BOOT)
    lo1, hi1 = bootstrap_set_statistic(x, None, lambda a: float(a.std(0).mean()), n_boot=N_BOOT)
    assert lo1 <= float(x.std(0).mean()) <= hi1 + 0.05
    with pytest.raises(ValueError, match="at least one row"):
        bootstrap_set_statistic(np.zeros((0, 3)), y, mean_distance)


def test_metric_record_is_json_safe_and_complete():
    rng = np.random.default_rng(7)
    teacher = rng.normal(30.0, 2.0, 12).astype(np.float32)
    student = teacher * 0.98
    rec = metric_record(student, higher_is_better=True, teacher_values=teacher, n_boot=N_BOOT)
    text = json.dumps(rec, allow_nan=False)
    assert json.loads(text) == rec
    assert set(rec) == {"value", "ci95", "n", "higher_is_better", "paired_diff_vs_teacher", "ratio_to_teacher"}
    assert type(rec["value"]) is float and rec["n"] == 12 and rec["higher_is_better"] is True
    assert rec["ci95"][0] <= rec["value"] <= rec["ci95"][1]
    assert rec["paired_diff_vs_teacher"]["ci95"][1] < 0
    assert rec["ratio_to_teacher"] == pytest.approx(0.98, rel=1e-5)
    plain = metric_record([1.0, 2.0], higher_is_better=False, n_boot=20, detector="domain-video-net")
    assert "paired_diff_vs_teacher" not in plain and plain["detector"] == "domain-video-net"


def test_make_record_and_json_helpers_replace_non_finite():
    rec = make_record(np.float32(12.5), (np.float64(10.0), float("inf")), np.int64(8), False, extra=np.arange(2))
    assert rec == {"value": 12.5, "ci95": [10.0, None], "n": 8, "higher_is_better": False, "extra": [0, 1]}
    json.dumps(rec, allow_nan=False)
    assert make_record(1.0, None, 3, False, n=3, detector="d")["detector"] == "d"  # a repeated core field agrees
    with pytest.raises(ValueError, match="disagree"):
        make_record(1.0, None, 3, False, n=4)
    assert json_float(float("nan")) is None and json_float(np.float16(1.5)) == 1.5
    assert json_safe({"a": (np.bool_(True), np.nan)}) == {"a": [True, None]}
    assert not math.isnan(json_safe(np.float64(2.0)))
