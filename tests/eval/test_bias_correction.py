"""Issue 23's statistics: the jackknife bias-corrected FVD targets the population distance (and ranks two models by
it where the plain FVD does not), the bias warning fires where the bias matters (also at n > d), every interval
says its target, and the model-vs-model family gets Holm / Bonferroni adjustments. All cheap: small d, the plain
delete-one jackknife where the variance method does not matter."""

import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from distill.eval import metrics
from distill.eval.frechet import frechet_distance_of_features
from distill.eval.kvd import kvd
from distill.eval.stats import (TARGET_AT_N, TARGET_POPULATION, adjust_family, bias_matters, bonferroni_interval,
                                count_intervals, holm_adjusted, set_difference_interval, set_interval, t_p_value)
from scripts.simulate_intervals import RankingWorld, cubic_kernel_mmd2

pytestmark = pytest.mark.filterwarnings("ignore:feature_stats. only N=")


def fvd(x, y):
    return frechet_distance_of_features(x, y)


def kvd_matched(x, y):
    return kvd(x, y, matched=True)


def test_corrected_fvd_is_near_the_population_distance_where_the_plain_one_is_five_times_it():
    # N(0, I) against N(δ, I), ‖δ‖² = 1, 40 clips of 16-d features: the plain FVD's bias is about 4 times the
    # distance itself. Removing the correction makes the corrected mean the plain one, and this test fails.
    rng = np.random.default_rng(0)
    delta = np.zeros(16)
    delta[0] = 1.0
    plain, corrected, covered, covered_plain = [], [], 0, 0
    for _ in range(20):
        x, y = rng.normal(size=(40, 16)), rng.normal(size=(40, 16)) + delta
        rec = set_interval(fvd, x, y, method="jackknife", bias_correction=True)
        assert rec["target"] == TARGET_POPULATION and rec["at_n"]["target"] == TARGET_AT_N
        assert rec["bias"] == pytest.approx(rec["at_n"]["value"] - rec["value"])
        assert rec["ci95"][0] <= rec["value"] <= rec["ci95"][1]
        plain.append(rec["at_n"]["value"])
        corrected.append(rec["value"])
        covered += rec["ci95"][0] <= 1.0 <= rec["ci95"][1]
        covered_plain += rec["at_n"]["ci95"][0] <= 1.0 <= rec["at_n"]["ci95"][1]
    assert np.mean(plain) > 3.0
    assert abs(np.mean(corrected) - 1.0) < 0.25
    assert covered >= 17 and covered_plain == 0


def test_corrected_difference_ranks_by_population_distance_where_the_plain_one_points_the_wrong_way():
    # The ranking world (scripts/simulate_intervals.py) at d = 32, 12 prompts x 4 seeds: A shifted (population
    # distance 0.20), B lost diversity (0.357). E[plain FVD at n] of A exceeds B's; the corrected difference is
    # centred on 0.20 - 0.357.
    world = RankingWorld(32, np.random.default_rng(1))
    population = world.population()
    assert population["fvd_a"] == pytest.approx(0.20) and population["fvd_b"] == pytest.approx(0.357)
    rng = np.random.default_rng(2)
    plain, corrected = [], []
    for _ in range(10):
        ref, a, b, ids = world.draw(rng, 12, 4)
        rec = set_difference_interval(fvd, a, b, ref, clusters=ids, method="jackknife", bias_correction=True)
        assert rec["value"] == pytest.approx(rec["value_a"] - rec["value_b"])
        assert rec["at_n"]["value"] == pytest.approx(rec["at_n"]["value_a"] - rec["at_n"]["value_b"])
        plain.append(rec["at_n"]["value"])
        corrected.append(rec["value"])
    assert np.mean(plain) > 0.0  # wrong way: A looks farther
    assert abs(np.mean(corrected) - (0.20 - 0.357)) < 0.06


def test_the_correction_is_zero_for_kvd_a_u_statistic():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 8))
    y = 0.8 * x + rng.normal(size=(30, 8)) * 0.6 + 0.2
    rec = set_interval(kvd_matched, x, y, method="jackknife", bias_correction=True)
    assert rec["bias"] == pytest.approx(0.0, abs=1e-12 * abs(rec["at_n"]["value"]) + 1e-15)
    assert not bias_matters(rec)


