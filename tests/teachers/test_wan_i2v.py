"""Wan's three image-to-video shapes against the stock `WanImageToVideoPipeline`: tiny random-weight pipelines built
offline (2.1 I2V with a CLIP image encoder, 2.2 TI2V with expand_timesteps, 2.2 I2V A14B with two experts), loaded
through the family, sampled from a prompt and an image: the same latents as the stock pipeline's for the same seeds
and scheduler (fp32 CPU, max abs difference <= 1e-4). And the image inputs each refuses, by name."""

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline
from PIL import Image

from distill.teachers.base import Cond, FamilyError
from distill.teachers.resolve import open_teacher
from distill.teachers.wan.tiny import I2V_SHAPES, TinyWanSpec, build_i2v_pipeline
from distill.toyworld import vocabulary

PROMPTS = ["a red disc moving left slowly on a black background",
           "a yellow pillar moving up quickly on a gray background"]
SEEDS = [11, 12]
FRAMES, HEIGHT, WIDTH, STEPS, GUIDANCE, SHIFT = 5, 32, 48, 3, 5.0, 3.0
SPEC = TinyWanSpec(dit_patch=(1, 2, 2), dit_layers=2)  # TI2V's stock loop takes every 2nd latent row: 2x2 patches
TEXT_TOKENS = {"wan2.1-i2v": 512}  # a CLIP-reading DiT finds its image tokens before the last 512 (diffusers)


def text_tokens(shape: str) -> int:
    return TEXT_TOKENS.get(shape.split("+")[0], 16)


