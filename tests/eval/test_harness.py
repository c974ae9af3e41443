"""The harness end to end on the built-in teacher: identical numbers twice, and a gate that passes the teacher
against itself and fails a deliberately degraded model."""

import json
import subprocess
import sys

import pytest

from distill.core.config import CONFIG_DIR

from distill.teachers.config import load_teacher_config
from distill.eval_cmd import real_clips_for
from distill import toyworld
from distill.eval.gate import run_gate
from distill.eval.harness import Harness
from distill.eval.report import write_outputs
from distill.eval.suite import SuiteConfig, parse_model_spec

SUITE = SuiteConfig(name="tiny-test", toyworld_split="held_out", frames=17, height=64, width=64, fps=8,
                    real="toyworld", diversity={"prompts": 2, "seeds": 2}, speed={"clips": 1, "warmup": 0},
                    batch_size=4, bootstrap=50)
PROMPTS = toyworld.prompt_suite("held_out").prompts[::14][:3]
MODELS = ["self=teacher@50:unipc,role=student", "naive=teacher@2:euler,role=student"]


def _numbers(result: dict) -> dict:
    """eval.json without what a clock measures."""
    out = json.loads(json.dumps(result))
    out.pop("env")
    for model in out["models"].values():
        for key in ("latency_s", "denoise_s", "text_s", "decode_s"):
            model.pop(key)
        model["metrics"] = {k: v for k, v in model["metrics"].items() if not k.startswith("speed.")}
    return out


def _flatten(tree, prefix=""):
    """Nested JSON as {dotted path: leaf}, for comparisons with a tolerance."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in _flatten(sub, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): tree}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    teacher = load_teacher_config("tiny-wan")
    results = []
    for i in range(2):
        out = tmp_path_factory.mktemp(f"eval{i}")
        harness = Harness(SUITE, teacher, PROMPTS, out, real_clips=real_clips_for(SUITE), progress=False)
        result = harness.run([parse_model_spec(m) for m in MODELS])
        write_outputs(result, out, harness.videos)
        results.append((out, result))
    return results


def test_same_inputs_and_seeds_give_identical_numbers(runs):
    (out_a, a), (out_b, b) = runs
    assert _numbers(a) == _numbers(b)
    assert list(a["models"]) == ["teacher@50", "self", "naive"]
    assert a["schema"] == "distill.eval/1"
    teacher = a["models"]["teacher@50"]["metrics"]
    assert "fvd[domain-video-net]:noise_floor" in teacher and "fvd[domain-video-net]:vs_real" in teacher
    naive = a["models"]["naive"]["metrics"]
    for key in ("clip_score[domain-clip]", "fvd[domain-video-net]:vs_teacher", "flicker.vbench",
                "flicker.hf_energy", "diversity[domain-video-net]", "speed.speedup_vs_teacher"):
        assert key in naive, key
    assert naive["clip_score[domain-clip]"]["n"] == len(PROMPTS)
    assert naive["speed.speedup_vs_teacher"]["nfe_ratio"] == 25.0
    for name in ("eval.json", "summary.md", "report.html"):
        assert (out_a / name).stat().st_size > 100
    assert "naive" in (out_a / "summary.md").read_text()
    assert list((out_a / "cache").glob("*.npy"))


def test_the_same_settings_reproduce_the_teacher_exactly(runs):
    metrics = runs[0][1]["models"]["self"]["metrics"]
    assert metrics["fvd[domain-video-net]:vs_teacher"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["clip_score[domain-clip]"]["paired_diff_vs_teacher"]["value"] == 0.0


def test_gate_passes_the_teacher_against_itself_and_fails_a_degraded_model(runs, tmp_path):
    (out, result), _ = runs
    policy = CONFIG_DIR / "eval" / "gates" / "toyworld.yaml"
    self_only = json.loads(json.dumps(result))
    del self_only["models"]["naive"]
    (tmp_path / "self.json").write_text(json.dumps(self_only))
    assert run_gate(tmp_path / "self.json", tmp_path / "self.json", policy, tmp_path / "pass") == 0
    assert run_gate(out / "eval.json", tmp_path / "self.json", policy, tmp_path / "fail") == 1
    junit = (tmp_path / "fail" / "gate.junit.xml").read_text()
    assert "<failure" in junit and "naive" in junit


def test_gate_cli_exit_codes(runs, tmp_path):
    (out, _), _ = runs
    policy = CONFIG_DIR / "eval" / "gates" / "toyworld.yaml"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nrules:\n  - metric: flicker.vbench\n    mn: 1\n")
    cmd = [sys.executable, "-m", "distill.cli", "gate", "--current", str(out / "eval.json"), "--out", str(tmp_path)]
    r = subprocess.run(cmd + ["--policy", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and "mn" in r.stderr
    r = subprocess.run(cmd + ["--policy", str(policy)], capture_output=True, text=True)
    assert r.returncode == 1  # naive regresses against the teacher


def test_model_specs_parse_and_refuse():
    spec = parse_model_spec("cd=runs/cd/export@4:euler,guidance=1")
    assert (spec.name, spec.source, spec.steps, spec.sampler, spec.guidance) == ("cd", "runs/cd/export", 4,
                                                                                 "euler", 1.0)
    assert parse_model_spec("teacher@4").name == "teacher@4"
    with pytest.raises(ValueError, match="SOURCE@STEPS"):
        parse_model_spec("teacher")
    with pytest.raises(ValueError, match="not a whole number"):
        parse_model_spec("teacher@four")
    with pytest.raises(ValueError, match="option"):
        parse_model_spec("teacher@4,cfg=2")
