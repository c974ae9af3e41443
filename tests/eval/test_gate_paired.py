"""The paired fixed-suite regression test of the gate (CI's question: did this change make the model worse on OUR
suite?): per clip against a baseline on the same prompts and seeds, with the seed-level standard error, Holm over
rules x models. Synthetic eval.json files: cheap, and independent of any teacher's figures."""

import json

import numpy as np
import pytest
from scipy.stats import t as student_t

from distill.eval import stats
from distill.eval.gate import load_policy, run_gate, seed_level_se
from distill.eval.harness import leave_one_out
from distill.eval.kvd import kvd

CLIP = "clipsim[domain-clip]"
KVD = "kvd[domain-video-net,17f]:vs_teacher"
SPEEDUP = "speed.speedup_vs_teacher"


def clip_rec(values, prompts):
    """A per-clip metric's record as the harness writes it: the population (prompt-clustered) interval."""
    r = stats.clustered_mean_interval(values, prompts)
    return {"value": r["value"], "ci95": r["ci95"], "se": r["se"], "n": len(values), "higher_is_better": True,
            "level": "clip"}


def doc(students: dict, prompts: np.ndarray, seeds=None, per_clip=True, sets=None):
    """An eval.json with a teacher and `students` {name: per-clip clipsim values}; `sets` {name: (value, loo)}
    adds the KVD record and its leave-one-out values."""
    n = len(prompts)
    seeds = [int(1000 * p + k) for k, p in enumerate(prompts)] if seeds is None else seeds
    suite = {"prompts": [f"prompt {i}" for i in range(int(prompts.max()) + 1)], "seeds": seeds, "n_clips": n}
    models = {"teacher@50": {"role": "teacher", "metrics": {}}}
    clips = {}
    for name, values in students.items():
        models[name] = {"role": "student", "metrics": {CLIP: clip_rec(values, prompts),
                                                       SPEEDUP: {"value": 10.0, "ci95": None, "n": 3,
                                                                 "higher_is_better": True, "level": "timing"}}}
        clips[name] = {CLIP: {"values": list(map(float, values))}}
    for name, (value, loo) in (sets or {}).items():
        models[name]["metrics"][KVD] = {"value": value, "ci95": [value - 1, value + 1], "n": n,
                                        "higher_is_better": False, "level": "set"}
        clips[name][KVD] = {"leave_one_out": list(map(float, loo))}
    out = {"schema": "distill.eval/2", "suite": suite, "models": models}
    if per_clip:
        out["per_clip"] = {"prompt_of_clip": [int(p) for p in prompts], "models": clips}
    return out


def gate(tmp_path, current, baseline, policy_text, name="g"):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "current.json").write_text(json.dumps(current))
    (folder / "baseline.json").write_text(json.dumps(baseline))
    (folder / "policy.yaml").write_text(policy_text)
    code = run_gate(folder / "current.json", folder / "baseline.json", folder / "policy.yaml", folder, quiet=True)
    return code, json.loads((folder / "gate.json").read_text())


def policy(r=0.0, test="paired", aware=False, extra=""):
    return (f"name: p\n{extra}rules:\n  - metric: '{CLIP}'\n    roles: [student]\n    max_regression_vs_baseline: {r}\n"
            f"    baseline_test: {test}\n    interval_aware: {str(aware).lower()}\n")


PROMPTS = np.repeat(np.arange(42), 4)  # the held-out suite's shape: 42 prompts x 4 seeds


def test_a_shift_below_the_population_se_but_far_above_the_seed_se_is_caught_only_by_the_paired_test(tmp_path):
    rng = np.random.default_rng(0)
    base = 30 + rng.normal(0, 5, 42)[PROMPTS] + rng.normal(0, 1, PROMPTS.size)  # prompts differ much more than seeds
    current = base - 0.5 + rng.normal(0, 0.05, PROMPTS.size)  # the change costs every clip 0.5 points
    population_se = stats.clustered_mean_interval(current, PROMPTS)["se"]
    paired_se = stats.within_prompt_se(current - base, PROMPTS)
    assert paired_se * 50 < 0.5 < population_se  # the premise: smaller than the one, far larger than the other
    cur, bas = doc({"student": current}, PROMPTS), doc({"student": base}, PROMPTS)

    code, report = gate(tmp_path, cur, bas, policy(test="population", aware=True), "population")
    assert code == 0  # the population interval reaches the baseline: "not significantly worse"
    assert "population view" in report["checks"][0]["message"]

    code, report = gate(tmp_path, cur, bas, policy(), "paired")
    (check,) = report["checks"]
    assert code == 1 and check["test"] == "paired" and check["status"] == "fail"
    assert check["paired"]["se"] == pytest.approx(paired_se) and check["paired"]["diff"] == pytest.approx(
        float(np.mean(current - base)))
    assert "seed-level" in check["paired"]["se_kind"] and "holm" in check["message"]
    assert report["paired_tests"]["family"] == 1 and report["paired_tests"]["correction"] == "holm"
    assert "Holm" in (tmp_path / "paired" / "gate.md").read_text()

    # the same data, unchanged: identical clips have no spread, and pass
    assert gate(tmp_path, bas, bas, policy(), "same")[0] == 0
    # within the tolerance (5% of ~30 = 1.5 points) it passes too
    assert gate(tmp_path, cur, bas, policy(r=0.05), "tolerated")[0] == 0


