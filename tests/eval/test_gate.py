import copy
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import distill.eval.gate as gate_module
from distill.eval.gate import GateError, _compare, load_policy, run_gate

ROOT = Path(__file__).resolve().parents[2]
TOYWORLD = ROOT / "configs" / "eval" / "gates" / "toyworld.yaml"
CLIP, FVD_T, KVD_T, VBENCH, WARP, SPEEDUP, DIV = (
    "clipsim[domain-clip]", "fvd[domain-video-net,17f]:vs_teacher", "kvd[domain-video-net,17f]:vs_teacher",
    "flicker.vbench", "flicker.warp_error[farneback]", "speed.speedup_vs_teacher", "diversity[domain-video-net,17f]")


def rec(value, ci=None, hib=True, paired=None):
    r = {"value": value, "ci95": ci, "n": 16, "higher_is_better": hib}
    if paired is not None:
        r["paired_diff_vs_teacher"] = {"value": paired[0], "ci95": list(paired[1])}
    return r


def teacher_metrics():
    return {CLIP: rec(31.0, [30.0, 32.0], paired=(0.0, (0.0, 0.0))), FVD_T: rec(5.0, [3.0, 7.0], hib=False),
            KVD_T: rec(0.01, [-0.02, 0.04], hib=False),
            "fvd[domain-video-net,17f]:noise_floor": rec(5.0, [3.0, 7.0], hib=False),
            VBENCH: rec(0.98, [0.975, 0.985], paired=(0.0, (0.0, 0.0))), WARP: rec(0.020, [0.018, 0.022], hib=False),
            SPEEDUP: rec(1.0, [1.0, 1.0]), DIV: rec(4.6, [3.3, 6.0], paired=(0.0, (0.0, 0.0))),
            "some.future_metric": {"value": 1, "whatever": [1, 2]}}


def eval_doc(student_metrics=None, teacher=True):
    models = {}
    if teacher:
        models["teacher@50"] = {"steps": 50, "nfe": 100, "latency_s": 2.0, "role": "teacher",
                                "metrics": teacher_metrics()}
    models["student-cd@4"] = {"steps": 4, "nfe": 4, "latency_s": 0.1, "role": "student", "extra_key": {"x": 1},
                              "metrics": student_metrics if student_metrics is not None else teacher_metrics()}
    return {"schema": "distill.eval/2", "suite": {"prompts": 16, "seeds": [0]}, "models": models,
            "env": {"device": "cpu"}}


def write(tmp_path, name, obj):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def policy_file(tmp_path, text, name="policy.yaml"):
    return write(tmp_path, name, text)


def run(tmp_path, current, baseline=None, policy=TOYWORLD):
    cur = current if isinstance(current, Path) else write(tmp_path, "current.json", current)
    base = baseline if (baseline is None or isinstance(baseline, Path)) else write(tmp_path, "baseline.json", baseline)
    out = tmp_path / "gate"
    code = run_gate(cur, base, policy, out, quiet=True)
    report = json.loads((out / "gate.json").read_text())
    return code, report, out


def degraded():
    m = teacher_metrics()
    m[CLIP] = rec(20.0, [19.0, 21.0], paired=(-11.0, (-12.0, -10.0)))  # 11 points below: the whole interval too
    m[WARP] = rec(0.05, [0.045, 0.055], hib=False)
    return m


def test_shipped_policy_is_valid():
    policy = load_policy(TOYWORLD)
    assert policy.name == "toyworld"
    assert {r.metric for r in policy.rules} == {CLIP, FVD_T, KVD_T, VBENCH, WARP, DIV}
    speed = load_policy(TOYWORLD.with_name("toyworld-speed.yaml"))
    assert {r.metric for r in speed.rules} == {SPEEDUP}  # timings gate on their own (a dedicated machine)
    clip_rule = next(r for r in policy.rules if r.metric == CLIP)
    assert clip_rule.kind == "min_paired_diff_vs_teacher" and clip_rule.interval_aware  # points, not a ratio
    assert "ratio" not in next(r for r in policy.rules if r.metric == VBENCH).kind


