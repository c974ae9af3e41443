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
