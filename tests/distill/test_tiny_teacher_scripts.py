"""The tiny teacher's measuring scripts: the report's re-noising diagnostic and the patch-cost benchmark."""

import pytest
import torch

from scripts.bench_teacher_patch import main as bench_patch
from scripts.tiny_teacher_report import denoise_from
from distill.teachers.wan import WanTeacher

PROMPT = "a red disc moving left slowly on a black background"


def test_denoise_from_a_level_keeps_what_the_level_keeps(untrained_wan):
    """At t = 0 it is the latents themselves, at t = 1 it has forgotten them, in between it depends on them."""
    teacher = WanTeacher.from_pretrained(str(untrained_wan), device="cpu", max_sequence_length=16)
    g = torch.Generator().manual_seed(0)
    z0, z1, noise = (torch.randn((2, *teacher.latent_shape(17, 64, 64)), generator=g) for _ in range(3))
    cond = teacher.encode([PROMPT] * 2, "")

    def run(z, t):
        return denoise_from(teacher, z, noise, cond, t, guidance=5.0, steps=2)

    assert torch.equal(run(z0, 0.0), z0)
    from_pure_noise = run(z0, 1.0)
    assert torch.equal(from_pure_noise, run(z1, 1.0))
    assert not torch.allclose(from_pure_noise, noise, atol=1e-3)  # the teacher did move it
    assert not torch.allclose(run(z0, 0.5), run(z1, 0.5), atol=1e-3)


def test_patch_benchmark_reports_tokens_and_ratios(tmp_path):
    result = bench_patch(["--patch", "8", "--patch", "4", "--rounds", "1", "--batch", "2",
                          "--json", str(tmp_path / "patch.json")])
    eight, four = result["patches"]["8"], result["patches"]["4"]
    assert (eight["tokens_per_clip"], four["tokens_per_clip"]) == (20, 80)
    assert eight["ratio_to_first"] == 1.0 and four["seconds_per_step"] > 0
    assert (tmp_path / "patch.json").exists()


def test_patch_benchmark_refuses_a_patch_that_does_not_divide_the_latent(capsys):
    with pytest.raises(SystemExit):
        bench_patch(["--patch", "3"])
    assert "--patch 3: must divide the latent's 16 cells" in capsys.readouterr().err


def test_a_dit_budget_fills_its_minutes_at_the_timed_pace():
    from argparse import Namespace

    from scripts.train_tiny_teacher import fit_budget

    args = Namespace(dit_minutes=10.0, dit_steps=100_000)
    assert fit_budget(args, 300, 30.0, 300) == 6000  # 0.1 s/step, 570 s left: 5,700 more steps
    assert fit_budget(args, 300, 31.0, 300) == 5800  # rounded down to hundreds, never past the minutes
    args.dit_steps = 4000
    assert fit_budget(args, 300, 30.0, 300) == 4000  # --dit-steps stays the ceiling
    args.dit_minutes = 0.4
    assert fit_budget(args, 300, 30.0, 300) == 300  # the budget already spent: stop where it is
    args.dit_minutes, args.dit_steps = 10.0, 100_000
    assert fit_budget(args, 500, 30.0, 300) == 6200  # resumed at 200: the pace of the 300 steps since the resume


def test_reuse_vae_takes_the_teachers_vae_and_its_latent_statistics(tmp_path, capsys):
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    from distill import toyworld
    from distill.teachers.wan.tiny import TinyWanSpec, build_components
    from scripts.train_tiny_teacher import reuse_vae

    shipped = Path("teachers/builtin/tiny-wan")
    parts = build_components(TinyWanSpec(), toyworld.vocabulary(), seed=1)
    mean, std = reuse_vae(parts, shipped)
    weights = load_file(shipped / "vae" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(parts["vae"].state_dict()[k], v) for k, v in weights.items())
    config = json.loads((shipped / "vae" / "config.json").read_text())
    assert mean.tolist() == pytest.approx(config["latents_mean"]) and std.tolist() == pytest.approx(config["latents_std"])
    with pytest.raises(SystemExit, match=r"--reuse-vae .*nowhere: no vae/diffusion_pytorch_model.safetensors"):
        reuse_vae(parts, tmp_path / "nowhere")


def test_the_decoders_temporal_term_costs_shimmer_not_a_steady_error():
    from scripts.train_tiny_teacher import build_parser, reconstruction_loss

    x = torch.full((1, 3, 9, 16, 16), -0.9)
    x[..., 6:10, 6:10] = 0.8  # a still subject on a dark background: [B, 3, T, H, W]
    steady = x + 0.05  # the same error in every frame
    shimmer = x + 0.05 * torch.tensor([1.0, -1.0] * 4 + [1.0]).view(1, 1, 9, 1, 1)  # as large, alternating
    for rec in (steady, shimmer):  # the per-frame loss cannot tell the two apart
        assert reconstruction_loss(rec, x, 10.0) == pytest.approx(reconstruction_loss(steady, x, 10.0))
    assert reconstruction_loss(steady, x, 10.0, temporal_weight=5.0) == pytest.approx(
        reconstruction_loss(steady, x, 10.0))  # a steady error has no frame-to-frame part
    extra = reconstruction_loss(shimmer, x, 10.0, temporal_weight=5.0) - reconstruction_loss(shimmer, x, 10.0)
    assert extra.item() == pytest.approx(5.0 * 0.1)  # each change is 0.1 off the still clip's 0
    assert build_parser().parse_args([]).decoder_temporal_weight == 0.0  # the shipped recipe keeps its loss

