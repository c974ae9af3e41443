"""A recipe that trains a fresh network and no student (students/base.py `trains_student`), through the engine:
refused student settings, and (slow) a 2-rank run whose checkpoints hold the decoder folder, that resumes, and
whose export loads with `from_pretrained`."""

import json

import pytest
import torch

from distill.core.config import ConfigError
from distill.train_config import load_train_config
from tests.distill.test_train import losses, torchrun, train_cmd, write_config

DECODER = {"name": "decoder", "width": 8, "depth": 1, "min_width": 8, "feature_weight": 0.25, "latent_noise": 0.05}


def decoder_config(tmp, **sections):
    return write_config(tmp, recipe=DECODER, student={"ema_decay": None, "export": "online"}, **sections)


def test_student_settings_are_refused_for_a_recipe_that_trains_no_student(tmp_path):
    from distill.preflight import preflight

    cfg = load_train_config(write_config(tmp_path, recipe=DECODER))  # student.ema_decay keeps its default 0.95
    with pytest.raises(ConfigError, match=r"student.ema_decay: 0.95, but recipe 'decoder' trains no student"):
        preflight(cfg)
    student = {"ema_decay": None, "export": "online", "init": "x"}
    cfg = load_train_config(write_config(tmp_path, recipe=DECODER, student=student))
    with pytest.raises(ConfigError, match=r"student.init: 'x'"):
        preflight(cfg)


def test_the_recipe_is_sized_from_the_teachers_folder(tmp_path):
    from distill.preflight import preflight

    checked = preflight(load_train_config(decoder_config(tmp_path)))
    net = checked.recipe.networks()[0].make(None)
    f = checked.family.video_factors(checked.folder)
    assert (net.config.temporal, net.config.spatial) == (f.temporal, f.spatial)
    assert net.config.latent_channels == checked.family.latent_channels(checked.family.dit_config(checked.folder))


@pytest.mark.slow  # ~1-2 min on 2 CPU cores: two 2-rank runs and an export
def test_two_ranks_train_checkpoint_resume_and_export_a_decoder(tmp_path):
    from distill.export import export
    from distill.teachers.decoders import VideoDecoder

    config = decoder_config(tmp_path, train={"steps": 4, "checkpoint_every": 2, "validate_every": 4})
    proc = torchrun(*train_cmd(config))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    got = losses(run)
    assert sorted(got) == [1, 2, 3, 4] and all(v > 0 for v in got.values())
    ckpt = run / "checkpoints" / "step-000004"
    assert not (ckpt / "student").exists() and (ckpt / "decoder" / "config.json").is_file()
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["student"] is False and meta["networks"] == {"decoder": "distill.teachers.decoders.VideoDecoder"}
    assert sorted(p.name for p in (run / "validation" / "step-000004").glob("*.mp4"))

    # resume from step 2 in a copy: the same losses for steps 3 and 4 (engines, data order and RNG restored)
    import shutil

    again = tmp_path / "again"
    shutil.copytree(run, again)
    shutil.rmtree(again / "checkpoints" / "step-000004")
    (again / "checkpoints" / "latest").write_text("step-000002")
    (again / "metrics.jsonl").write_text("\n".join((run / "metrics.jsonl").read_text().splitlines()[:2]) + "\n")
    proc = torchrun(*train_cmd(config, "--resume", "latest", f"out={again}"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = losses(again)
    assert resumed[3] == pytest.approx(got[3], rel=1e-5) and resumed[4] == pytest.approx(got[4], rel=1e-5)

    out = export(run, tmp_path / "export")
    decoder = VideoDecoder.from_pretrained(out / "decoder")
    assert "VideoDecoder.from_pretrained" in (out / "README.md").read_text()
    z = torch.randn(1, decoder.config.latent_channels, 2, 4, 4)
    assert decoder.decode(z).shape == (1, 5, 16, 16, 3)


def test_the_planner_says_it_has_no_plan_for_a_run_without_a_student():
    """The planner counts DiT passes; rather than a wrong plan (a DiT student's states and activations that this run
    never builds) it says so, and preflight does not refuse such a run on a GPU by a plan."""
    from distill.plan import shapes

    with pytest.raises(ConfigError, match="recipe 'decoder' trains no student DiT.*no plan"):
        shapes(load_train_config("configs/recipes/decoder-wan2.1-1.3b.yaml"))
