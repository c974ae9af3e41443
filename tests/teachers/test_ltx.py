"""The LTX-Video family plug-in against stock diffusers `LTXPipeline`, on a tiny random-weight LTX folder."""

import json

import numpy as np
import pytest
import torch
from distill.teachers import registry, samplers
from distill.teachers.base import Cond, FamilyError, VideoFactors
from distill.teachers.ltx import LTXFamily, text_mask

PROMPTS = ["a red disc moving left", "a blue plank moving up slowly on a white background"]
SEEDS = [3, 11]
CLIP = {"frames": 9, "height": 32, "width": 32}
MAX_LEN = 16
TOL = 1e-4


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from diffusers import LTXPipeline
    from distill.teachers.ltx.tiny import TinyLTXSpec, build_components

    from distill.toyworld import vocabulary

    path = tmp_path_factory.mktemp("tiny-ltx")
    LTXPipeline(**build_components(TinyLTXSpec(), vocabulary(), seed=0)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def teacher(folder):
    return registry.family_of(folder).load(folder, torch.float32, torch.device("cpu"), MAX_LEN)


@pytest.fixture(scope="module")
def stock(folder):
    from diffusers import LTXPipeline

    pipe = LTXPipeline.from_pretrained(folder)  # its own copy: nothing shared with the teacher
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gens():
    return [torch.Generator().manual_seed(s) for s in SEEDS]


def unpacked(pipe, tokens):
    return pipe._unpack_latents(tokens, 2, 4, 4, 1, 1)  # the tiny VAE: 9 frames -> 2, 32 px -> 4


# --- (a) the registry -----------------------------------------------------------------------------------------------
def test_registry_finds_ltx_and_detects_its_folders(folder, teacher):
    fam = registry.family("ltx")
    assert isinstance(fam, LTXFamily) and "ltx" in registry.names()
    assert registry.family_of(folder) is fam
    fam.check_folder(folder, "tiny-ltx")
    assert registry.family_of_dit(teacher.dit) is fam
    assert fam.video_factors(folder) == VideoFactors(8, 8, (1, 1, 1))
    assert fam.patch(fam.dit_config(folder)) == (1, 1, 1)
    assert teacher.family is fam and teacher.guidance_2 is None


def test_a_patched_transformer_config_is_refused_before_loading(folder, tmp_path):
    import shutil

    copy = tmp_path / "patched"
    shutil.copytree(folder, copy)
    config = copy / "transformer" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "patch_size": 2}))
    with pytest.raises(FamilyError, match=r"transformer/config.json.*patch_size=2"):
        LTXFamily().check_folder(copy, "patched")


# --- (b) parity with stock LTXPipeline ------------------------------------------------------------------------------
def test_initial_noise_is_the_stock_pipelines(teacher, stock):
    ours = teacher.noise(2, **CLIP, seed=SEEDS)
    theirs = stock.prepare_latents(2, 8, 32, 32, 9, torch.float32, torch.device("cpu"), gens())
    assert torch.equal(teacher.pack(ours), theirs)


def test_embeddings_carry_the_t5_mask_in_their_zero_rows(teacher, stock):
    embeds = teacher.embed(PROMPTS + [""])
    raw, mask = stock._get_t5_prompt_embeds(PROMPTS + [""], max_sequence_length=MAX_LEN)
    assert torch.equal(text_mask(embeds), mask)
    assert mask.sum(-1).tolist() == [6, 11, 1]  # words + </s>; the empty prompt is </s> alone
    torch.testing.assert_close(embeds[mask], raw[mask], atol=1e-6, rtol=0)
    assert bool((raw[~mask] != 0).any())  # T5 gives the padding rows values: the zeroing is ours