def test_components_are_each_statistics_own_record():
    rng = np.random.default_rng(4)
    ref, a, b = (rng.normal(size=(20, 6)) + k for k in range(3))
    rec = set_difference_interval(fvd, a, b, ref, method="jackknife", bias_correction=True, components=True)
    alone = set_interval(fvd, a, ref, method="jackknife", bias_correction=True)
    assert rec["a"]["value"] == pytest.approx(alone["value"]) and rec["a"]["se"] == pytest.approx(alone["se"])
    assert rec["value_a"] == pytest.approx(alone["value"])


def test_population_kvd_of_the_ranking_world_matches_a_monte_carlo_estimate():
    # MMD² = E k(x, x') + E k(y, y') − 2 E k(x, y) over independent draws: a mean over independent pairs of rows
    rng = np.random.default_rng(5)
    d, n = 6, 100_000
    mu1, mu2 = rng.normal(size=d) * 0.5, rng.normal(size=d) * 0.5
    sd1, sd2 = rng.uniform(0.7, 1.4, d), rng.uniform(0.7, 1.4, d)
    x, x2 = (mu1 + rng.normal(size=(n, d)) * sd1 for _ in range(2))
    y, y2 = (mu2 + rng.normal(size=(n, d)) * sd2 for _ in range(2))

    def k(a, b):
        return (np.sum(a * b, axis=1) / d + 1.0) ** 3

    samples = k(x, x2) + k(y, y2) - 2.0 * k(x2, y)
    mc, mc_se = samples.mean(), samples.std() / math.sqrt(n)
    assert abs(cubic_kernel_mmd2(mu1, np.diag(sd1 ** 2), mu2, np.diag(sd2 ** 2)) - mc) < 4 * mc_se


FAKE_SCORERS = SimpleNamespace(frames=17, detector=SimpleNamespace(name="fake", protocol=lambda frames: "all"))
FVD_DEF = next(m for m in metrics.REGISTRY if m.family == "fvd")


