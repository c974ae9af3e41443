"""Set-level intervals (distill.eval.stats.set_interval and set_difference_interval), KVD (distill.eval.kvd)
and the fast Fréchet path, checked on synthetic features: the interval contains its point, matched sets are
deleted jointly, KVD is torchmetrics' KID estimator and unbiased, and a small coverage simulation
(scripts/simulate_intervals.py; the full n = 42, d = 128 one is the slow test at the end)."""


import numpy as np
import pytest
import torch

from distill.eval.frechet import frechet_distance_of_features
from distill.eval.fvd import fvd_from_features
from distill.eval.kvd import kvd
from distill.eval.stats import bootstrap_set_statistic, set_difference_interval, set_interval
from scripts.simulate_intervals import CHECKED, Setting, run

pytestmark = pytest.mark.filterwarnings("ignore:feature_stats. only N=")


def fvd(x, y):
    return frechet_distance_of_features(x, y)


def kvd_matched(x, y):
    return kvd(x, y, matched=True)


def test_fast_frechet_path_is_the_same_number_as_fvd_from_features():
    rng = np.random.default_rng(0)
    for n, m, d in [(42, 42, 128), (10, 30, 64), (60, 50, 16), (5, 5, 5)]:
        x = rng.normal(size=(n, d)) * np.linspace(2.0, 0.1, d)
        y = rng.normal(size=(m, d)) + 0.3
        assert frechet_distance_of_features(x, y) == pytest.approx(fvd_from_features(x, y), rel=1e-7, abs=1e-9)
    assert frechet_distance_of_features(x, x) == pytest.approx(0.0, abs=1e-9)


def test_interval_contains_its_point_over_many_random_inputs():
    rng = np.random.default_rng(1)
    statistics = {"fvd": fvd, "kvd": kvd, "kvd_matched": kvd_matched,
                  "mean_gap": lambda x, y: float(np.sum((x.mean(0) - y.mean(0)) ** 2))}
    methods = ("balanced-jackknife", "second-order-jackknife", "jackknife")
    for trial in range(36):
        n, d = int(rng.integers(6, 19)), int(rng.integers(2, 30))
        name = list(statistics)[trial % len(statistics)]
        method = methods[trial % len(methods)]
        scale = np.exp(rng.normal(0.0, 2.0))  # features of very different magnitudes
        shared = rng.normal(size=(n, d)) * scale
        a, b, ref = (shared * rng.uniform(0.5, 1.5) + rng.normal(size=(n, d)) * scale * rng.uniform(0.1, 2.0)
                     + rng.normal(0.0, scale, d) for _ in range(3))
        clusters = np.arange(n) // 2 if trial % 2 else None  # pairs of rows, as two seeds per prompt
        for rec in (set_interval(statistics[name], a, ref, method=method, clusters=clusters),
                    set_difference_interval(statistics[name], a, b, ref, method=method, clusters=clusters)):
            lo, hi = rec["ci95"]
            assert lo <= rec["value"] <= hi, (trial, name, method, rec)
            assert rec["se"] >= 0.0 and rec["n"] == n
            assert rec["n_clusters"] == (n if clusters is None else np.unique(clusters).size)


def test_matched_sets_lose_the_same_rows_together():
    n = 12
    a = np.arange(n, dtype=float)[:, None] * np.ones((1, 3))
    seen = []

    def spy(x, y):
        assert np.array_equal(y, 10.0 * x), "rows of the two sets were not deleted jointly"
        seen.append(x.shape[0])
        return float(x.mean())

    rec = set_interval(spy, a, 10.0 * a, method="balanced-jackknife")
    assert seen[0] == n and seen[1:n + 1] == [n - 1] * n and set(seen[n + 1:]) == {n - 2}
    assert rec["n"] == n and rec["method"] == "balanced-jackknife"
    seen.clear()
    set_interval(spy, a, 10.0 * a, clusters=np.repeat(np.arange(4), 3), method="jackknife")
    assert seen == [n] + [n - 3] * 4


def test_pairing_matters_where_independent_resampling_is_badly_wrong():
    # Each prompt has a large effect shared by both sets; b is a shifted by 1 in every dimension, plus small
    # noise. The squared gap of the means is ~d = 4 whatever the prompts; resampling the sets independently mixes
    # prompts, so its gaps are dominated by the prompt spread.
    rng = np.random.default_rng(2)
    n, d = 40, 4
    prompts = rng.normal(0.0, 10.0, (n, d))
    a = prompts + rng.normal(0.0, 0.1, (n, d))
    b = prompts + 1.0 + rng.normal(0.0, 0.1, (n, d))

    def mean_gap(x, y):
        return float(np.sum((x.mean(0) - y.mean(0)) ** 2))

    rec = set_interval(mean_gap, a, b)
    lo, hi = rec["ci95"]
    assert 3.6 < lo <= rec["value"] <= hi < 4.4
    b_lo, b_hi = bootstrap_set_statistic(a, b, mean_gap, n_boot=200)
    assert b_hi - b_lo > 20 * (hi - lo) and b_hi > 4 * hi


