"""scripts/gpu_check.py: refuses without CUDA, and its CPU dry run (tiny shapes) writes every part."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_refuses_without_cuda(gpu_check, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA device" in err[0] and "--dry-run" in err[0]
    assert not (tmp_path / "out").exists()


def test_dry_run_latency_and_eval(gpu_check, tmp_path, monkeypatch):
    """The cheap part of the dry run (the training steps are in the slow test below)."""
    monkeypatch.chdir(tmp_path)
    assert gpu_check.main(["--out", str(tmp_path / "out"), "--dry-run", "--parts", "latency", "eval"]) == 0
    data = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert set(data["parts"]) == {"latency", "eval"} and not data["skipped"]
    rows = {(r["name"], r["steps"]): r for r in data["parts"]["latency"]["rows"]}
    assert rows[("teacher (CFG)", 50)]["nfe"] == 100 and rows[("student", 1)]["nfe_bound"] == 100
    assert all(v["clips_per_s"] > 0 for v in data["parts"]["eval"]["stages"].values())
    assert "| student | 4 | 4 |" in (tmp_path / "out" / "gpu_check.md").read_text()


@pytest.mark.slow
def test_dry_run_writes_every_part(gpu_check, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # main() moves to the repository; monkeypatch moves back
    assert gpu_check.main(["--out", str(tmp_path / "out"), "--dry-run"]) == 0
    data = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert data["dry_run"] and not data["skipped"]
    parts = data["parts"]
    assert set(parts) == {"latency", "train-consistency", "train-apt", "eval", "decode", "latency-compiled"}
    assert not [p for p, r in parts.items() if "error" in r], parts
    compiled = {(r["name"], r["steps"]): r for r in parts["latency-compiled"]["rows"]}
    assert compiled.keys() == {("teacher (CFG)", 50), ("student", 4), ("student", 1)}
    assert set(parts["latency-compiled"]["compile_s"]) == {"cfg_batch2", "student_batch1"}
    dec = parts["decode"]
    assert dec["vae_s"] > 0 and dec["decoder_s"] > 0 and dec["speedup"] == dec["vae_s"] / dec["decoder_s"]
    assert 0 < dec["decoder_first_frame_s"] and dec["compiled_s"] > 0 and dec["compile_s"] > 0
    rows = {(r["name"], r["steps"]): r for r in parts["latency"]["rows"]}
    assert rows[("teacher (CFG)", 50)]["nfe"] == 100 and rows[("student", 4)]["nfe_bound"] == 25
    assert all(r["seconds"] > 0 for r in rows.values())
    for recipe in ("consistency", "apt"):
        r = parts[f"train-{recipe}"]
        assert r["step_s"] > 0 and r["predicted_gib"] > 0 and "activations" in r["predicted_items"]
    assert all(v["clips_per_s"] > 0 for v in parts["eval"]["stages"].values())
    md = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "| teacher (CFG) | 50 | 100 |" in md and "train consistency: step" in md and "clip_score" in md
    assert "| teacher (CFG) (compiled) | 50 | 100 |" in md


def test_a_deadline_skips_parts_with_a_note(gpu_check, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert gpu_check.main(["--out", str(tmp_path / "out"), "--dry-run", "--deadline-s", "0"]) == 0
    data = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert not data["parts"] and set(data["skipped"]) == {"latency", "train-consistency", "train-apt", "eval",
                                                          "decode", "latency-compiled"}
    assert "--deadline-s" in (tmp_path / "out" / "gpu_check.md").read_text()
