"""The project's own 50-step sampler against stock diffusers.WanPipeline: same checkpoint, prompts, seeds and
scheduler settings must give the same latents (fp32 CPU, max abs difference <= 1e-4)."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler, WanPipeline

from distill.teachers.config import load_teacher_config
from distill.teachers.resolve import resolve
from distill.teachers.wan import WanTeacher

PROMPTS = ["a red disc moving left slowly on a black background",
           "a yellow pillar moving up quickly on a gray background"]
SEEDS = [11, 12]


@pytest.fixture(scope="module")
def tiny():
    cfg = load_teacher_config("tiny-wan")
    teacher = WanTeacher.from_pretrained(cfg.source, dtype="float32", device="cpu",
                                         max_sequence_length=cfg.max_sequence_length)
    stock = WanPipeline.from_pretrained(resolve(cfg.source), dtype=torch.float32)
    stock.set_progress_bar_config(disable=True)
    return cfg, teacher, stock


def _stock_latents(stock, cfg, scheduler, steps):
    stock.scheduler = scheduler
    v = cfg.video
    return stock(prompt=PROMPTS, negative_prompt=[cfg.negative_prompt] * len(PROMPTS), height=v.height,
                 width=v.width, num_frames=v.frames, num_inference_steps=steps, guidance_scale=cfg.sampler.guidance,
                 generator=[torch.Generator().manual_seed(s) for s in SEEDS], output_type="latent",
                 max_sequence_length=cfg.max_sequence_length).frames


@pytest.mark.parametrize("sampler", ["unipc", "euler"])
def test_50_step_sampler_matches_stock_wan_pipeline(tiny, sampler):
    cfg, teacher, stock = tiny
    shift, v = cfg.sampler.shift, cfg.video
    if sampler == "unipc":
        scheduler = UniPCMultistepScheduler.from_config(stock.scheduler.config, flow_shift=shift)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    expected = _stock_latents(stock, cfg, scheduler, 50)
    ours = teacher.sample(PROMPTS, steps=50, guidance=cfg.sampler.guidance, shift=shift, seed=SEEDS,
                          sampler=sampler, negative=cfg.negative_prompt, frames=v.frames, height=v.height,
                          width=v.width)
    assert ours.shape == expected.shape
    diff = (ours - expected.float()).abs().max().item()
    assert diff <= 1e-4, f"max abs difference {diff:.2e} on latents"
    assert expected.abs().max() > 0.1  # guards against comparing two zero tensors


def test_shipped_teacher_is_small_and_loads_with_stock_pipeline(tiny):
    cfg, _, stock = tiny
    folder = resolve(cfg.source)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size <= 25e6, f"built-in teacher is {size / 1e6:.1f} MB"
    assert type(stock).__name__ == "WanPipeline" and tuple(stock.transformer.config.patch_size) == (1, 2, 2)
    assert not list(folder.rglob("*.bin")) and list(folder.rglob("*.safetensors"))