def test_difference_interval_is_the_difference_and_zero_for_the_same_model():
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(20, 6))
    a, b = ref + rng.normal(0.3, 1.0, (20, 6)), ref + rng.normal(0.8, 1.0, (20, 6))
    rec = set_difference_interval(fvd, a, b, ref)
    assert rec["value"] == pytest.approx(rec["value_a"] - rec["value_b"], abs=1e-12)
    assert rec["value_a"] == pytest.approx(fvd(a, ref)) and rec["value_b"] == pytest.approx(fvd(b, ref))
    same = set_difference_interval(fvd, a, a.copy(), ref)
    assert same["value"] == 0.0 and same["ci95"] == [0.0, 0.0]


def test_set_interval_refuses_what_it_cannot_judge():
    x = np.zeros((5, 2))
    with pytest.raises(ValueError, match=r"same number of rows.*\[5, 4\]"):
        set_interval(fvd, x, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="unknown method 'bootstrap'"):
        set_interval(fvd, x, x, method="bootstrap")
    with pytest.raises(ValueError, match="at least 3 independent rows or clusters, got 2"):
        set_interval(fvd, x, x, clusters=[0, 0, 0, 1, 1])
    with pytest.raises(ValueError, match="one label per row"):
        set_interval(fvd, x, x, clusters=[0, 1])
    with pytest.raises(ValueError, match="cluster 2 left out"):
        set_interval(lambda s: np.inf if 2 not in s[:, 0] else 0.0, np.arange(5.0)[:, None])


# --- KVD ----------------------------------------------------------------------------------------------------------

def test_kvd_is_torchmetrics_kid_estimator():
    from torchmetrics.image.kid import KernelInceptionDistance, poly_mmd

    rng = np.random.default_rng(4)
    for n, d in [(30, 16), (42, 128)]:
        x, y = rng.normal(size=(n, d)), rng.normal(0.2, 1.1, size=(n, d))
        reference = float(poly_mmd(torch.from_numpy(x), torch.from_numpy(y)))
        assert kvd(x, y) == pytest.approx(reference, rel=1e-10, abs=1e-12)
        metric = KernelInceptionDistance(feature=torch.nn.Identity(), subsets=1, subset_size=n)
        metric.update(torch.from_numpy(x), real=True)
        metric.update(torch.from_numpy(y), real=False)
        kid_mean, _ = metric.compute()
        assert kvd(x, y) == pytest.approx(float(kid_mean), rel=1e-10, abs=1e-12)
        assert kvd(torch.from_numpy(x), y) == kvd(x, y)


def test_kvd_is_zero_in_expectation_for_equal_distributions():
    rng = np.random.default_rng(5)
    n, d, draws = 20, 8, 400
    scale = np.linspace(2.0, 0.2, d)
    independent, paired_kid, paired_matched = [], [], []
    for _ in range(draws):
        x, y = rng.normal(size=(n, d)) * scale, rng.normal(size=(n, d)) * scale
        independent.append(kvd(x, y))
        shared = rng.normal(size=(n, d)) * scale  # same prompt and seed: the pairs look alike
        xp, yp = 0.8 * shared + 0.6 * x, 0.8 * shared + 0.6 * y  # both marginals N(0, scale²)
        paired_kid.append(kvd(xp, yp))
        paired_matched.append(kvd(xp, yp, matched=True))
    for values in (independent, paired_matched):
        mean, mc_se = np.mean(values), np.std(values, ddof=1) / np.sqrt(draws)
        assert abs(mean) < 4 * mc_se
    # The KID estimator keeps the matched cross pairs k(x_i, y_i), which pairing makes large: biased low.
    assert np.mean(paired_kid) < -10 * np.std(paired_kid, ddof=1) / np.sqrt(draws)
    assert kvd(xp, xp.copy(), matched=True) == pytest.approx(0.0, abs=1e-12)
    assert kvd(xp, xp.copy()) < 0.0


def test_kvd_refuses_bad_input():
    with pytest.raises(ValueError, match="different feature dimensions, 3 and 4"):
        kvd(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="at least 2 rows"):
        kvd(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="x has 5 rows and y has 6"):
        kvd(np.zeros((5, 3)), np.zeros((6, 3)), matched=True)
    with pytest.raises(ValueError, match="NaN or infinite"):
        kvd(np.full((5, 3), np.nan), np.zeros((5, 3)))


# --- coverage -----------------------------------------------------------------------------------------------------

SMALL = Setting(n=24, d=32, prompts=8, seeds_per_prompt=3, trials=200, truth_draws=600, seed=0)


@pytest.mark.slow  # 31 s; make test's budget (the shipped-design tables come from scripts/simulate_intervals.py)
def test_small_coverage_simulation_is_calibrated():
    results = run(SMALL, only=("fvd", "kvd_matched", "fvd_diff", "mean_clustered"), log=lambda line: None)
    for r in results:
        assert r["trials"] == 200 and r["contains_point"] == 1.0
        assert 0.90 <= r["coverage"] <= 0.99, r


@pytest.mark.slow
def test_full_coverage_simulation_n42_d128():
    results = run(Setting(trials=200, truth_draws=2000), only=CHECKED, log=lambda line: None)
    for r in results:
        assert r["trials"] == 200 and r["contains_point"] == 1.0
        assert 0.90 <= r["coverage"] <= 0.99, r
