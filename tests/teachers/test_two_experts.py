"""Wan 2.2 A14B's two experts through the teacher contract: one velocity network (`WanExperts`) that sends each
sample to its expert as the stock pipeline does, per-expert guidance, and the layout checks."""

import json

import pytest
import torch
from diffusers import UniPCMultistepScheduler, WanPipeline
from distill.teachers import registry
from distill.teachers.base import FamilyError
from distill.teachers.resolve import TeacherNotFound, open_teacher
from distill.teachers.wan import WanExperts, WanTeacher

PROMPTS = ["a red disc moving left slowly on a black background",
           "a yellow pillar moving up quickly on a gray background"]
SEEDS = [11, 12]


@pytest.fixture(scope="module")
def a14b(untrained_wan_a14b):
    teacher = WanTeacher.from_pretrained(str(untrained_wan_a14b), device="cpu", max_sequence_length=16)
    stock = WanPipeline.from_pretrained(untrained_wan_a14b, dtype=torch.float32)
    stock.set_progress_bar_config(disable=True)
    return teacher, stock


def test_the_family_reads_the_layout_without_weights(untrained_wan_a14b):
    family, folder = open_teacher(str(untrained_wan_a14b))
    assert family.name == "wan" and family.experts(folder) == ("transformer", "transformer_2")
    assert family.boundary(folder) == 0.875


@pytest.mark.parametrize("guidance_2", [None, 2.0])
def test_sampling_equals_stock_pipeline_with_both_experts_and_guidance_scale_2(a14b, guidance_2):
    teacher, stock = a14b
    steps, shift, guidance = 20, 3.0, 5.0
    stock.scheduler = UniPCMultistepScheduler.from_config(stock.scheduler.config, flow_shift=shift)
    expected = stock(prompt=PROMPTS, negative_prompt=[""] * 2, height=64, width=64, num_frames=5,
                     num_inference_steps=steps, guidance_scale=guidance, guidance_scale_2=guidance_2,
                     generator=[torch.Generator().manual_seed(s) for s in SEEDS], output_type="latent",
                     max_sequence_length=16).frames
    ours = teacher.sample(PROMPTS, steps=steps, guidance=guidance, guidance_2=guidance_2, shift=shift, seed=SEEDS,
                          sampler="unipc", frames=5, height=64, width=64)
    diff = (ours - expected.float()).abs().max().item()
    assert diff <= 1e-4, f"max abs difference {diff:.2e}"
    assert expected.abs().max() > 0.1


def test_each_sample_goes_to_its_expert_and_takes_its_guidance(a14b):
    teacher, _ = a14b
    assert isinstance(teacher.dit, WanExperts)
    x = torch.randn(2, 8, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.9, 0.5], dtype=torch.float64)  # one on each side of 0.875
    cond = teacher.encode(PROMPTS, "")
    mixed = teacher.velocity(x, t, cond, guidance=5.0, guidance_2=2.0)
    high, low = teacher.transformer, teacher.transformer_2
    for i, (model, g) in enumerate(((high, 5.0), (low, 2.0))):
        alone = teacher.guided(model, x[i:i + 1], t[i:i + 1], cond[i:i + 1], g)
        assert (mixed[i:i + 1] - alone).abs().max() <= 1e-5
    wrong = teacher.guided(low, x[:1], t[:1], cond[:1], 5.0)
    assert (mixed[:1] - wrong).abs().max() > 1e-3  # the experts differ: a wrong switch shows


def test_a_boundary_outside_0_1_and_a_missing_expert_folder_are_refused(untrained_wan_a14b, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for item in untrained_wan_a14b.iterdir():
        if item.name != "model_index.json":
            (bad / item.name).symlink_to(item)
    index = json.loads((untrained_wan_a14b / "model_index.json").read_text())
    (bad / "model_index.json").write_text(json.dumps({**index, "boundary_ratio": 1.5}))
    with pytest.raises(TeacherNotFound, match="boundary_ratio is 1.5; it must lie in \\(0, 1\\)"):
        open_teacher(str(bad))
    (bad / "model_index.json").write_text(json.dumps(index))
    (bad / "transformer_2").unlink()
    with pytest.raises(TeacherNotFound, match="lacks the component folders \\['transformer_2'\\]"):
        open_teacher(str(bad))


def test_a_named_family_must_be_registered_and_must_serve_the_folder(untrained_wan_a14b):
    with pytest.raises(TeacherNotFound, match="unknown teacher family 'hunyuan'; registered families"):
        open_teacher(str(untrained_wan_a14b), family="hunyuan")
    others = [n for n in registry.names() if n != "wan"]
    for name in others:
        with pytest.raises(TeacherNotFound, match=f"family {name!r} serves"):
            open_teacher(str(untrained_wan_a14b), family=name)


def test_the_router_refuses_a_boundary_outside_0_1():
    with pytest.raises(ValueError, match="outside \\(0, 1\\)"):
        WanExperts(torch.nn.Identity(), torch.nn.Identity(), 1.0)


def test_a_lora_file_for_the_other_expert_is_refused(untrained_wan_a14b, tmp_path):
    from peft import LoraConfig

    family = registry.family("wan")
    net = family.dit_from_pretrained(untrained_wan_a14b)
    family.add_lora(net, LoraConfig(r=2, lora_alpha=2, target_modules=["to_q"], init_lora_weights=True))
    weights = {k: v.detach() for k, v in net.state_dict().items() if "lora_" in k}
    files = family.save_lora(tmp_path / "lora", weights, {"r": 2, "lora_alpha": 2, "target_modules": ["to_q"]})
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [
        "lora/pytorch_lora_weights.safetensors", "lora/transformer_2/pytorch_lora_weights.safetensors"]
    with pytest.raises(FamilyError, match="trained for expert 'transformer_2' \\(low_noise\\), not 'transformer'"):
        family.fuse_lora(untrained_wan_a14b / "transformer", files[1], tmp_path / "fused", "transformer")
    assert family.fuse_lora(untrained_wan_a14b / "transformer_2", files[1], tmp_path / "fused", "transformer_2") == 4


def test_the_shipped_two_expert_teacher_samples_as_stock_pipeline_at_50_steps():
    from distill.teachers.config import load_teacher, load_teacher_config
    from distill.teachers.resolve import resolve

    cfg = load_teacher_config("tiny-wan-a14b")
    assert (cfg.family, cfg.sampler.guidance, cfg.sampler.guidance_2) == ("wan", 5.0, 4.0)
    teacher = load_teacher(cfg, "cpu")
    folder = resolve(cfg.source)
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) <= 25e6
    stock = WanPipeline.from_pretrained(folder, dtype=torch.float32)
    stock.set_progress_bar_config(disable=True)
    assert stock.config.boundary_ratio == 0.875 and stock.transformer_2 is not None
    s, v = cfg.sampler, cfg.video
    expected = stock(prompt=PROMPTS, negative_prompt=[""] * 2, height=v.height, width=v.width, num_frames=v.frames,
                     num_inference_steps=50, guidance_scale=s.guidance, guidance_scale_2=s.guidance_2,
                     generator=[torch.Generator().manual_seed(x) for x in SEEDS], output_type="latent",
                     max_sequence_length=cfg.max_sequence_length).frames
    ours = teacher.sample(PROMPTS, steps=50, guidance=s.guidance, shift=s.shift, seed=SEEDS, sampler="unipc",
                          frames=v.frames, height=v.height, width=v.width)  # guidance_2: the teacher's own (4.0)
    diff = (ours - expected.float()).abs().max().item()
    assert diff <= 1e-4, f"max abs difference {diff:.2e}"
