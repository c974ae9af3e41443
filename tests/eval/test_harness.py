"""The harness end to end on the built-in teacher: identical numbers twice, schema distill.eval/2 records (KVD
beside FVD, model-vs-model rows, VBench skipped without static prompts), a gate that passes the teacher against
itself and fails a deliberately degraded model, and the preflight that refuses bad inputs before any sampling."""

import json
import subprocess
import sys

import pytest

from distill.core.config import CONFIG_DIR, ConfigError

from distill.teachers.config import load_teacher_config
from distill.eval.suite import real_clips_for
from distill import toyworld
from distill.eval.gate import run_gate
from distill.eval.harness import Harness
from distill.eval.report import write_outputs
from distill.eval.suite import SuiteConfig, parse_model_spec

SUITE = SuiteConfig(name="tiny-test", toyworld_split="held_out", frames=17, height=64, width=64, fps=8,
                    real="toyworld", diversity={"prompts": 2, "seeds": 2}, speed={"clips": 1, "warmup": 0},
                    batch_size=4)
PROMPTS = toyworld.prompt_suite("held_out").prompts[::14][:3]
MODELS = ["self=teacher@50:unipc,role=student", "naive=teacher@2:euler,role=student"]


def _numbers(result: dict) -> dict:
    """eval.json without what a clock measures."""
    out = json.loads(json.dumps(result))
    out.pop("env")
    for model in out["models"].values():
        for key in ("latency_s", "denoise_s", "text_s", "decode_s", "first_frame_s"):
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


CLIP, FVD, KVD = "clipsim[domain-clip]", "fvd[domain-video-net,17f]", "kvd[domain-video-net,17f]"


def test_same_inputs_and_seeds_give_identical_numbers(runs):
    (out_a, a), (out_b, b) = runs
    flat_a, flat_b = _flatten(_numbers(a)), _flatten(_numbers(b))
    assert {k: (v, flat_b.get(k)) for k, v in flat_a.items() if flat_b.get(k) != v} == {}
    assert list(a["models"]) == ["teacher@50", "self", "naive"]
    assert a["schema"] == "distill.eval/2"
    teacher = a["models"]["teacher@50"]["metrics"]
    for stat in (FVD, KVD):
        assert f"{stat}:noise_floor" in teacher and f"{stat}:vs_real" in teacher
    naive = a["models"]["naive"]["metrics"]
    for key in (CLIP, f"{FVD}:vs_teacher", f"{KVD}:vs_teacher", "flicker.vbench", "flicker.hf_energy",
                "flicker.warp_error[farneback]", "diversity[domain-video-net,17f]", "speed.speedup_vs_teacher"):
        assert key in naive, key
    assert naive[CLIP]["n"] == len(PROMPTS)
    # a text-to-video suite carries no first images: no first-frame metric, not even a skipped one
    assert not any(k.startswith("first_frame") for k in naive) and "subject_consistency[domain-clip]" in naive
    assert "first_images" not in a["suite"]
    assert naive["speed.speedup_vs_teacher"]["nfe_ratio"] == 25.0
    for name in ("eval.json", "summary.md", "report.html"):
        assert (out_a / name).stat().st_size > 100
    summary = (out_a / "summary.md").read_text()
    assert "naive" in summary and "Model vs model" in summary and "static clips only" in summary
    assert "**Multiplicity**: this eval holds" in summary and "Bonferroni 95% of" in summary
    assert "bias-corrected" in summary
    assert list((out_a / "cache").glob("*.npy"))


def test_every_record_has_the_schema_2_fields(runs):
    result = runs[0][1]
    for model, entry in result["models"].items():
        for key, rec in entry["metrics"].items():
            assert {"value", "ci95", "n", "higher_is_better"} <= rec.keys(), (model, key)
            if rec["value"] is not None and rec["ci95"] is not None:
                lo, hi = rec["ci95"]
                assert lo <= rec["value"] <= hi, (model, key, rec["value"], rec["ci95"])
            if rec["ci95"] is not None:  # every interval says what it covers
                assert rec["target"] in ("expected value at this n", "population mean over prompts like these "
                                         "and fresh seeds"), (model, key)
            if key.startswith(("fvd", "kvd")):
                assert rec["dim"] == 128 and rec["detector"] == "domain-video-net", key
                assert "all 17 frames" in rec["protocol"] and rec["method"].endswith("jackknife"), key
                corrected = rec["bias_corrected"]
                assert corrected["target"] == "population distance", key
                assert corrected["ci95"][0] <= corrected["value"] <= corrected["ci95"][1], key
                assert corrected["bias"] == pytest.approx(rec["value"] - corrected["value"]), key
                for row in [*(rec.get("paired_diff_vs_models") or {}).values(),
                            *([rec["paired_diff_vs_teacher"]] if "paired_diff_vs_teacher" in rec else [])]:
                    assert row["target"] == "difference of population distances", key
                    assert row["at_n"]["target"] == "expected value at this n", key
            if key.startswith("speed."):  # one timed clip: min/median/max, no interval claimed
                assert rec["ci95"] is None and rec["min"] <= rec["median"] <= rec["max"], key
    vbench = result["models"]["naive"]["metrics"]["flicker.vbench"]
    # one of the three prompts is a still subject (a static prompt); the teacher at 2 Euler steps moves it
    assert sum(toyworld.STILL in p.split() for p in PROMPTS) == 1 and vbench["n_static_prompt_clips"] == 1
    assert vbench["value"] is None and "passed the static filter" in vbench["skipped"] and vbench["n_total"] == 3
    assert result["suite"]["detector"]["dim"] == 128 and "fvd" in result["suite"]["metric_definitions"]


