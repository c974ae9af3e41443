"""The toy world's metric networks do their job: the domain CLIP tells captions apart, the domain video net's
Fréchet distance notices broken motion, and the flicker suite notices flicker, on real toy clips."""

import numpy as np
import pytest
import torch

from distill import toyworld
from distill.eval import flicker, metrics
from distill.eval.clip_score import ClipBackend
from distill.eval.domain_video_net import DomainVideoDetector
from distill.eval.fvd import fvd_from_features


@pytest.fixture(scope="module")
def held_out():
    clips, captions = toyworld.render_pool("held_out", 2, seed=123)
    return torch.from_numpy(clips), captions


@pytest.fixture(scope="module")
def clip():
    return ClipBackend.domain()


def test_domain_clip_ranks_the_true_caption_first(clip, held_out):
    videos, captions = held_out
    suite = toyworld.prompt_suite("held_out").prompts
    scores = clip.score_matrix(videos, suite)
    truth = torch.tensor([suite.index(c) for c in captions])
    top1 = float((scores.argmax(1) == truth).double().mean())
    assert top1 >= 0.90, f"true caption ranked first for {top1:.1%} of held-out clips"
    assert top1 > 5 / len(suite)  # and far above chance


def test_wrong_caption_lowers_clip_score(clip, held_out):
    videos, captions = held_out
    right = clip.clip_scores(videos[:24], captions[:24]).mean()
    wrong_captions = [c.replace("left", "TMP").replace("right", "left").replace("TMP", "right")
                      .replace("red", "blue") if "red" in c else c.replace("disc", "plank").replace("pillar",
                      "disc") for c in captions[:24]]
    assert wrong_captions != captions[:24]
    assert clip.clip_scores(videos[:24], wrong_captions).mean() < right - 1.0
    assert metrics.REGISTRY[0].name(metrics.Scorers(clip, 8, None, "farneback", 17, 0.5)) == "clipsim[domain-clip]"


def test_shuffling_frames_raises_domain_fvd(held_out):
    videos, _ = held_out
    det = DomainVideoDetector()
    other, _ = toyworld.render_pool("held_out", 2, seed=7)
    real = det.features(videos).numpy()
    clean = det.features(torch.from_numpy(other)).numpy()
    perm = torch.from_numpy(np.random.default_rng(0).permutation(videos.shape[1]))
    shuffled = det.features(torch.from_numpy(other)[:, perm]).numpy()
    assert fvd_from_features(real, shuffled) > 2 * fvd_from_features(real, clean)


def test_noise_and_brightness_jitter_raise_every_flicker_measure(held_out):
    videos = held_out[0][:8]
    rng = np.random.default_rng(0)
    noisy = torch.from_numpy(np.clip(videos.numpy() + rng.normal(0, 12, videos.shape), 0, 255).astype(np.uint8))
    gains = rng.uniform(0.8, 1.2, (1, videos.shape[1], 1, 1, 1))
    jitter = torch.from_numpy(np.clip(videos.numpy() * gains, 0, 255).astype(np.uint8))
    base = (flicker.vbench_flicker(videos), flicker.warp_error(videos), flicker.hf_energy(videos))
    for corrupt in (noisy, jitter):
        assert (flicker.vbench_flicker(corrupt) < base[0]).all()  # the VBench score falls as flicker rises
        assert (flicker.warp_error(corrupt) > base[1]).all()
        assert (flicker.hf_energy(corrupt) > base[2]).all()
