"""The memory planner's arithmetic on the built-in tiny teacher, and `distill plan`'s exit codes."""

from dataclasses import replace

import pytest

from distill.cli import main
from distill.core.config import ConfigError
from distill.plan import GIB, activation_bytes, estimate, plan, refusal, settings, shapes
from distill.train_config import load_train_config

TINY = "configs/recipes/consistency-tiny.yaml"


@pytest.fixture(scope="module")
def tiny():
    cfg = load_train_config(TINY)
    return cfg, shapes(cfg)


def _item(p, name):
    return next(i.bytes for i in p.items if i.name == name)


def test_param_counts_are_the_real_models(tiny):
    from diffusers import WanTransformer3DModel

    from types import SimpleNamespace

    from distill.networks import build_student
    from distill.teachers.registry import family
    from distill.teachers.resolve import resolve

    cfg, shp = tiny
    real = WanTransformer3DModel.from_pretrained(resolve("builtin:tiny-wan") / "transformer")
    assert shp.params == sum(p.numel() for p in real.parameters())
    assert shp.block_params == sum(p.numel() for p in real.blocks[0].parameters())
    # LoRA: the planner's count equals the weights peft really adds on the configured targets
    lora_cfg = load_train_config(TINY, ["student.lora={rank: 4}"])
    student = build_student(lora_cfg, SimpleNamespace(family=family("wan"), dit=real))
    assert shapes(lora_cfg, shp.teacher).lora == sum(p.numel() for p in student.parameters()
                                                               if p.requires_grad)
    # tokens: 17x64x64 through the VAE (4x in time) and 1x2x2 patches
    assert shp.latent == (8, 5, 16, 16) and shp.tokens == 5 * 8 * 8  # the tiny VAE compresses space 4x


def test_zero3_divides_states_by_the_ranks(tiny):
    cfg, shp = tiny
    s = replace(settings(cfg), stage=3)
    one, four = (estimate(cfg, shp, s, n, 80 * GIB) for n in (1, 4))
    for name in ("student: weights", "student: gradients", "student: optimizer states", "teacher DiT (frozen)",
                 "student EMA (fp32 copy)"):
        assert _item(four, name) == pytest.approx(_item(one, name) / 4, abs=4), name
    zero2 = estimate(cfg, shp, replace(s, stage=2), 4, 80 * GIB)
    assert _item(zero2, "student: weights") == _item(one, "student: weights")  # ZeRO-2 keeps whole weights
    assert _item(zero2, "student: optimizer states") == _item(four, "student: optimizer states")


def test_lora_shrinks_optimizer_states_but_not_the_ema(tiny):
    cfg, shp = tiny
    s = settings(cfg)
    full = estimate(cfg, shp, s, 2, 80 * GIB)
    lora_shp = shapes(cfg, shp.teacher, lora_rank=4)
    lora = estimate(cfg, lora_shp, replace(s, lora_rank=4), 2, 80 * GIB)
    assert _item(lora, "student: optimizer states") == 8 * lora_shp.lora // 2
    assert _item(lora, "student: optimizer states") < _item(full, "student: optimizer states") / 3
    assert _item(lora, "student EMA (fp32 copy)") >= _item(full, "student EMA (fp32 copy)")  # a whole fp32 copy


def test_checkpointing_shrinks_activations_and_sequence_parallel_divides_them(tiny):
    cfg, shp = tiny
    args = (shp.teacher.family, shp.dit, 4, 2, shp.latent, shp.text_tokens, "float32")
    with_ckpt, without = activation_bytes(*args, True, True), activation_bytes(*args, False, True)
    assert 0 < with_ckpt < without
    s = settings(cfg)
    one = estimate(cfg, shp, s, 4, 80 * GIB)
    two = estimate(cfg, shp, replace(s, sequence_parallel=2), 4, 80 * GIB)
    assert _item(two, "activations") == _item(one, "activations") // 2
    with pytest.raises(ConfigError, match="divide the DiT's 4 attention heads"):
        estimate(cfg, shp, replace(s, sequence_parallel=8), 8, 80 * GIB)
    with pytest.raises(ConfigError, match="does not divide the 3 GPUs"):
        estimate(cfg, shp, replace(s, sequence_parallel=2), 3, 80 * GIB)


def test_a_run_that_does_not_fit_is_refused_naming_its_largest_item(tiny):
    cfg, shp = tiny
    p = plan(cfg, 2, 0.05, shp=shp)
    assert not p.fits and p.headroom < 0
    largest = max(p.items if p.train_peak >= p.build_peak else p.build_items, key=lambda i: i.bytes)
    assert largest.name in refusal(p)
    assert plan(cfg, 2, 80, shp=shp).fits


def test_plan_command_exit_codes(capsys):
    assert main(["plan", TINY, "--gpus", "2", "--gpu-memory", "80"]) == 0
    assert "fits" in capsys.readouterr().out
    assert main(["plan", TINY, "--gpus", "2", "--gpu-memory", "0.05"]) == 2
    err = capsys.readouterr().err
    assert "distill plan:" in err and "largest:" in err and len(err.strip().splitlines()) == 1
    assert main(["plan", TINY, "no.such.key=1", "--gpus", "2", "--gpu-memory", "80"]) == 2


def test_zero3_builds_partitioned_so_only_the_teacher_is_ever_whole_on_a_gpu():
    # distill.build places each network as partitions one weight at a time under ZeRO-3; at ZeRO-2 the teacher,
    # student, EMA and critic are whole on every GPU before the engines start
    path = "configs/recipes/dmd2-wan2.1-14b.yaml"
    p = plan(load_train_config(path), 8, 80)
    teacher = next(i.bytes for i in p.build_items if i.name.startswith("teacher DiT"))
    assert teacher < p.build_peak < teacher + 1.5 * GIB  # + one weight and the CUDA allowance
    assert p.fits and p.train_peak > p.build_peak
    whole = plan(load_train_config(path, ["deepspeed=configs/deepspeed/zero2-bf16.json"]), 8, 80, suggest=False)
    assert whole.build_peak > 5 * teacher  # bf16 teacher, fp32 student, cast copy, fp32 EMA and critic
    # on CPU the host is the device: the teacher and one network whole, beside the weights placed so far
    cpu = plan(load_train_config(path), 8, 80, device="cpu", overhead=0, suggest=False)
    assert teacher + 2 * teacher < cpu.build_peak < whole.build_peak