def test_bias_warning_fires_above_n_equals_d_where_the_old_rule_was_silent():
    # 48 clips of 32-d features: more clips than dimensions, so the singular-covariance warning stays silent,
    # but the plain FVD's bias is several standard errors.
    world = RankingWorld(32, np.random.default_rng(1))
    ref, a, _, ids = world.draw(np.random.default_rng(6), 12, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "only N= samples" warning at n > d
        rec = metrics.set_record(FVD_DEF, FAKE_SCORERS, a, ref, "vs_teacher", ids)
    assert rec["target"] == TARGET_AT_N and rec["bias_corrected"]["target"] == "population distance"
    assert rec["bias_corrected"]["bias"] >= 0.5 * rec["bias_corrected"]["se"]
    assert "bias_warning" in rec and "n = 48, d = 32" in rec["bias_warning"]


def test_bias_warning_is_silent_where_the_bias_is_small_against_the_noise():
    rng = np.random.default_rng(7)
    ref = rng.normal(size=(400, 4))
    a = ref * 0.3 + rng.normal(size=(400, 4)) + 3.0  # far apart, 100 clips per dimension
    rec = metrics.set_record(FVD_DEF, FAKE_SCORERS, a, ref, "vs_teacher", np.arange(400) // 4)
    assert "bias_warning" not in rec
    assert abs(rec["bias_corrected"]["bias"]) < 0.5 * rec["bias_corrected"]["se"]


def test_holm_adjusted_p_values_step_down_in_the_right_order():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> max(0.06, 0.04) = 0.06
    assert holm_adjusted([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjusted([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm_adjusted([0.2]) == [0.2]
    p = np.random.default_rng(8).uniform(size=12)
    adjusted = np.array(holm_adjusted(p))
    order = np.argsort(p)
    assert np.all(np.diff(adjusted[order]) >= 0) and np.all(adjusted >= p)
    assert np.all(adjusted <= np.minimum(1.0, p * p.size) + 1e-15)  # never above Bonferroni
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        holm_adjusted([0.1, 1.5])


def test_adjusted_intervals_are_wider_than_marginal_ones_and_agree_with_the_p_values():
    records = [{"value": v, "se": 1.0, "n_clusters": 42, "ci95": [v - 2.02, v + 2.02]} for v in (0.5, 2.5, 3.5, 8.0)]
    out = adjust_family(records)
    for rec, adj in zip(records, out):
        lo, hi = adj["ci95_bonferroni"]
        marginal = set_lo, set_hi = bonferroni_interval(rec["value"], 1.0, 41, 1)
        assert lo < set_lo and hi > set_hi and adj["family_size"] == 4, (marginal, adj)
        assert math.isclose(hi - rec["value"], rec["value"] - lo)
        # resolved by Holm exactly when the Holm p-value is below 5%; a Bonferroni interval that excludes 0 is
        # always resolved by Holm (Holm rejects at least what Bonferroni does)
        assert adj["resolved_holm"] == (adj["p_holm"] < 0.05)
        if lo > 0:
            assert adj["resolved_holm"]
    # Holm resolves the 2.5 (p = 0.017: 2 x 0.017 < 0.05 at its step) where Bonferroni (4 x 0.017) does not
    assert [adj["resolved_holm"] for adj in out] == [False, True, True, True]
    assert out[1]["ci95_bonferroni"][0] < 0 < out[1]["ci95_bonferroni"][1]
    # the marginal t interval's p-value: 0 on its edge gives p = 0.05
    assert t_p_value(2.0, 2.0 / 2.0195409704413767, 41) == pytest.approx(0.05, abs=1e-6)
    assert adjust_family([{"value": 1.0, "se": None}])[0]["ci95_bonferroni"] is None


def test_count_intervals_counts_every_nested_non_null_interval():
    tree = {"a": {"value": 1, "ci95": [0, 2], "bias_corrected": {"ci95": [0, 1]},
                  "paired_diff_vs_models": {"x": {"ci95": [1, 2], "at_n": {"ci95": [0, 3]}}}},
            "b": {"ci95": None}, "c": [{"ci95": [0, 1]}, {"ci95": [None, None]}]}
    assert count_intervals(tree) == 4 and count_intervals(tree, skip=()) == 5


def _result_with_pairs() -> dict:
    def pair(value, se):
        half = 2.0195 * se
        return {"value": value, "ci95": [value - half, value + half], "se": se, "n_clusters": 42,
                "value_a": 1.0 + value, "value_b": 1.0, "target": "difference of population distances"}

    def model(role, pairs):
        return {"role": role, "steps": 4, "nfe": 4, "metrics": {"fvd[x,17f]:vs_teacher": {
            "value": 2.0, "ci95": [1.0, 3.0], "higher_is_better": False, "paired_diff_vs_models": pairs,
            "bias_corrected": {"value": 1.0, "ci95": [0.0, 2.0], "target": "population distance"}}}}

    return {"models": {"teacher": {"role": "teacher", "steps": 50, "nfe": 100, "metrics": {}},
                       "a": model("student", {"b": pair(-0.5, 0.2), "c": pair(-0.05, 0.2)}),
                       "b": model("student", {"a": pair(0.5, 0.2), "c": pair(0.45, 0.2)}),
                       "c": model("student", {"a": pair(0.05, 0.2), "b": pair(-0.45, 0.2)})},
            "suite": {"name": "mini", "n_clips": 168, "prompts": ["p"] * 42, "teacher": "builtin:x"},
            "env": {"device": "cpu"}}


def test_summary_says_how_many_intervals_and_prints_adjusted_ones():
    from distill.eval import report

    result = _result_with_pairs()
    assert "this eval holds 12 intervals (3 of them model-vs-model rows)" in report.interval_count_line(result)
    table = report.model_vs_model_markdown(result)
    assert "Bonferroni 95% of 3" in table[0] and "Holm" in table[0]
    row = next(line for line in table if line.startswith("| fvd[x,17f]:vs_teacher | a | b |"))
    marginal, bonferroni = [tuple(map(float, m)) for m in
                            __import__("re").findall(r"\[(-?[\d.]+), (-?[\d.]+)\]", row)]
    assert bonferroni[0] < marginal[0] and bonferroni[1] > marginal[1]
    assert "(resolved)" in row  # -0.5 with se 0.2 stands after Holm's correction for 3 rows
