"""Faults on the eval side, tried as a hostile user or a dying disk would: the gate never passes broken evidence
(non-finite intervals, a baseline from another suite), a damaged clip cache is named and re-sampled, a full disk
ends in one line with no partial output, and bad input (a non-UTF-8 prompts file, `NAME=PATH@0`, a suite too small
for its set metrics) is refused in one line before any sampling. All cheap: no clip is sampled by a model here."""

import errno
import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from distill.eval.gate import run_gate
from distill.eval.harness import Harness
from distill.eval.report import write_outputs
from distill.eval.suite import SuiteConfig, parse_model_spec
from distill.teachers.config import load_teacher_config

from distill.core.config import ConfigError
from distill.core.disk import DiskFull
from tests.disks import small_tmpfs

KVD = "kvd[domain-video-net,17f]:vs_teacher"
SUITE_RECORD = {"name": "s", "prompts": ["a red circle", "a blue square", "a green triangle"], "seeds": [0, 1000, 2000],
                "n_clips": 3, "frames": 17, "height": 64, "width": 64, "fps": 8,
                "detector": {"name": "domain-video-net", "dim": 64, "protocol": "17 consecutive frames"},
                "clip_backend": "domain-clip", "flow": "farneback"}


def _doc(value=5.0, ci=(4.0, 6.0), suite=None):
    rec = {"value": value, "ci95": list(ci) if ci is not None else None, "n": 3, "higher_is_better": False}
    models = {"teacher@50": {"role": "teacher", "metrics": {KVD: {**rec, "value": 0.0, "ci95": [0.0, 0.0]}}},
              "student-cd@4": {"role": "student", "metrics": {KVD: rec}}}
    return {"schema": "distill.eval/2", "suite": SUITE_RECORD if suite is None else suite, "models": models}


def _gate(tmp_path, current, policy, baseline=None):
    cur = tmp_path / "current.json"
    cur.write_text(json.dumps(current))  # json writes inf/nan as Infinity/NaN, as a careless writer would
    base = None
    if baseline is not None:
        base = tmp_path / "baseline.json"
        base.write_text(json.dumps(baseline))
    pol = tmp_path / "policy.yaml"
    pol.write_text(policy)
    code = run_gate(cur, base, pol, tmp_path / "gate", quiet=True)
    return code, json.loads((tmp_path / "gate" / "gate.json").read_text())


INTERVAL_AWARE_MAX = f"name: p\nrules:\n  - metric: '{KVD}'\n    models: 'student-*'\n    max: 20\n" \
                     f"    interval_aware: true\n"
REGRESSION = f"name: p\nrules:\n  - metric: '{KVD}'\n    models: 'student-*'\n    max_regression_vs_baseline: 0.1\n"


@pytest.mark.parametrize("value,ci", [(1e9, (-math.inf, math.inf)), (1e9, (0.0, math.inf)), (1e9, (math.nan, 1.0)),
                                      (5.0, (6.0, 4.0))])
def test_a_non_finite_or_inverted_interval_is_a_malformed_record_not_a_pass(tmp_path, value, ci):
    code, report = _gate(tmp_path, _doc(value, ci), INTERVAL_AWARE_MAX)
    assert code == 2  # before the fix: [-inf, inf] "reached" max 20 and a KVD of 1e9 passed
    (check,) = report["checks"]
    assert check["status"] == "error"
    assert "'student-cd@4'" in check["message"] and KVD in check["message"] and "ci95" in check["message"]


def test_a_finite_interval_still_forgives_as_documented(tmp_path):
    code, _ = _gate(tmp_path, _doc(21.0, (15.0, 27.0)), INTERVAL_AWARE_MAX)
    assert code == 0