def test_teacher_vs_itself_passes(tmp_path):
    doc = eval_doc()
    code, report, out = run(tmp_path, doc, baseline=doc)
    assert code == 0, report
    assert report["verdict"] == "PASS" and report["counts"] == {"pass": 6, "fail": 0, "skip": 0, "error": 0}
    assert all(c["passed"] is True for c in report["checks"])
    md = (out / "gate.md").read_text()
    assert "PASS" in md and "FAIL" not in md


def test_degraded_student_fails_with_junit_failure(tmp_path):
    code, report, out = run(tmp_path, eval_doc(degraded()), baseline=eval_doc())
    assert code == 1
    failed = {c["metric"] for c in report["checks"] if c["passed"] is False}
    assert failed == {CLIP, WARP}
    suite = ET.parse(out / "gate.junit.xml").getroot().find("testsuite")
    failures = suite.findall("testcase/failure")
    assert len(failures) == 2 and any(CLIP in f.get("message") or "below" in f.get("message") for f in failures)
    assert "FAIL" in (out / "gate.md").read_text().splitlines()[0]


def test_a_collapsed_student_fails_on_diversity_alone(tmp_path):
    """Every seed of a prompt the same clip: FVD and prompt adherence can stay within noise, diversity is 0."""
    m = teacher_metrics()
    m[DIV] = rec(0.0, [0.0, 0.0], paired=(-4.6, (-5.9, -3.3)))
    code, report, _ = run(tmp_path, eval_doc(m), baseline=eval_doc())
    assert code == 1 and {c["metric"] for c in report["checks"] if c["status"] == "fail"} == {DIV}
    m[DIV] = rec(2.8, [1.2, 4.4], paired=(-1.8, (-3.4, -0.2)))  # 0.61 of the teacher's: less varied, not collapsed
    assert run(tmp_path, eval_doc(m), baseline=eval_doc())[0] == 0


def test_junit_parses_and_counts(tmp_path):
    code, report, out = run(tmp_path, eval_doc(degraded()), baseline=None)  # no baseline: the FVD rule skips
    assert code == 1
    root = ET.parse(out / "gate.junit.xml").getroot()
    suites = root.findall("testsuite")
    assert len(suites) == 1
    suite = suites[0]
    cases = suite.findall("testcase")
    assert int(suite.get("tests")) == len(cases) == 6 == int(root.get("tests"))
    assert int(suite.get("failures")) == len(suite.findall("testcase/failure")) == 2
    assert int(suite.get("skipped")) == len(suite.findall("testcase/skipped")) == 1
    assert int(suite.get("errors")) == 0
    assert report["counts"] == {"pass": 3, "fail": 2, "skip": 1, "error": 0}


def test_bad_policy_key_is_an_error_naming_key_and_file(tmp_path, capsys):
    pol = policy_file(tmp_path, "name: p\nrules:\n  - metric: x\n    min_ration_to_teacher: 0.9\n")
    code = run_gate(write(tmp_path, "c.json", eval_doc()), None, pol, tmp_path / "out")
    assert code == 2
    err = capsys.readouterr().err
    assert "rules.0.min_ration_to_teacher" in err and str(pol) in err
    report = json.loads((tmp_path / "out" / "gate.json").read_text())
    assert report["exit_code"] == 2 and "min_ration_to_teacher" in report["errors"][0]
    junit = ET.parse(tmp_path / "out" / "gate.junit.xml").getroot()
    assert int(junit.get("errors")) == 1 and "ERROR" in (tmp_path / "out" / "gate.md").read_text()


@pytest.mark.parametrize("rule, key", [
    ("    min: 1\n    interval_aware: 'yes'\n", "rules.0.interval_aware"),
    ("    min: '1'\n", "rules.0.min"),
    ("    min: 1\n    max: 2\n", "rules.0"),
    ("    required: true\n", "rules.0"),
    ("    max_regression_vs_baseline: -0.1\n", "rules.0.max_regression_vs_baseline"),
])
def test_policy_wrong_type_or_bounds_name_the_key(tmp_path, rule, key):
    pol = policy_file(tmp_path, "name: p\nrules:\n  - metric: x\n" + rule)
    with pytest.raises(GateError) as err:
        load_policy(pol)
    assert f"{pol}: " in str(err.value) and repr(key) in str(err.value)
    code, report, _ = run(tmp_path, eval_doc(), policy=pol)
    assert code == 2