def test_kvd_and_model_vs_model_rows(runs):
    models = runs[0][1]["models"]
    self_kvd = models["self"]["metrics"][f"{KVD}:vs_teacher"]
    assert self_kvd["value"] == pytest.approx(0.0, abs=1e-6)  # matched, unbiased: identical sets give 0
    naive_kvd = models["naive"]["metrics"][f"{KVD}:vs_teacher"]
    assert naive_kvd["value"] > 1.0 and naive_kvd["statistic"] == "kvd"
    for stat in (FVD, KVD):
        for ref in ("vs_teacher", "vs_real"):
            row = models["self"]["metrics"][f"{stat}:{ref}"]["paired_diff_vs_models"]["naive"]
            mirror = models["naive"]["metrics"][f"{stat}:{ref}"]["paired_diff_vs_models"]["self"]
            assert row["value"] == pytest.approx(row["value_a"] - row["value_b"])
            assert row["value"] == pytest.approx(-mirror["value"])
        # the self model equals the teacher, so it is closer to the teacher's clips than the 2-step one (judged on
        # the plain difference: with 3 prompts the bias-corrected one is mostly noise)
        row = models["self"]["metrics"][f"{stat}:vs_teacher"]["paired_diff_vs_models"]["naive"]
        assert row["at_n"]["value"] < 0
    assert "paired_diff_vs_models" not in models["teacher@50"]["metrics"][f"{FVD}:vs_real"]
    real = models["naive"]["metrics"][f"{FVD}:vs_real"]["paired_diff_vs_teacher"]
    assert real["value"] == pytest.approx(real["value_a"] - real["value_b"])


def test_the_same_settings_reproduce_the_teacher_exactly(runs):
    metrics = runs[0][1]["models"]["self"]["metrics"]
    assert metrics[f"{FVD}:vs_teacher"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert metrics[CLIP]["paired_diff_vs_teacher"]["value"] == 0.0


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


# --- preflight: bad inputs refused before the first clip is sampled ----------------------------------------------

def _harness(tmp_path, out=None, **suite):
    cfg = SUITE.model_copy(update=suite)
    return Harness(cfg, load_teacher_config("tiny-wan"), PROMPTS, out or tmp_path / "out", progress=False)


def test_preflight_refuses_an_unwritable_output_folder(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="output folder .*file"):
        _harness(tmp_path, out=tmp_path / "file" / "eval").preflight([])


@pytest.mark.parametrize("content, message", [(None, "does not exist"), (b"not torchscript", "sha256")])
def test_preflight_refuses_a_missing_or_mismatched_i3d_file(tmp_path, content, message):
    i3d = tmp_path / "i3d_torchscript.pt"
    if content is not None:
        i3d.write_bytes(content)
    harness = _harness(tmp_path, detector="i3d", i3d_path=str(i3d))
    with pytest.raises(ConfigError, match=f"i3d_path.*{message}"):
        harness.preflight([parse_model_spec("teacher@2")])
    assert not (tmp_path / "out" / "cache").exists()  # nothing was sampled


def test_preflight_refuses_raft_without_its_weights(tmp_path, monkeypatch):
    from distill.eval import flicker

    monkeypatch.setattr(flicker, "raft_weights_path", lambda: tmp_path / "absent.pth")
    with pytest.raises(ConfigError, match="'flow'.*absent.pth"):
        _harness(tmp_path, flow="raft_small").preflight([])


def test_eval_command_exits_2_in_one_line_before_sampling(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"name: broken\ntoyworld_split: held_out\nmax_prompts: 2\ndetector: i3d\n"
                     f"i3d_path: {tmp_path / 'missing-i3d.pt'}\n")
    r = subprocess.run([sys.executable, "-m", "distill.cli", "eval", "--suite", str(suite), "--model", "teacher@2",
                        "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "missing-i3d.pt" in r.stderr
    assert not list(tmp_path.glob("out/cache/*.npy"))
