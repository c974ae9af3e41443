"""The shipped image-conditioned toy-world teacher, `builtin:tiny-wan-ti2v` (Wan 2.2 TI2V's layout, fine-tuned from
tiny-wan by scripts/train_tiny_i2v_teacher.py): it loads by its built-in name and config, samples a clip from a
toy-world first frame whose latent frame 0 is the image's latent (and whose decoded frame 0 is the image, up to the
VAE), as the stock image-to-video pipeline does; the image is optional (TI2V samples text alone too)."""

import pytest
import torch
from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline
from PIL import Image

from distill import toyworld
from distill.teachers.config import load_teacher, load_teacher_config
from distill.teachers.resolve import builtin_names, open_teacher

PROMPT = "a red pillar moving right quickly on a white background"
STEPS = 4  # enough to compare with the stock loop (multistep UniPC from step 2); the quality figures are
#            docs/tiny-teacher-i2v.md's


@pytest.fixture(scope="module")
def shipped():
    cfg = load_teacher_config("tiny-wan-ti2v")
    return cfg, load_teacher(cfg, "cpu")


@pytest.fixture(scope="module")
def first_image() -> Image.Image:
    return Image.fromarray(toyworld.render(toyworld.parse_caption(PROMPT), 3)[0])


def test_the_ti2v_teacher_is_shipped_as_a_builtin_with_its_config(shipped):
    cfg, teacher = shipped
    assert "tiny-wan-ti2v" in builtin_names() and cfg.source == "builtin:tiny-wan-ti2v"
    family, folder = open_teacher(cfg.source)
    assert family.name == "wan" and family.experts(folder) == ("transformer",)
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) <= 25e6
    assert teacher.expand_timesteps and teacher.image_input == "optional" and not teacher.takes_last_image
    assert teacher.image_encoder is None  # TI2V reads the image through its latent only


def test_a_clip_from_an_image_keeps_it_in_frame_0(shipped, first_image):
    cfg, teacher = shipped
    v = cfg.video
    size = (v.frames, v.height, v.width)
    cond = teacher.encode([PROMPT], "", images=first_image, size=size)
    latents = teacher.sample([PROMPT], steps=2, guidance=cfg.sampler.guidance, shift=cfg.sampler.shift, seed=0,
                             frames=v.frames, height=v.height, width=v.width, cond=cond)
    assert torch.equal(latents[:, :, :1], cond.image_latents)
    clip = teacher.decode(latents)
    image = torch.from_numpy(toyworld.render(toyworld.parse_caption(PROMPT), 3)[0])
    mse = (clip[0, 0].double() - image.double()).pow(2).mean()  # the teachers' tests do not reach up to eval
    psnr = float(10 * torch.log10(255.0**2 / mse))
    print(f"frame 0 against the image: {psnr:.1f} dB")
    assert psnr > 28.0, f"frame 0 is {psnr:.1f} dB from the image"  # the VAE's round trips: 25-38 dB, mean 31.4


def test_sampling_from_an_image_matches_the_stock_pipeline(shipped, first_image):
    cfg, teacher = shipped
    v, s = cfg.video, cfg.sampler
    stock = WanImageToVideoPipeline.from_pretrained(teacher.folder, dtype=torch.float32)
    stock.set_progress_bar_config(disable=True)
    stock.scheduler = UniPCMultistepScheduler.from_config(stock.scheduler.config, flow_shift=s.shift)
    expected = stock(image=first_image, prompt=[PROMPT], negative_prompt=[""], height=v.height, width=v.width,
                     num_frames=v.frames, num_inference_steps=STEPS, guidance_scale=s.guidance,
                     generator=[torch.Generator().manual_seed(0)], output_type="latent",
                     max_sequence_length=cfg.max_sequence_length).frames
    ours = teacher.sample([PROMPT], steps=STEPS, guidance=s.guidance, shift=s.shift, seed=0, frames=v.frames,
                          height=v.height, width=v.width, images=first_image)
    diff = (ours - expected.float()).abs().max().item()
    assert diff <= 1e-4, f"max abs difference {diff:.2e}"


def test_the_image_is_optional_and_changes_the_clip(shipped, first_image):
    cfg, teacher = shipped
    v = cfg.video
    kw = dict(steps=2, guidance=cfg.sampler.guidance, seed=0, frames=v.frames, height=v.height, width=v.width)
    text_only = teacher.sample([PROMPT], **kw)  # TI2V: not refused without an image
    with_image = teacher.sample([PROMPT], images=first_image, **kw)
    assert text_only.shape == with_image.shape
    assert (text_only[:, :, 1:] - with_image[:, :, 1:]).abs().amax() > 1e-2  # the image reaches the later frames
