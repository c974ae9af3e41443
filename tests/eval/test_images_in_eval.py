"""An image-to-video model in the eval harness: each clip is conditioned on its prompt's first image from the suite,
each distinct image is encoded once per checkpoint and clip size, the clip cache keys the image, a text-to-video
model of the same suite ignores the images, and an image-to-video checkpoint on a suite without images is refused
in preflight."""

from __future__ import annotations

import numpy as np
import pytest

from distill import toyworld
from distill.core.config import ConfigError
from distill.eval.harness import Harness
from distill.eval.suite import SuiteConfig, first_images_for, parse_model_spec
from distill.teachers.config import load_teacher_config
from distill.teachers.wan.tiny import TinyWanSpec, build_i2v_pipeline

PROMPTS = toyworld.prompt_suite("held_out").prompts[:3]
I2V_SUITE = SuiteConfig(name="i2v", prompts=PROMPTS, frames=5, height=32, width=32, batch_size=4,
                        first_images="toyworld", speed={"clips": 1, "warmup": 0})


def _folder(tmp_path_factory, shape: str):
    folder = tmp_path_factory.mktemp(shape)
    build_i2v_pipeline(shape, TinyWanSpec(dit_patch=(1, 2, 2), dit_layers=1), toyworld.vocabulary()).save_pretrained(
        folder)
    return folder


@pytest.fixture(scope="module")
def ti2v(tmp_path_factory):
    return _folder(tmp_path_factory, "wan2.2-ti2v")


def test_each_clip_is_conditioned_on_its_prompts_image_encoded_once(ti2v, tmp_path, monkeypatch):
    harness = Harness(I2V_SUITE, load_teacher_config(str(ti2v)), PROMPTS, tmp_path / "out", progress=False)
    harness.first_images = first_images_for(I2V_SUITE, PROMPTS)  # what preflight reads
    cand = harness.candidate(parse_model_spec("teacher@1:euler"))
    assert cand.takes_images
    encoded = []
    real = cand.teacher.encode_images
    monkeypatch.setattr(cand.teacher, "encode_images",
                        lambda images, size, *a, **k: encoded.append(len(images)) or real(images, size, *a, **k))
    items = [(p, seed) for p in PROMPTS for seed in (0, 1)]
    clips = harness.clips(cand, items, "i2v")
    assert clips.shape == (6, 5, 32, 32, 3) and sum(encoded) == 3  # 3 distinct images for 6 clips
    again = harness.candidate(parse_model_spec("two=teacher@2:euler"))  # the same checkpoint: its images reused
    harness.clips(again, items[:2], "i2v")
    assert sum(encoded) == 3

    a, b = harness.first_images[0], harness.first_images[1]
    assert cand.cache_key(PROMPTS[0], 0, 5, 32, 32, a) != cand.cache_key(PROMPTS[0], 0, 5, 32, 32, b)
    with_a = cand.sample(PROMPTS[:1], [0], 5, 32, 32, images=[a])
    with_b = cand.sample(PROMPTS[:1], [0], 5, 32, 32, images=[b])
    def grey_levels(x, y):
        return np.abs(x.astype(int) - y.astype(int)).max()
    assert grey_levels(with_a, with_b) > 2  # the image reaches the DiT
    assert grey_levels(with_a[0], clips[0]) <= 1  # the cached image conditioning is the image's own (batch 4 vs 1: a grey level of float order)


def test_a_text_to_video_model_ignores_the_suites_images(untrained_wan, tmp_path):
    harness = Harness(I2V_SUITE, load_teacher_config(str(untrained_wan)), PROMPTS, tmp_path / "out", progress=False)
    harness.first_images = first_images_for(I2V_SUITE, PROMPTS)
    cand = harness.candidate(parse_model_spec("teacher@1:euler"))
    a, b = harness.first_images[0], harness.first_images[1]
    assert not cand.takes_images
    assert cand.cache_key(PROMPTS[0], 0, 5, 32, 32, a) == cand.cache_key(PROMPTS[0], 0, 5, 32, 32)


def test_an_image_to_video_checkpoint_needs_a_suite_with_images(tmp_path_factory, tmp_path):
    folder = _folder(tmp_path_factory, "wan2.2-i2v-a14b")
    suite = I2V_SUITE.model_copy(update={"first_images": None})
    harness = Harness(suite, load_teacher_config(str(folder)), PROMPTS, tmp_path / "out", progress=False)
    with pytest.raises(ConfigError, match=r"model 'teacher@50'.*first image per prompt.*first_images"):
        harness.preflight([])