@pytest.mark.parametrize("change,named", [
    ({"prompts": ["a red circle", "a blue square", "a pink star"]}, "prompts"),
    ({"seeds": [0, 1000, 2001]}, "seeds"),
    ({"frames": 33}, "frames"),
    ({"height": 128}, "height"),
    ({"detector": {"name": "i3d", "dim": 400, "protocol": "16 frames"}}, "detector"),
    ({"clip_backend": "open_clip:ViT-B-32"}, "clip_backend"),
])
def test_a_baseline_from_another_suite_is_refused_naming_the_difference(tmp_path, change, named):
    baseline = _doc(5.0, (4.0, 6.0), suite={**SUITE_RECORD, **change})
    code, report = _gate(tmp_path, _doc(5.0, (4.0, 6.0)), REGRESSION, baseline)
    assert code == 2 and not report["checks"]  # before the fix: compared without a word, and passed
    (error,) = report["errors"]
    assert "another suite" in error and f"{named} (" in error and "baseline.json" in error


def test_the_same_suite_is_compared_and_a_baseline_without_a_suite_is_refused_by_name(tmp_path):
    assert _gate(tmp_path, _doc(5.0, (4.0, 6.0)), REGRESSION, _doc(5.0, (4.0, 6.0)))[0] == 0
    assert _gate(tmp_path, _doc(8.0, (7.0, 9.0)), REGRESSION, _doc(5.0, (4.0, 6.0)))[0] == 1
    old = _doc(5.0, (4.0, 6.0))
    old.pop("suite")
    code, report = _gate(tmp_path, _doc(5.0, (4.0, 6.0)), REGRESSION, old)
    assert code == 2 and "no 'suite' record" in report["errors"][0]


def test_a_baseline_scored_against_other_teacher_weights_is_refused_naming_both_hashes(tmp_path):
    def with_teacher(doc, digest):
        doc["models"]["teacher@50"]["checkpoint_hash"] = digest
        return doc
    same = _gate(tmp_path, with_teacher(_doc(), "a1b2"), REGRESSION, with_teacher(_doc(), "a1b2"))
    assert same[0] == 0
    code, report = _gate(tmp_path, with_teacher(_doc(), "a1b2"), REGRESSION, with_teacher(_doc(), "0ld7"))
    assert code == 2 and not report["checks"]
    (error,) = report["errors"]
    assert "0ld7" in error and "a1b2" in error and "baseline.json" in error and "teacher@50" in error


def test_gate_reports_on_a_full_disk_are_one_line_and_leave_no_partial_file(tmp_path, monkeypatch, capsys):
    from distill.eval import gate

    def full(result, path):
        Path(path).write_text("{\"half\": ")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(gate, "write_junit", full)
    cur = tmp_path / "current.json"
    cur.write_text(json.dumps(_doc()))
    pol = tmp_path / "policy.yaml"
    pol.write_text(INTERVAL_AWARE_MAX)
    assert run_gate(cur, None, pol, tmp_path / "gate") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gate: error: disk full writing the gate's gate.junit.xml")
    assert sorted(p.name for p in (tmp_path / "gate").iterdir()) == ["gate.json"]  # no .tmp-gate.junit.xml


# --- the clip cache ---------------------------------------------------------------------------------------------
SUITE = SuiteConfig(name="tiny-faults", prompts=["a red circle moving left", "a blue square moving up",
                                                  "a green triangle moving down"], frames=5, height=8, width=8)


class FakeCandidate:
    """Stands in for a loaded model: a clip per (prompt, seed) that says which it is, and a count of samplings."""

    takes_images = False  # a text-to-video model

    def __init__(self):
        self.sampled: list[int] = []

    def cache_key(self, prompt, seed, frames, height, width, image=None):
        return f"fake-{seed}-{frames}x{height}x{width}"

    def sample(self, prompts, seeds, frames, height, width, timing=None, decode=True, images=None):
        self.sampled += list(seeds)
        return np.stack([np.full((frames, height, width, 3), seed % 251, dtype=np.uint8) for seed in seeds])


def _harness(tmp_path, suite=SUITE):
    return Harness(suite, load_teacher_config("tiny-wan"), list(suite.prompts), tmp_path / "out", progress=False)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "wrong shape", "pickled object"])