def _image(seed: int, size=(40, 56)) -> Image.Image:
    """A random RGB image of another size than the clip's: both pipelines resize it."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """shape -> a saved tiny pipeline folder of that shape (built once, on first use)."""
    made = {}

    def get(shape: str):
        if shape not in made:
            base, _, variant = shape.partition("+")
            folder = tmp_path_factory.mktemp(shape.replace("+", "-"))
            build_i2v_pipeline(base, SPEC, vocabulary(), seed=0, pairs=variant == "flf2v").save_pretrained(folder)
            made[shape] = folder
        return made[shape]
    return get


@pytest.fixture(scope="module")
def teachers(folders):
    made = {}

    def get(shape: str):
        if shape not in made:
            family, folder = open_teacher(str(folders(shape)))
            made[shape] = family.load(folder, torch.float32, torch.device("cpu"), text_tokens(shape))
        return made[shape]
    return get


@pytest.fixture(scope="module")
def stocks(folders):
    """shape -> the stock WanImageToVideoPipeline of that folder (TI2V's `WanPipeline` folder included, as its
    model card loads it for image-to-video)."""
    made = {}

    def get(shape: str):
        if shape not in made:
            made[shape] = WanImageToVideoPipeline.from_pretrained(folders(shape), dtype=torch.float32)
            made[shape].set_progress_bar_config(disable=True)
        return made[shape]
    return get


def _stock(pipe, shape: str, image, last_image=None, prompts=PROMPTS, seeds=SEEDS, steps=STEPS):
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config, flow_shift=SHIFT)
    return pipe(image=image, last_image=last_image, prompt=prompts, negative_prompt=[""] * len(prompts),
                height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=steps, guidance_scale=GUIDANCE,
                generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="latent",
                max_sequence_length=text_tokens(shape)).frames


def _ours(teacher, image, last_image=None, prompts=PROMPTS, seeds=SEEDS, steps=STEPS):
    return teacher.sample(prompts, steps=steps, guidance=GUIDANCE, shift=SHIFT, seed=seeds, sampler="unipc",
                          negative="", frames=FRAMES, height=HEIGHT, width=WIDTH, images=image,
                          last_images=last_image)


@pytest.mark.parametrize("shape", I2V_SHAPES)
def test_sampling_from_an_image_matches_the_stock_i2v_pipeline(stocks, teachers, shape):
    image = _image(0)
    expected = _stock(stocks(shape), shape, image)
    ours = _ours(teachers(shape), image)
    assert ours.shape == expected.shape == (2, SPEC.vae_z_dim, 2, HEIGHT // 4, WIDTH // 4)
    diff = (ours - expected.float()).abs().max().item()
    print(f"{shape}: max abs difference {diff:.1e} (latents up to {expected.abs().max():.2f})")  # the docs' figures
    assert diff <= 1e-4, f"{shape}: max abs difference {diff:.2e} on latents"
    assert expected.abs().max() > 0.1  # guards against comparing two zero tensors


@pytest.mark.parametrize("shape", ["wan2.2-i2v-a14b", "wan2.1-i2v+flf2v"])
def test_first_and_last_frame_match_the_stock_pipeline(stocks, teachers, shape):
    first, last = _image(0), _image(1, (32, 48))
    expected = _stock(stocks(shape), shape, first, last, PROMPTS[:1], SEEDS[:1], 2)
    ours = _ours(teachers(shape), first, last, PROMPTS[:1], SEEDS[:1], 2)
    diff = (ours - expected.float()).abs().max().item()
    print(f"{shape} first and last frame: max abs difference {diff:.1e}")  # the docs' figures
    assert diff <= 1e-4, f"{shape} with a last image: max abs difference {diff:.2e}"
    assert teachers(shape).takes_last_image


@pytest.mark.parametrize("shape", I2V_SHAPES)
def test_the_image_conditions_the_velocity(teachers, shape):
    """Another image gives another velocity, on every latent frame (guidance on: the image is in both halves)."""
    teacher = teachers(shape)
    size = (FRAMES, HEIGHT, WIDTH)
    x = teacher.noise(1, *size, seed=0)
    v = [teacher.velocity(x, 0.7, teacher.encode(PROMPTS[:1], "", images=_image(seed), size=size), GUIDANCE)
         for seed in (0, 1)]
    per_frame = (v[0] - v[1]).abs().amax(dim=(0, 1, 3, 4))
    assert (per_frame[1:] > 1e-4).all(), per_frame


def test_ti2v_keeps_the_clean_first_frame_and_samples_text_alone(teachers):
    """TI2V: the clip's first latent frame is the image's latent exactly; the same folder (a WanPipeline) still
    samples from text alone, as the stock WanPipeline does."""
    teacher = teachers("wan2.2-ti2v")
    assert teacher.image_input == "optional" and not teacher.takes_last_image
    size = (FRAMES, HEIGHT, WIDTH)
    cond = teacher.encode(PROMPTS[:1], "", images=_image(0), size=size)
    assert cond.image_latents.shape == (1, SPEC.vae_z_dim, 1, HEIGHT // 4, WIDTH // 4) and cond.image_embeds is None
    clip = teacher.sample(PROMPTS[:1], steps=2, guidance=GUIDANCE, frames=FRAMES, height=HEIGHT, width=WIDTH, cond=cond)
    assert torch.equal(clip[:, :, :1], cond.image_latents)
    text_only = teacher.sample(PROMPTS[:1], steps=2, guidance=GUIDANCE, frames=FRAMES, height=HEIGHT, width=WIDTH)
    assert not torch.allclose(text_only[:, :, :1], cond.image_latents, atol=1e-2)


def test_wan21_cond_carries_clip_tokens_and_slices_and_moves(teachers):
    teacher = teachers("wan2.1-i2v")
    cond = teacher.encode(PROMPTS, "", images=[_image(0), _image(1)], size=(FRAMES, HEIGHT, WIDTH))
    # mask channels (the VAE's temporal factor, 4) + the condition video's latents
    assert cond.image_latents.shape == (2, 4 + SPEC.vae_z_dim, 2, HEIGHT // 4, WIDTH // 4)
    assert cond.image_embeds.shape == (2, 17, 24)  # tiny CLIP: 4x4 patches + class token, width 24
    one = cond[1:]
    assert isinstance(one, Cond) and one.image_embeds.shape[0] == 1 and torch.equal(one.image_latents,
                                                                                    cond.image_latents[1:])
    moved = cond.to("cpu")
    assert torch.equal(moved.image_embeds, cond.image_embeds) and moved.negative_embeds is not None
    text = Cond(cond.prompt_embeds, None)
    assert not text.has_image and text[0:1].image_latents is None and text.to("cpu").image_embeds is None


# --- what is refused, by name -------------------------------------------------------------------------------------
def test_an_image_to_video_folder_without_an_image_is_refused_by_name(teachers, folders):
    teacher = teachers("wan2.2-i2v-a14b")
    with pytest.raises(ValueError, match="image-to-video checkpoint: give the first frame") as err:
        teacher.sample(PROMPTS[:1], steps=1, frames=FRAMES, height=HEIGHT, width=WIDTH)
    assert str(folders("wan2.2-i2v-a14b")) in str(err.value) and "WanImageToVideoPipeline" in str(err.value)


def test_a_missing_or_unreadable_image_is_named(teachers, tmp_path):
    teacher = teachers("wan2.2-ti2v")
    missing = tmp_path / "nope.png"
    with pytest.raises(ValueError, match=f"image '{missing}' does not exist"):
        teacher.sample(PROMPTS[:1], steps=1, frames=FRAMES, height=HEIGHT, width=WIDTH, images=str(missing))
    garbage = tmp_path / "frame.png"
    garbage.write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=f"image '{garbage}' is not a readable image"):
        teacher.encode(PROMPTS[:1], images=garbage, size=(FRAMES, HEIGHT, WIDTH))
    with pytest.raises(ValueError, match="got 3 images for 2 prompts"):
        teacher.encode(PROMPTS, images=[_image(0)] * 3, size=(FRAMES, HEIGHT, WIDTH))


def test_images_a_checkpoint_does_not_take_are_refused(teachers, untrained_wan):
    from distill.teachers.wan import WanTeacher

    text_only = WanTeacher.load(untrained_wan, torch.float32, torch.device("cpu"), 16)
    assert text_only.image_input == "none"
    with pytest.raises(ValueError, match="is a text-to-video checkpoint; it takes no image") as err:
        text_only.sample(PROMPTS[:1], steps=1, frames=5, height=32, width=32, images=_image(0))
    assert str(untrained_wan) in str(err.value)
    with pytest.raises(ValueError, match="takes a first image only, not a last image"):
        teachers("wan2.2-ti2v").encode(PROMPTS[:1], images=_image(0), last_images=_image(1),
                                       size=(FRAMES, HEIGHT, WIDTH))
    with pytest.raises(ValueError, match="takes a first image only"):  # 2.1 I2V without image pairs (not FLF2V)
        teachers("wan2.1-i2v").encode(PROMPTS[:1], images=_image(0), last_images=_image(1),
                                      size=(FRAMES, HEIGHT, WIDTH))
    with pytest.raises(ValueError, match="image conditioning is for a latent grid"):
        cond = teachers("wan2.2-i2v-a14b").encode(PROMPTS[:1], "", images=_image(0), size=(9, HEIGHT, WIDTH))
        teachers("wan2.2-i2v-a14b").sample(PROMPTS[:1], steps=1, frames=FRAMES, height=HEIGHT, width=WIDTH, cond=cond)


def test_a_clip_reading_dit_needs_512_text_tokens(folders):
    family, folder = open_teacher(str(folders("wan2.1-i2v")))
    with pytest.raises(FamilyError, match="set max_sequence_length: 512 \\(it is 16\\)"):
        family.load(folder, torch.float32, torch.device("cpu"), 16)


def _edited(folder, tmp_path, file: str, **keys):
    copy = tmp_path / "edited"
    shutil.copytree(folder, copy)
    path = copy / file
    data = json.loads(path.read_text())
    data.update(keys)
    path.write_text(json.dumps(data))
    return copy


def test_the_family_says_what_each_folder_takes_and_refuses_parts_that_do_not_fit(folders, untrained_wan, tmp_path):
    from distill.teachers.registry import family_of

    family = family_of(folders("wan2.1-i2v"))
    assert [family.image_input(folders(s)) for s in I2V_SHAPES] == ["required", "optional", "required"]
    assert family.image_input(untrained_wan) == "none"
    assert [family.takes_last_image(folders(s)) for s in I2V_SHAPES] == [False, False, True]
    bad = _edited(folders("wan2.1-i2v"), tmp_path, "transformer/config.json", in_channels=8)
    with pytest.raises(FamilyError, match="transformer/config.json' has in_channels 8; an image-to-video DiT "
                                          "over this VAE takes 20"):
        family.check_folder(bad, "bad")
    shutil.rmtree(bad)
    no_clip = _edited(folders("wan2.1-i2v"), tmp_path, "model_index.json", image_encoder=[None, None])
    with pytest.raises(FamilyError, match="reads image tokens \\(image_dim 24\\) but .* has no image_encoder"):
        family.check_folder(no_clip, "no-clip")