def shifted(base, p_value, delta=1.0):
    """`base` made worse by a shift whose paired one-sided p-value (seed-level se, 2 seeds per prompt) is
    `p_value`: the differences are mu +- delta within each prompt, so se = delta / sqrt(P) with P prompts."""
    prompts = np.repeat(np.arange(base.size // 2), 2)
    groups = base.size // 2
    mu = delta / np.sqrt(groups) * student_t.isf(p_value, base.size - groups)
    return base - (mu + delta * np.tile([1.0, -1.0], groups)), prompts


def test_holm_changes_a_verdict_at_the_boundary(tmp_path):
    rng = np.random.default_rng(1)
    base_a, base_b = 30 + rng.normal(0, 3, 20), 30 + rng.normal(0, 3, 20)
    cur_a, prompts = shifted(base_a, 0.03)
    cur_b, _ = shifted(base_b, 0.04)
    cur = doc({"student-a": cur_a, "student-b": cur_b}, prompts)
    bas = doc({"student-a": base_a, "student-b": base_b}, prompts)

    code, report = gate(tmp_path, cur, bas, policy(), "holm")
    ps = sorted(c["paired"]["p"] for c in report["checks"])
    assert ps == pytest.approx([0.03, 0.04], rel=1e-6)
    # Holm: the smaller p must be <= 0.05 / 2; 0.03 is not, so neither fails; adjusted p = max(2 x 0.03, 0.04)
    assert code == 0 and [c["paired"]["p_adjusted"] for c in report["checks"]] == pytest.approx([0.06, 0.06])
    code, report = gate(tmp_path, cur, bas, policy(extra="correction: none\n"), "uncorrected")
    assert code == 1 and all(c["status"] == "fail" for c in report["checks"])
    alone = doc({"student-a": cur_a}, prompts), doc({"student-a": base_a}, prompts)
    assert gate(tmp_path, *alone, policy(), "alone")[0] == 1  # a family of one: p 0.03 <= 0.05
    # Holm at the other side of the boundary: 0.02 <= 0.025 fails, and then 0.04 <= 0.05 fails too
    cur_a2, _ = shifted(base_a, 0.02)
    code, report = gate(tmp_path, doc({"student-a": cur_a2, "student-b": cur_b}, prompts), bas, policy(), "both")
    assert code == 1 and [c["status"] for c in report["checks"]] == ["fail", "fail"]


def test_mismatched_seeds_or_missing_per_clip_values_are_refused_naming_the_file(tmp_path):
    values = 30 + np.random.default_rng(2).normal(0, 1, PROMPTS.size)
    cur = doc({"student": values}, PROMPTS)
    other_seeds = doc({"student": values}, PROMPTS, seeds=[int(1000 * p + k + 7) for k, p in enumerate(PROMPTS)])
    code, report = gate(tmp_path, cur, other_seeds, policy(), "seeds")
    (error,) = report["errors"]
    assert code == 2 and "baseline.json" in error and "seeds (" in error and "another suite" in error

    code, report = gate(tmp_path, cur, doc({"student": values}, PROMPTS, per_clip=False), policy(), "old")
    (check,) = report["checks"]
    assert code == 2 and check["status"] == "error"
    assert "baseline.json" in check["message"] and "per-clip values" in check["message"]
    assert "baseline_test: population" in check["message"]
    # two evals from before per-clip values: the population view, and the message says why
    old = doc({"student": values}, PROMPTS, per_clip=False)
    code, report = gate(tmp_path, old, old, policy(), "both-old")
    assert code == 0 and "neither eval.json has per-clip values" in report["checks"][0]["message"]


def test_seed_level_se_is_the_within_prompt_se_for_a_mean():
    rng = np.random.default_rng(3)
    prompts = np.repeat(np.arange(9), [2, 3, 4, 2, 5, 3, 2, 4, 3])
    w = rng.normal(0, 1, 9)[prompts] * 4 + rng.normal(0, 0.5, prompts.size)
    loo = (w.sum() - w) / (w.size - 1)
    se, df, kind = seed_level_se(loo, prompts)
    assert se == pytest.approx(stats.within_prompt_se(w, prompts), rel=1e-12)
    assert df == prompts.size - 9 and "seed-level" in kind
    # one seed per prompt: no within-prompt spread to measure; the ordinary (conservative) s / sqrt(n)
    w9 = w[:9]
    se1, df1, kind1 = seed_level_se((w9.sum() - w9) / 8, np.arange(9))
    assert se1 == pytest.approx(w9.std(ddof=1) / 3, rel=1e-12)
    assert df1 == 8 and "clip-level" in kind1


def test_a_diversity_collapse_is_caught_by_the_paired_set_metric(tmp_path):
    """The collapsed student: the same prompts, one seed's output for all seeds. Its per-clip scores are those of
    real clips (no per-clip metric sees it); KVD against the teacher, paired per clip, does."""
    rng = np.random.default_rng(4)
    prompts = np.repeat(np.arange(10), 4)
    teacher = rng.normal(0, 2, (10, 8))[prompts] + rng.normal(0, 1, (prompts.size, 8))
    student = teacher + rng.normal(0, 0.1, teacher.shape)
    collapsed = student[prompts * 4]  # every seed of a prompt gets its first seed's clip

    def kvd_of(x):
        return kvd(x, teacher, matched=True), leave_one_out(lambda a, b: kvd(a, b, matched=True), x, teacher)

    clip = 30 + rng.normal(0, 1, prompts.size)
    text = f"name: p\nrules:\n  - metric: '{KVD}'\n    roles: [student]\n    max_regression_vs_baseline: 0.1\n"
    base = doc({"student": clip}, prompts, sets={"student": kvd_of(student)})
    code, report = gate(tmp_path, doc({"student": clip}, prompts, sets={"student": kvd_of(collapsed)}), base, text,
                        "collapsed")
    (check,) = report["checks"]
    assert code == 1 and check["paired"]["worse_by"] > 0 and check["paired"]["p_adjusted"] < 0.05
    # a student as good as the baseline (another draw of its small error) passes
    other = teacher + rng.normal(0, 0.1, teacher.shape)
    code, report = gate(tmp_path, doc({"student": clip}, prompts, sets={"student": kvd_of(other)}), base, text,
                        "equal")
    assert code == 0, report["checks"][0]["message"]


def test_shipped_policies_load_and_regress_against_a_baseline_by_the_paired_test(tmp_path):
    from distill.core.config import CONFIG_DIR

    gates = CONFIG_DIR / "eval" / "gates"
    for path in sorted(gates.glob("*.yaml")):
        pol = load_policy(path)
        assert pol.alpha == 0.05 and pol.correction == "holm"
        for rule in pol.rules:
            if rule.kind == "max_regression_vs_baseline":
                assert rule.baseline_test == "paired", (path, rule.metric)
    # a timing has no per-clip values: the speed policy's rule takes the population view and says so
    values = 30 + np.random.default_rng(5).normal(0, 1, PROMPTS.size)
    d = doc({"student": values}, PROMPTS)
    code, report = gate(tmp_path, d, d, (gates / "toyworld-speed.yaml").read_text(), "speed")
    (check,) = report["checks"]
    assert code == 0 and check["test"] == "population" and "timing" in check["message"]


def test_an_absolute_tolerance_stays_put_where_a_relative_one_shrinks_with_a_baseline_near_zero(tmp_path):
    """A distance near its noise floor (a good student's FVD vs the teacher): r|base| shrinks below the seed noise,
    so a relative tolerance fails a change an absolute one in the metric's units tolerates, and vice versa far from
    zero. Lower is better here (a KVD-like record with leave-one-clip-out values)."""
    rng = np.random.default_rng(3)
    prompts = np.repeat(np.arange(40), 2)
    loo_base = 1.0 + rng.normal(0, 0.001, prompts.size)
    loo_cur = loo_base + 0.6 + rng.normal(0, 0.001, prompts.size)  # 0.6 worse; seed-level se about 0.02
    cur = doc({"student": np.zeros(prompts.size)}, prompts, sets={"student": (1.6, loo_cur)})
    bas = doc({"student": np.zeros(prompts.size)}, prompts, sets={"student": (1.0, loo_base)})

    def rule(bound):
        return f"name: p\nrules:\n  - metric: '{KVD}'\n    roles: [student]\n    {bound}\n"

    code, report = gate(tmp_path, cur, bas, rule("max_regression_vs_baseline: 0.15"), "relative")
    assert code == 1 and report["checks"][0]["paired"]["tolerance"] == pytest.approx(0.15)  # 15% of 1.0
    code, report = gate(tmp_path, cur, bas, rule("max_worsening_vs_baseline: 1.0"), "absolute")
    (check,) = report["checks"]
    assert code == 0 and check["paired"]["tolerance"] == 1.0 and check["test"] == "paired"
    assert "at most 1 worse than baseline" in check["rule"] and "1 worse than the baseline" in check["meaning"]
    code, report = gate(tmp_path, cur, bas, rule("max_worsening_vs_baseline: 0.5"), "absolute-tight")
    assert code == 1  # 0.6 worse, significantly more than 0.5
    with pytest.raises(Exception, match="exactly one bound"):
        load_policy_text = rule("max_worsening_vs_baseline: 1.0\n    max_regression_vs_baseline: 0.1")
        (tmp_path / "two.yaml").write_text(load_policy_text)
        load_policy(tmp_path / "two.yaml")