def test_a_damaged_cache_entry_is_named_dropped_and_sampled_again(tmp_path, damage):
    harness, cand = _harness(tmp_path), FakeCandidate()
    first = harness.clips(cand, harness.items, "sampling")
    assert len(cand.sampled) == 3
    victim = harness.cache_dir / "fake-1000-5x8x8.npy"
    data = victim.read_bytes()
    victim.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x00" * 40,
                        "wrong shape": data[:0]}.get(damage, b""))
    if damage == "wrong shape":
        np.save(victim, np.zeros((3, 8, 8, 3), dtype=np.uint8))
    if damage == "pickled object":
        np.save(victim, np.array([{"not": "a clip"}], dtype=object), allow_pickle=True)
    cand.sampled.clear()
    with pytest.warns(UserWarning) as caught:
        again = harness.clips(cand, harness.items, "sampling")
    (warning,) = [w for w in caught if "clip cache entry" in str(w.message)]
    assert str(victim) in str(warning.message) and "sampling the clip again" in str(warning.message)
    assert cand.sampled == [1000]  # only the damaged clip: before the fix every rerun failed on it
    np.testing.assert_array_equal(again, first)
    assert np.load(victim).shape == (5, 8, 8, 3)  # the entry was replaced by a good one
    cand.sampled.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        harness.clips(cand, harness.items, "sampling")
    assert cand.sampled == []  # and the next rerun trusts the cache again


def test_a_full_disk_while_caching_a_clip_is_one_line_and_leaves_no_partial_entry(tmp_path, monkeypatch):
    import distill.eval.harness as harness_module

    real_save = np.save

    def save(path, array, *args, **kwargs):
        real_save(path, array[:1], *args, **kwargs)  # a part of the clip reached the disk
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(harness_module.np, "save", save)
    harness = _harness(tmp_path)
    with pytest.raises(DiskFull, match=r"disk full writing the clip cache entry .*free on .*it needs about"):
        harness.clips(FakeCandidate(), harness.items, "sampling")
    assert list(harness.cache_dir.iterdir()) == []


def test_eval_outputs_on_a_full_disk_keep_the_earlier_files_whole(tmp_path, monkeypatch):
    result = {"schema": "distill.eval/2", "suite": SUITE_RECORD, "models": {}, "env": {}}
    out = tmp_path / "eval"
    out.mkdir()
    (out / "eval.json").write_text('{"earlier": true}\n')
    real_write = Path.write_bytes

    def write_bytes(self, data):
        if self.name == ".tmp-eval.json":
            real_write(self, data[:10])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)
    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    from distill.eval import report

    monkeypatch.setattr(report, "summary_markdown", lambda r: "summary\n")
    monkeypatch.setattr(report, "report_html", lambda r, c: "<html></html>\n")
    with pytest.raises(DiskFull, match="disk full writing the eval's eval.json"):
        write_outputs(result, out)
    assert sorted(p.name for p in out.iterdir()) == ["eval.json"]
    assert json.loads((out / "eval.json").read_text()) == {"earlier": True}  # never half a file for a gate to read


@pytest.fixture
def small_disk(tmp_path):
    with small_tmpfs(tmp_path / "small-disk", "1m") as mount:
        yield mount