def test_schema_mismatch_is_an_error(tmp_path):
    doc = eval_doc()
    doc["schema"] = "distill.eval/0"
    code, report, _ = run(tmp_path, doc)
    assert code == 2 and "distill.eval/0" in report["errors"][0] and "current.json" in report["errors"][0]


def test_schema_1_is_refused_by_name(tmp_path):
    doc = eval_doc()
    doc["schema"] = "distill.eval/1"
    code, report, _ = run(tmp_path, doc)
    (error,) = report["errors"]
    assert code == 2 and "'distill.eval/1' is no longer read" in error and "distill.eval/2" in error


def test_missing_or_invalid_files_are_errors(tmp_path):
    code, report, _ = run(tmp_path, tmp_path / "nope.json")
    assert code == 2 and "nope.json" in report["errors"][0]
    code, report, _ = run(tmp_path, eval_doc(), baseline=tmp_path / "missing-baseline.json")
    assert code == 2 and "missing-baseline.json" in report["errors"][0]
    code, report, _ = run(tmp_path, eval_doc(), policy=tmp_path / "missing.yaml")
    assert code == 2 and "missing.yaml" in report["errors"][0]
    code, report, _ = run(tmp_path, write(tmp_path, "broken.json", "{not json"))
    assert code == 2 and "not valid JSON" in report["errors"][0]


def test_missing_required_metric_is_an_error_optional_is_a_skip(tmp_path):
    metrics = teacher_metrics()
    del metrics[WARP]
    code, report, _ = run(tmp_path, eval_doc(metrics), baseline=eval_doc())
    assert code == 2
    (bad,) = [c for c in report["checks"] if c["status"] == "error"]
    assert bad["model"] == "student-cd@4" and WARP in bad["message"] and "current.json" in bad["message"]
    pol = policy_file(tmp_path, f"name: p\nrules:\n  - metric: {WARP}\n    max: 0.9\n")
    code, report, _ = run(tmp_path, eval_doc(metrics), policy=pol)
    assert code == 0 and [c["status"] for c in report["checks"]] == ["pass", "skip"]


def test_required_pattern_matching_no_model_is_an_error(tmp_path):
    pol = policy_file(tmp_path, f"name: p\nrules:\n  - metric: '{CLIP}'\n    models: 'apt-*'\n    min: 0\n"
                                "    required: true\n")
    code, report, _ = run(tmp_path, eval_doc(), policy=pol)
    assert code == 2 and "apt-*" in report["checks"][0]["message"]


def test_ratio_rule_without_teacher_is_an_error(tmp_path):
    code, report, _ = run(tmp_path, eval_doc(teacher=False), baseline=eval_doc())
    assert code == 2
    assert any("no model with role 'teacher'" in c["message"] for c in report["checks"] if c["status"] == "error")


def test_malformed_record_is_an_error_naming_model_and_metric(tmp_path):
    metrics = teacher_metrics()
    metrics[CLIP] = {"value": "high"}
    code, report, _ = run(tmp_path, eval_doc(metrics))
    (bad,) = [c for c in report["checks"] if c["status"] == "error"]
    assert code == 2 and "student-cd@4" in bad["message"] and CLIP in bad["message"]