@pytest.mark.parametrize("steps,shift", [(50, None), (20, 3.0)])
def test_cfg_sampling_equals_stock_ltx_pipeline(teacher, stock, steps, shift):
    ours = teacher.sample(PROMPTS, steps=steps, guidance=3.0, shift=shift, seed=SEEDS, sampler="euler", **CLIP)
    stock.scheduler = teacher.scheduler(shift)
    theirs = stock(PROMPTS, negative_prompt="", num_inference_steps=steps, guidance_scale=3.0, generator=gens(),
                   output_type="latent", max_sequence_length=MAX_LEN, num_frames=9, height=32, width=32).frames
    diff = (ours - unpacked(stock, theirs)).abs().max().item()
    print(f"LTX {steps}-step CFG sampling, shift {shift}: max abs diff vs stock LTXPipeline {diff:.3g}")
    assert diff <= TOL
    assert ours.abs().max() > 0.1  # a real clip, not a collapse to zero


def test_schedule_is_the_stock_grid(teacher):
    grid = teacher.schedule(50, **CLIP)
    assert grid[0] == 1.0 and grid[-1] == 0.0 and len(grid) == 51
    assert abs(float(grid[-2]) - 0.1) < 1e-6  # stretched to LTX's shift_terminal
    assert bool((grid[1:] < grid[:-1]).all())


def test_decode_equals_stock_pixels(teacher, stock):
    latents = teacher.noise(1, **CLIP, seed=5)
    video = teacher.decode(latents)
    assert video.shape == (1, 9, 32, 32, 3) and video.dtype == torch.uint8
    stock.scheduler = teacher.scheduler()
    # Stock decodes only what it sampled: its step callback swaps our latents in.
    theirs = stock(PROMPTS[:1], num_inference_steps=2, guidance_scale=1.0, latents=teacher.pack(latents),
                   output_type="np", max_sequence_length=MAX_LEN, num_frames=9, height=32, width=32,
                   callback_on_step_end=lambda p, i, t, kw: {"latents": teacher.pack(latents)},
                   callback_on_step_end_tensor_inputs=["latents"]).frames
    assert np.abs(video[0].numpy().astype(np.float64) - theirs[0] * 255).max() <= 0.51
    z = teacher.encode_video(video)
    assert z.shape == latents.shape


# --- (c) classifier-free guidance ------------------------------------------------------------------------------------
def test_cfg_runs_both_halves_in_one_forward_and_equals_the_two_pass_formula(teacher):
    cond = teacher.encode(PROMPTS, negative="")
    x = teacher.noise(2, **CLIP, seed=0)
    t = torch.tensor([0.7, 0.3], dtype=torch.float64)
    batches = []
    hook = teacher.transformer.register_forward_hook(
        lambda m, args, kw, out: batches.append(kw["hidden_states"].shape[0]), with_kwargs=True)
    try:
        v = teacher.velocity(x, t, cond, guidance=4.0)
    finally:
        hook.remove()
    assert batches == [4]
    v_c = teacher.velocity(x, t, cond, guidance=1.0)
    v_u = teacher.velocity(x, t, Cond(cond.negative_embeds, None), guidance=1.0)
    assert v.shape == x.shape
    torch.testing.assert_close(v, v_u + 4.0 * (v_c - v_u), atol=1e-5, rtol=1e-5)


# --- (d) the few-step export ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps,shift", [(1, 3.0), (2, 3.0), (4, 3.0), (4, 5.0)])
def test_exported_scheduler_samples_the_consistency_grid_in_stock_ltx_pipeline(folder, teacher, stock, tmp_path,
                                                                               steps, shift):
    from diffusers import FlowMatchEulerDiscreteScheduler

    LTXFamily().few_step_scheduler(shift, folder, steps=steps).save_pretrained(tmp_path)
    stock.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(tmp_path)  # as an export's folder holds it
    torch.manual_seed(1234)
    theirs = stock(PROMPTS, num_inference_steps=steps, guidance_scale=1.0, generator=gens(), output_type="latent",
                   max_sequence_length=MAX_LEN, num_frames=9, height=32, width=32).frames
    cond = teacher.encode(PROMPTS, negative=None)
    x = teacher.noise(2, **CLIP, seed=SEEDS)
    torch.manual_seed(1234)
    ours = samplers.sample_consistency(lambda y, t: teacher.velocity(y, t, cond), x,
                                       samplers.consistency_timesteps(steps, shift), noise=teacher.stock_noise)
    diff = (ours - unpacked(stock, theirs)).abs().max().item()
    print(f"LTX {steps}-step consistency export, shift {shift}: max abs diff vs stock LTXPipeline {diff:.3g}")
    assert diff <= TOL


