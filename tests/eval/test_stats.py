import json
import math

import numpy as np
import pytest

from scipy import stats as scipy_stats

from distill.eval.stats import (bootstrap_ci, bootstrap_set_statistic, clustered_mean_interval, json_float, json_safe,
                                make_record, metric_record, paired_diff_ci, set_interval)

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


# --- clustered_mean_interval and set_interval's record ----------------------------------------------------------

def test_clustered_mean_with_one_value_per_prompt_is_the_ordinary_t_interval():
    x = np.random.default_rng(8).normal(2.0, 3.0, 17)
    rec = clustered_mean_interval(x)
    lo, hi = scipy_stats.t.interval(0.95, x.size - 1, loc=x.mean(), scale=scipy_stats.sem(x))
    assert rec["value"] == pytest.approx(x.mean()) and rec["ci95"] == pytest.approx([lo, hi], rel=1e-10)
    assert rec["se"] == pytest.approx(scipy_stats.sem(x)) and rec["n"] == rec["n_clusters"] == 17
    assert clustered_mean_interval(x, clusters=np.arange(17)[::-1])["ci95"] == pytest.approx([lo, hi], rel=1e-10)
    json.dumps(rec, allow_nan=False)


def test_clustered_mean_counts_prompts_not_clips():
    # 6 prompts x 4 seeds with a strong prompt effect: the interval is that of the 6 prompt means (equal cluster
    # sizes make it exact), far wider than treating the 24 clips as independent.
    rng = np.random.default_rng(9)
    prompt_means = rng.normal(0.0, 5.0, 6)
    values = np.repeat(prompt_means, 4) + rng.normal(0.0, 0.5, 24)
    prompts = np.repeat([f"prompt {k}" for k in range(6)], 4)
    rec = clustered_mean_interval(values, prompts)
    means = values.reshape(6, 4).mean(1)
    lo, hi = scipy_stats.t.interval(0.95, 5, loc=means.mean(), scale=scipy_stats.sem(means))
    assert rec["ci95"] == pytest.approx([lo, hi], rel=1e-10)
    assert rec["n"] == 24 and rec["n_clusters"] == 6 and rec["method"] == "cluster-jackknife"
    naive = clustered_mean_interval(values)
    assert naive["ci95"][1] - naive["ci95"][0] < 0.6 * (hi - lo)
    with pytest.raises(ValueError, match="at least 2 clusters"):
        clustered_mean_interval(values, np.zeros(24))
    with pytest.raises(ValueError, match=r"one label per row \(24\)"):
        clustered_mean_interval(values, np.zeros(5))


def test_set_interval_record_is_json_safe_and_deterministic():
    rng = np.random.default_rng(10)
    x, y = rng.normal(size=(30, 3)), rng.normal(0.5, 1.0, (30, 3))

    def mean_gap(a, b):
        return float(np.sum((a.mean(0) - b.mean(0)) ** 2))

    rec = set_interval(mean_gap, x, y)  # 435 pairs: 200 drawn with the seed
    assert set(rec) == {"value", "ci95", "se", "n", "n_clusters", "method", "target"}
    assert rec["target"] == "expected value at this n"
    corrected = set_interval(mean_gap, x, y, bias_correction=True)
    assert json.loads(json.dumps(corrected, allow_nan=False)) == corrected
    assert corrected["at_n"]["value"] == rec["value"] and corrected["se"] == rec["se"]
    assert json.loads(json.dumps(rec, allow_nan=False)) == rec
    assert rec == set_interval(mean_gap, x, y) and rec["method"] == "balanced-jackknife"
    assert rec["se"] != set_interval(mean_gap, x, y, seed=1)["se"]
    plain = set_interval(mean_gap, x, y, method="jackknife")
    second = set_interval(mean_gap, x, y, method="second-order-jackknife")
    assert second["se"] <= rec["se"] <= plain["se"]  # the default sits between its two bounds


def test_within_prompt_se_matches_the_spread_of_reruns_on_the_same_prompts():
    """Prompts fixed, seeds fresh: the mean's spread over re-runs is what se_seeds estimates; the cluster se is
    larger because it also treats the prompts as a sample."""
    from distill.eval.stats import clustered_mean_interval, within_prompt_se

    rng = np.random.default_rng(0)
    prompts, seeds = 40, 4
    effects = rng.normal(0, 3.0, prompts)  # fixed prompt effects, large against the seed noise
    clusters = np.repeat(np.arange(prompts), seeds)
    means, se_seeds, se_cluster = [], [], []
    for _ in range(400):
        values = effects[clusters] + rng.normal(0, 1.0, clusters.size)
        means.append(values.mean())
        se_seeds.append(within_prompt_se(values, clusters))
        se_cluster.append(clustered_mean_interval(values, clusters)["se"])
    observed = float(np.std(means, ddof=1))
    expected = 1.0 / np.sqrt(prompts * seeds)
    assert abs(observed / expected - 1) < 0.1
    assert abs(np.mean(se_seeds) / observed - 1) < 0.1
    assert np.mean(se_cluster) > 3 * observed  # the prompts' spread dominates the cluster se
    assert within_prompt_se(np.arange(5.0), np.arange(5)) is None  # one value per prompt: no within spread


def test_wilson_interval_matches_the_textbook_values_and_refuses_impossible_counts():
    from distill.eval.stats import wilson_interval

    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)  # Agresti & Coull (1998), 95%
    assert wilson_interval(0, 20) == (0.0, pytest.approx(0.1611, abs=1e-4))
    assert wilson_interval(20, 20)[1] == 1.0
    with pytest.raises(ValueError, match="3 hits in 2 trials"):
        wilson_interval(3, 2)
