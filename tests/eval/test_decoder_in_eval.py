"""A distilled decoder as part of an evaluated model (`NAME=SOURCE@STEPS,decoder=PATH`): its clips are the DiT's
latents through that decoder, cached apart from the VAE's, timed as a stream with the time to the first frame, and a
decoder made for other latents is refused in preflight, naming it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill import toyworld
from distill.core.config import ConfigError
from distill.eval.harness import Harness
from distill.eval.suite import SuiteConfig, parse_model_spec
from distill.teachers import registry
from distill.teachers.config import load_teacher_config
from distill.teachers.decoders import VideoDecoder

PROMPTS = toyworld.prompt_suite("held_out").prompts[:3]
SUITE = SuiteConfig(name="dec", prompts=PROMPTS, frames=5, height=32, width=32, batch_size=2,
                    speed={"clips": 1, "warmup": 0})


def _decoder(folder, teacher_folder, channels_offset: int = 0):
    family = registry.family_of(teacher_folder)
    f = family.video_factors(teacher_folder)
    torch.manual_seed(0)
    VideoDecoder(latent_channels=family.latent_channels(family.dit_config(teacher_folder)) + channels_offset,
                 temporal=f.temporal, spatial=f.spatial, width=8, depth=0, min_width=4).save_pretrained(folder)
    return folder


def test_a_decoded_model_is_its_latents_through_the_decoder(untrained_wan, tmp_path):
    dec = _decoder(tmp_path / "dec", untrained_wan)
    harness = Harness(SUITE, load_teacher_config(str(untrained_wan)), PROMPTS, tmp_path / "out", progress=False)
    spec = parse_model_spec(f"teacher@1:euler,decoder={dec}")
    assert spec.name == "teacher@1+decoder" and spec.decoder == str(dec)
    vae, decoded = harness.candidate(parse_model_spec("teacher@1:euler")), harness.candidate(spec)
    key = (PROMPTS[0], 0, 5, 32, 32)
    assert vae.cache_key(*key) != decoded.cache_key(*key)  # a clip decoded by the VAE is never read for the decoder

    timing: dict = {}
    clip = decoded.sample(PROMPTS[:1], [0], 5, 32, 32, timing=timing)
    latents = decoded.teacher.sample(PROMPTS[:1], steps=1, guidance=decoded.guidance, shift=decoded.shift, seed=[0],
                                     sampler="euler", frames=5, height=32, width=32)
    np.testing.assert_array_equal(clip, decoded.decoder.decode(latents).numpy())  # streamed = decoded at once
    assert not np.array_equal(clip, vae.sample(PROMPTS[:1], [0], 5, 32, 32))
    assert timing["text_s"] + timing["denoise_s"] < timing["first_frame_s"] < timing["total_s"]

    vae_timing: dict = {}
    vae.sample(PROMPTS[:1], [0], 5, 32, 32, timing=vae_timing)
    assert vae_timing["first_frame_s"] == pytest.approx(vae_timing["total_s"])  # the VAE gives every frame at once


def test_a_decoder_for_other_latents_is_refused_before_sampling(untrained_wan, tmp_path):
    dec = _decoder(tmp_path / "dec", untrained_wan, channels_offset=1)
    harness = Harness(SUITE, load_teacher_config(str(untrained_wan)), PROMPTS, tmp_path / "out", progress=False)
    with pytest.raises(ConfigError, match=r"model 'bad'.*decoder=.*latent_channels"):
        harness.preflight([parse_model_spec(f"bad=teacher@1,decoder={dec}")])
    with pytest.raises(ConfigError, match=r"decoder=.*no config.json"):
        harness.preflight([parse_model_spec(f"missing=teacher@1,decoder={tmp_path / 'nowhere'}")])
    assert not (tmp_path / "out" / "cache").exists() or not any((tmp_path / "out" / "cache").glob("*.npy"))


def test_model_text_takes_a_decoder_option():
    spec = parse_model_spec("cd=runs/cd/export@4,decoder=runs/decoder-tiny/export")
    assert (spec.name, spec.source, spec.steps, spec.decoder) == ("cd", "runs/cd/export", 4, "runs/decoder-tiny/export")
    with pytest.raises(ValueError, match="decoder="):
        parse_model_spec("teacher@4,decoders=x")