def test_few_step_scheduler_needs_the_step_count(folder):
    with pytest.raises(FamilyError, match="steps=N"):
        LTXFamily().few_step_scheduler(3.0, folder)


# --- (e) bad input --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("frames,hint", [(10, "8k\\+1.*9 or 17"), (0, "8k\\+1")])
def test_frames_not_8k_plus_1_are_refused(folder, teacher, frames, hint):
    with pytest.raises(ValueError, match=f"frames={frames} is not {hint}"):
        teacher.latent_shape(frames, 32, 32)
    fam = LTXFamily()
    with pytest.raises(ValueError, match=f"frames={frames} is not {hint}"):
        fam.check_video_size(frames, 32, 32, fam.video_factors(folder))


def test_sizes_stock_ltx_pipeline_refuses_are_refused(teacher):
    with pytest.raises(ValueError, match="height=48 is not divisible by 32.*32 or 64"):
        teacher.latent_shape(9, 48, 32)
    assert teacher.latent_shape(17, 64, 96) == (8, 3, 8, 12)


def test_other_bad_inputs_are_refused(teacher):
    with pytest.raises(ValueError, match="sampler 'unipc'"):
        teacher.sample(PROMPTS[:1], steps=2, sampler="unipc", **CLIP)
    with pytest.raises(ValueError, match="guidance_2"):
        teacher.velocity(teacher.noise(1, **CLIP, seed=0), 0.5, teacher.encode(PROMPTS[:1]), 2.0, guidance_2=3.0)
    with pytest.raises(ValueError, match=r"positions \[1\]"):
        teacher.encode(["a red disc", "  "])
    assert teacher.shard_sequence(None) is teacher


# --- the planner and LoRA files -------------------------------------------------------------------------------------
def test_meta_dit_runs_on_the_planners_inputs(folder):
    fam = LTXFamily()
    config = fam.dit_config(folder)
    dit = fam.meta_dit(config, layers=1)
    x = torch.empty(2, 8, 2, 4, 4, device="meta")
    out = dit(**fam.dit_inputs(config, x, MAX_LEN), return_dict=False)[0]
    assert out.shape == (2, 32, 8) and len(fam.dit_blocks(dit)) == 1


def test_lora_saved_and_fused_gives_the_adapted_transformer(folder, tmp_path):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    fam = LTXFamily()
    dit = fam.dit_from_pretrained(folder)
    lora = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": list(fam.lora_targets)}
    fam.add_lora(dit, LoraConfig(**lora, init_lora_weights=False))
    weights = get_peft_model_state_dict(dit)
    [file] = fam.save_lora(tmp_path / "lora", weights, lora)
    assert fam.fuse_lora(folder / "transformer", file, tmp_path / "fused") == 2 * 2 * 4 + 2 * 2
    fused = fam.dit_from_pretrained(tmp_path / "fused")
    x, text = torch.randn(1, 32, 8), torch.randn(1, 5, 32)
    kw = {"encoder_hidden_states": text, "timestep": torch.tensor([500.0]), "encoder_attention_mask": torch.ones(1, 5),
          "num_frames": 2, "height": 4, "width": 4, "rope_interpolation_scale": (8 / 25, 8, 8), "return_dict": False}
    with torch.no_grad():
        torch.testing.assert_close(fused(x, **kw)[0], dit(x, **kw)[0], atol=1e-5, rtol=1e-5)
