"""`distill demo --fast`: every stage of the main job runs end to end (a few steps each), and a second run reuses
what the first finished."""

import json
import os
import subprocess
import sys
from pathlib import Path

from distill import checkpoint

REPO = Path(__file__).resolve().parents[2]


def demo(out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "distill.cli", "demo", "--fast", "--out", str(out)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900, check=False)


def test_demo_runs_every_stage_and_reuses_finished_ones(tmp_path):
    out = tmp_path / "demo"
    first = demo(out)
    assert first.returncode == 0, first.stderr[-3000:]
    result = json.loads((out / "eval.json").read_text())
    assert set(result["models"]) == {"teacher@50", "teacher@4", "teacher@1", "cd-4step", "cd-1step", "apt-1step"}
    assert result["models"]["apt-1step"]["steps"] == 1 and result["models"]["cd-4step"]["steps"] == 4
    summary = (out / "summary.md").read_text()
    for row in ("clipsim[domain-clip]", "fvd[domain-video-net,17f]:vs_teacher", "fvd[domain-video-net,17f]:vs_real",
                "kvd[domain-video-net,17f]:vs_teacher", "flicker.vbench", "flicker.warp_error", "flicker.hf_energy",
                "diversity[domain-video-net,17f]", "speed.latency_s", "speed.speedup_vs_teacher"):
        assert row in summary and row in first.stdout  # the scorecard is printed at the end
    assert (out / "report.html").is_file()
    assert (out / "apt" / "checkpoints" / "step-000004" / "engines" / "discriminator").is_dir()

    again = demo(out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done already") == 4  # both trainings and both exports
    assert "training" not in again.stdout

    # a stage distilled from other teacher weights (say, before the teacher was re-made) is not silently reused
    meta_path = out / "consistency" / "checkpoints" / "step-000004" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "teacher_hash": "0000000000000000"}))
    checkpoint.write_manifest(meta_path.parent, checkpoint.hash_files(meta_path.parent))  # written so, intact
    stale = demo(out)
    assert stale.returncode == 2
    assert "hash 0000000000000000" in stale.stderr and str(out / "consistency") in stale.stderr
