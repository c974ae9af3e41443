"""`distill train`'s checks on its out folder, and `--no-progress` reaching the training bar."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill.checkpoint import check_out_folder
from distill.cli import main
from distill.core.config import ConfigError

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "recipes" / "consistency-tiny.yaml"


def test_a_non_empty_folder_that_is_not_a_run_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    import distill.train

    def trained(*args, **kwargs):
        raise AssertionError("training started")
    monkeypatch.setattr(distill.train, "train", trained)
    folder = tmp_path / "my-photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"not ours")
    assert main(["train", str(CONFIG), f"out={folder}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"distill train: error: out: {str(folder)!r} exists, is not empty and is not a training run")
    assert sorted(p.name for p in folder.iterdir()) == ["holiday.jpg"]


def test_the_library_refuses_it_too(tmp_path):
    from distill.train import train
    from distill.train_config import load_train_config

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not empty and is not a training run"):
        train(load_train_config(CONFIG, [f"out={tmp_path}"]))


@pytest.mark.parametrize("content", [None, [], ["checkpoints/"], ["config.yaml", "cache/"], ["metrics.jsonl"]])
def test_missing_empty_and_run_folders_are_accepted(tmp_path, content):
    out = tmp_path / "run"
    if content is not None:
        out.mkdir()
        for name in content:
            (out / name).mkdir() if name.endswith("/") else (out / name).write_text("")
    check_out_folder(out)  # resuming (or refusing an unfinished run without --resume) is the trainer's call


def test_a_file_as_out_is_refused(tmp_path):
    (tmp_path / "run").write_text("")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_out_folder(tmp_path / "run")


@pytest.mark.slow  # ~15 s (make test's budget)
def test_no_progress_turns_every_bar_off_in_a_real_run(tmp_path):
    """One real (tiny) training step in a child process, with --no-progress: nothing draws a bar, neither ours nor
    the loaders' of diffusers and transformers."""
    overrides = ["train.steps=1", "train.checkpoint_every=1", "train.validate_every=null",
                 "train.validation_prompts=[a red disc]", "data.size=2", "data.batch_size=2",
                 "recipe.sampler.steps=1", f"data.cache_dir={tmp_path / 'cache'}", "wandb.mode=disabled",
                 f"out={tmp_path / 'run'}"]
    proc = subprocess.run([sys.executable, "-m", "distill.cli", "train", str(CONFIG), *overrides, "--no-progress"],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "checkpoints" / "latest").is_file()
    assert "train:" not in proc.stderr and "it/s" not in proc.stderr and "%|" not in proc.stderr


@pytest.mark.parametrize("progress", [True, False])
def test_the_monitor_draws_its_bar_only_with_progress(tmp_path, capsys, progress):
    from distill.monitor import Monitor
    from distill.train_config import load_train_config

    cfg = load_train_config(CONFIG, ["train.steps=3", "wandb.mode=disabled"])
    monitor = Monitor(cfg, tmp_path, 0, 0, 2, progress=progress)
    monitor.advance()
    monitor.log(1, {"loss": 0.5, "lr": 1e-4})
    monitor.close()
    assert ("train:" in capsys.readouterr().err) == progress
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1  # the log is written either way