def test_interval_aware_fails_only_when_the_whole_interval_is_on_the_wrong_side(tmp_path):
    aware = policy_file(tmp_path, f"name: p\nrules:\n  - metric: {WARP}\n    models: 'student-*'\n"
                                  "    max_ratio_to_teacher: 1.5\n    interval_aware: true\n", "aware.yaml")
    point = policy_file(tmp_path, f"name: p\nrules:\n  - metric: {WARP}\n    models: 'student-*'\n"
                                  "    max_ratio_to_teacher: 1.5\n", "point.yaml")
    straddles = teacher_metrics()  # ratio 1.6; the paired interval reaches (0.020 + 0.008) / 0.020 = 1.4
    straddles[WARP] = rec(0.032, [0.026, 0.038], hib=False, paired=(0.012, (0.008, 0.016)))
    assert run(tmp_path, eval_doc(straddles), policy=aware)[0] == 0
    assert run(tmp_path, eval_doc(straddles), policy=point)[0] == 1
    above = teacher_metrics()  # the paired interval starts at ratio (0.020 + 0.012) / 0.020 = 1.6
    above[WARP] = rec(0.034, [0.030, 0.038], hib=False, paired=(0.014, (0.012, 0.016)))
    code, report, _ = run(tmp_path, eval_doc(above), policy=aware)
    assert code == 1 and "whole ci95" in report["checks"][0]["message"]
    no_ci = teacher_metrics()  # falls back to a point check, and says so
    no_ci[WARP] = rec(0.032, hib=False)
    code, report, _ = run(tmp_path, eval_doc(no_ci), policy=aware)
    assert code == 1 and "point check" in report["checks"][0]["message"]
    assert "never stricter" in report["checks"][0]["meaning"]


def test_interval_aware_is_never_stricter_than_the_point_check():
    """Even with an interval that excludes its own point (the old FVD bootstrap's defect), a passing point passes."""
    assert _compare(14.7, (17.9, 62.6), 15.0, lower=False, interval_aware=True)[0]  # the README's FVD row
    assert _compare(14.7, (17.9, 62.6), 15.0, lower=False, interval_aware=False)[0]
    rng = np.random.default_rng(0)
    for _ in range(2000):
        value, bound = rng.normal(0, 1, 2)
        lo, hi = np.sort(rng.normal(0, 1.5, 2))
        lower = bool(rng.integers(2))
        point = _compare(value, None, bound, lower, interval_aware=False)[0]
        aware = _compare(value, (lo, hi), bound, lower, interval_aware=True)[0]
        assert aware or not point, (value, lo, hi, bound, lower)


def paired_policy(tmp_path, aware: bool) -> Path:
    return policy_file(tmp_path, f"name: p\nrules:\n  - metric: {CLIP}\n    roles: [student]\n"
                                 f"    min_paired_diff_vs_teacher: -3.0\n    interval_aware: {str(aware).lower()}\n",
                       f"paired-{aware}.yaml")


@pytest.mark.parametrize("paired, point_code, aware_code", [
    ((-2.0, (-4.0, 0.0)), 0, 0),    # within 3 points
    ((-3.5, (-5.0, -2.0)), 1, 0),   # 3.5 points below, but the interval reaches -3: not significantly worse
    ((-4.0, (-5.0, -3.5)), 1, 1),   # the whole interval is more than 3 points below
])
def test_prompt_adherence_is_gated_on_the_paired_difference_in_points(tmp_path, paired, point_code, aware_code):
    metrics = teacher_metrics()
    metrics[CLIP] = rec(31.0 + paired[0], [29.0, 31.0], paired=paired)
    assert run(tmp_path, eval_doc(metrics), policy=paired_policy(tmp_path, False))[0] == point_code
    code, report, _ = run(tmp_path, eval_doc(metrics), policy=paired_policy(tmp_path, True))
    assert code == aware_code
    (check,) = report["checks"]
    assert check["observed"] == paired[0] and check["bound"] == -3.0 and check["interval"] == list(paired[1])


def test_a_misspelt_metric_is_an_error_naming_the_rule_and_the_closest_names(tmp_path):
    """Before: `0 passed, 0 failed, 2 skipped`, exit 0 -- a typo turned the gate into a no-op."""
    pol = policy_file(tmp_path, "name: p\nrules:\n  - metric: 'clipsim[domain-clp]'\n    min: 0\n"
                                "  - metric: 'flicker.warp_eror[farneback]'\n    max: 1\n")
    code, report, _ = run(tmp_path, eval_doc(), policy=pol)
    assert code == 2
    first, second = report["checks"]
    assert first["status"] == second["status"] == "error"
    assert first["message"].startswith("rules[0]") and CLIP in first["message"]
    assert second["message"].startswith("rules[1]") and WARP in second["message"]
    optional = policy_file(tmp_path, "name: p\nrules:\n  - metric: 'clipsim[ViT-B-32/laion2b_s34b_b79k]'\n"
                                     "    min: 0\n    optional: true\n", "optional.yaml")
    code, report, _ = run(tmp_path, eval_doc(), policy=optional)
    assert code == 0 and report["checks"][0]["status"] == "skip"