def test_eval_outputs_and_gate_reports_on_a_real_full_disk(tmp_path, small_disk, monkeypatch, capsys):
    from distill.eval import report

    monkeypatch.setattr(report, "summary_markdown", lambda r: "summary\n")
    monkeypatch.setattr(report, "report_html", lambda r, c: "<html></html>\n")
    big = {"schema": "distill.eval/2", "suite": {**SUITE_RECORD, "prompts": ["a red circle " * 40] * 3000},
           "models": {}, "env": {}}  # about 1.5 MB of eval.json for a 1 MiB disk
    with pytest.raises(DiskFull, match=rf"disk full writing the eval's eval.json .*free on {small_disk}"):
        write_outputs(big, small_disk / "eval")
    assert list((small_disk / "eval").iterdir()) == []
    (small_disk / "filler").write_bytes(b"x" * (shutil.disk_usage(small_disk).free - 1024))
    cur = tmp_path / "current.json"
    cur.write_text(json.dumps(_doc()))
    pol = tmp_path / "policy.yaml"
    pol.write_text(INTERVAL_AWARE_MAX)
    assert run_gate(cur, None, pol, small_disk / "gate") == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("gate: error: disk full writing the gate's gate.") and str(small_disk) in line
    assert not [p for p in (small_disk / "gate").iterdir() if p.name.startswith(".tmp-")]


# --- bad input, refused before any sampling -----------------------------------------------------------------------
@pytest.mark.parametrize("prompts,seeds,ok", [(2, 1, False), (1, 4, False), (3, 1, True), (2, 2, True)])
def test_a_suite_too_small_for_fvd_and_kvd_is_refused_before_sampling(tmp_path, prompts, seeds, ok):
    suite = SuiteConfig(name="small", prompts=list(SUITE.prompts[:prompts]), seeds_per_prompt=seeds)
    harness = _harness(tmp_path, suite)
    if ok:
        harness._check_suite_size()
        return
    with pytest.raises(ConfigError, match=rf"suite 'small' has {prompts} prompt\(s\) x {seeds} seed\(s\); its set "
                                          rf"metrics \(FVD, KVD.*need at least \d prompts"):
        harness.preflight([])
    assert not (tmp_path / "out").exists()  # nothing was loaded, sampled or written


@pytest.mark.parametrize("text,message", [
    ("x=/some/folder@0", "model 'x=/some/folder@0': steps must be at least 1, got 0"),
    ("x=/some/folder@4:heun", "model 'x=/some/folder@4:heun': sampler 'heun': Input should be"),
    ("x=/some/folder@4,guidance=high", "model 'x=/some/folder@4,guidance=high': guidance 'high':"),
    ("x=@4", "model 'x=@4': give the model and step count as SOURCE@STEPS"),
])
def test_a_bad_model_spec_is_one_line_naming_it(text, message):
    with pytest.raises(ValueError) as err:
        parse_model_spec(text)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


# --- more faults (scripts/try_more_faults.py) -------------------------------------------------------------------
def test_a_models_pattern_that_matches_no_model_is_an_error_not_a_pass(tmp_path):
    """Before: `models: 'nope-*'` skipped its only rule and the gate passed, exit 0, having checked nothing."""
    policy = f"name: p\nrules:\n  - metric: '{KVD}'\n    models: 'nope-*'\n    max: 20\n"
    code, report = _gate(tmp_path, _doc(), policy)
    check = report["checks"][0]
    assert code == 2 and check["status"] == "error"
    assert "models ['nope-*'] match no model in" in check["message"] and "student-cd@4" in check["message"]
    code, report = _gate(tmp_path, _doc(), policy + "    optional: true\n")  # a model that may be absent
    assert code == 0 and report["checks"][0]["status"] == "skip"
    roles = f"name: p\nrules:\n  - metric: '{KVD}'\n    roles: [baseline]\n    max: 20\n"  # roles leave none: a gap
    code, report = _gate(tmp_path, _doc(), roles)
    assert code == 0 and report["checks"][0]["status"] == "skip"


def test_a_policy_with_a_yaml_syntax_error_is_one_line_naming_where(tmp_path):
    pol = tmp_path / "policy.yaml"
    pol.write_text("name: p\nrules: [\n")
    cur = tmp_path / "current.json"
    cur.write_text(json.dumps(_doc()))
    assert run_gate(cur, None, pol, tmp_path / "gate", quiet=True) == 2
    [message] = json.loads((tmp_path / "gate" / "gate.json").read_text())["errors"]
    assert message.startswith(f"{pol}: not a readable YAML policy: line 3, column 1: ") and "\n" not in message