def test_required_and_optional_together_is_a_policy_error(tmp_path):
    pol = policy_file(tmp_path, "name: p\nrules:\n  - metric: x\n    min: 0\n    required: true\n"
                                "    optional: true\n")
    with pytest.raises(GateError, match="both required"):
        load_policy(pol)


def test_a_skipped_record_is_a_skip_that_says_why(tmp_path):
    metrics = teacher_metrics()
    metrics[VBENCH] = {"value": None, "ci95": None, "n": 0, "higher_is_better": True,
                       "skipped": "the suite has no static prompts"}
    doc = eval_doc(metrics)
    doc["models"]["teacher@50"]["metrics"][VBENCH] = dict(metrics[VBENCH])
    code, report, _ = run(tmp_path, doc, baseline=eval_doc())
    (check,) = [c for c in report["checks"] if c["metric"] == VBENCH]
    assert code == 0 and check["status"] == "skip" and "no static prompts" in check["message"]


def test_an_unwritable_out_is_exit_2_in_one_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code = run_gate(write(tmp_path, "c.json", eval_doc()), None, TOYWORLD, blocker / "gate")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "a-file" in err
    assert "cannot be written" in err or "which is a file, not a folder" in err


def test_an_unexpected_exception_is_exit_2_not_1(tmp_path, monkeypatch):
    def broken(*args):
        raise KeyError("surprise")

    monkeypatch.setattr(gate_module, "evaluate", broken)
    code, report, _ = run(tmp_path, eval_doc())
    assert code == 2 and "unexpected KeyError" in report["errors"][0]


@pytest.mark.parametrize("case", ["missing current", "malformed current", "unwritable out"])
def test_gate_command_exit_2_is_one_line_without_traceback(tmp_path, case):
    current = write(tmp_path, "current.json", eval_doc() if case != "malformed current" else "{oops")
    out = tmp_path / "out"
    if case == "missing current":
        current = tmp_path / "missing.json"
    if case == "unwritable out":
        (tmp_path / "file").write_text("")
        out = tmp_path / "file" / "out"
    r = subprocess.run([sys.executable, "-m", "distill.cli", "gate", "--current", str(current), "--policy",
                        str(TOYWORLD), "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert {"missing current": "missing.json", "malformed current": "not valid JSON",
            "unwritable out": "file"}[case] in r.stderr


def test_regression_direction_follows_higher_is_better(tmp_path):
    policy = policy_file(tmp_path, f"name: p\nrules:\n  - metric: {FVD_T}\n    max_regression_vs_baseline: 0.15\n"
                                f"  - metric: {SPEEDUP}\n    models: 'student-*'\n"
                                "    max_regression_vs_baseline: 0.2\n")
    base = eval_doc()
    base["models"]["student-cd@4"]["metrics"][FVD_T] = rec(10.0, hib=False)
    base["models"]["student-cd@4"]["metrics"][SPEEDUP] = rec(12.0)

    def current(fvd, speedup):
        doc = copy.deepcopy(base)
        doc["models"]["student-cd@4"]["metrics"][FVD_T] = rec(fvd, hib=False)
        doc["models"]["student-cd@4"]["metrics"][SPEEDUP] = rec(speedup)
        return doc

    assert run(tmp_path, current(11.4, 10.0), base, policy)[0] == 0  # within 15% / 20%
    assert run(tmp_path, current(6.0, 20.0), base, policy)[0] == 0  # improvements in both directions
    code, report, _ = run(tmp_path, current(11.6, 12.0), base, policy)  # FVD (lower is better) up 16%
    assert code == 1 and [c["metric"] for c in report["checks"] if c["passed"] is False] == [FVD_T]
    code, report, _ = run(tmp_path, current(10.0, 9.0), base, policy)  # speed-up (higher is better) down 25%
    assert code == 1 and [c["metric"] for c in report["checks"] if c["passed"] is False] == [SPEEDUP]
    assert report["checks"][-1]["bound"] == pytest.approx(9.6)
