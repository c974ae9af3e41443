"""Flicker measures (eval/flicker.py) on tiny synthetic clips: a square gliding over a textured background; and
VBench's protocol: its flicker score only on static clips."""

from pathlib import Path

import numpy as np
import pytest
import torch

import distill.eval.flicker as flicker
from distill.eval import metrics
from distill.eval.flicker import hf_energy, static_clips, static_threshold, vbench_flicker, warp_error

FRAMES, SIZE = 9, 32


def square_clip(speed: int = 2) -> np.ndarray:
    """Float frames [T, H, W, 3] on the 0..255 scale: an orange square moving right by `speed` px per frame over
    a smooth sinusoidal background (texture gives optical flow something to hold on to)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    background = 60 + 40 * np.sin(xx / 3.0) + 30 * np.cos(yy / 4.0)
    clip = np.empty((FRAMES, SIZE, SIZE, 3))
    for t in range(FRAMES):
        clip[t] = np.stack([background, 0.8 * background, 0.6 * background], axis=-1)
        clip[t, 10:20, 4 + speed * t:14 + speed * t] = (220, 180, 40)
    return clip


def as_videos(*clips: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.clip(np.round(np.stack(clips)), 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def clips():
    """clean, per-frame noise, per-frame brightness jitter, static: a batch [4, T, H, W, 3]."""
    rng = np.random.default_rng(0)
    clean = square_clip()
    noisy = clean + rng.normal(0.0, 15.0, clean.shape)
    jittered = clean + rng.uniform(-25.0, 25.0, (FRAMES, 1, 1, 1))
    static = np.repeat(clean[:1], FRAMES, axis=0)
    return as_videos(clean, noisy, jittered, static)


CLEAN, NOISY, JITTERED, STATIC = range(4)


def test_vbench_static_is_one_and_flicker_lowers_it(clips):
    scores = vbench_flicker(clips)
    assert scores.dtype == torch.float64 and scores.shape == (4,)
    assert scores[STATIC] == 1.0
    assert scores[NOISY] < scores[CLEAN] and scores[JITTERED] < scores[CLEAN] < scores[STATIC]


def test_vbench_matches_its_formula():
    videos = torch.zeros(1, 3, 4, 4, 3, dtype=torch.uint8)
    videos[0, 1] = 51  # |Δ| = 51 for both pairs
    assert float(vbench_flicker(videos)) == pytest.approx((255 - 51) / 255)


def test_warp_error_farneback_rises_with_flicker(clips):
    errors = warp_error(clips, flow="farneback")
    assert errors.dtype == torch.float64 and errors.shape == (4,) and torch.isfinite(errors).all()
    assert errors[NOISY] > 2 * errors[CLEAN] and errors[JITTERED] > 2 * errors[CLEAN]
    assert errors[STATIC] < 1e-4


def test_warp_error_compensates_motion_unlike_raw_difference():
    """A faster square changes more pixels per frame (VBench drops) but flow explains it (warp error stays low)."""
    slow, fast = as_videos(square_clip(speed=1), square_clip(speed=2))
    vb = vbench_flicker(torch.stack([slow, fast]))
    assert vb[1] < vb[0]
    noisy_slow = as_videos(square_clip(speed=1) + np.random.default_rng(1).normal(0, 15, (FRAMES, SIZE, SIZE, 3)))[0]
    errors = warp_error(torch.stack([fast, noisy_slow]), flow="farneback")
    assert errors[0] < errors[1]


def test_hf_energy_static_is_zero_and_flicker_raises_it(clips):
    energy = hf_energy(clips)
    assert energy.dtype == torch.float64 and energy.shape == (4,)
    assert energy[STATIC] == 0.0
    assert energy[NOISY] > energy[CLEAN] and energy[JITTERED] > energy[CLEAN]
    assert ((energy >= 0) & (energy <= 1)).all()


def ramp_and_alternation() -> torch.Tensor:
    t = torch.arange(8, dtype=torch.float64)
    drift = (100 + 10 * t).view(1, 8, 1, 1, 1).expand(1, 8, 4, 4, 3)
    alternate = (100 + 40 * (t % 2)).view(1, 8, 1, 1, 1).expand(1, 8, 4, 4, 3)  # all energy at Nyquist
    return torch.cat([drift, alternate]).round().to(torch.uint8)


def test_hf_energy_separates_slow_drift_from_alternation():
    values = hf_energy(ramp_and_alternation())
    # the alternation ends high, so its fitted line takes a little low-frequency energy with it
    assert values[0] == pytest.approx(0.0, abs=1e-9) and values[1] > 0.95


def test_hf_energy_mean_detrend_reads_a_drift_as_partly_high_frequency():
    """Why "linear" is the default: with only the mean removed, the periodic FFT sees the ramp wrap around."""
    values = hf_energy(ramp_and_alternation(), detrend="mean")
    assert 0.2 < values[0] < 0.5 and values[1] == pytest.approx(1.0)


def test_inputs_are_checked():
    with pytest.raises(TypeError, match="uint8"):
        vbench_flicker(torch.zeros(1, 3, 4, 4, 3))
    with pytest.raises(ValueError, match="T=1"):
        hf_energy(torch.zeros(1, 1, 4, 4, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="cutoff"):
        hf_energy(torch.zeros(1, 3, 4, 4, 3, dtype=torch.uint8), cutoff=1.5)
    with pytest.raises(ValueError, match="'cubic'"):
        hf_energy(torch.zeros(1, 3, 4, 4, 3, dtype=torch.uint8), detrend="cubic")
    with pytest.raises(ValueError, match="'optical'"):
        warp_error(torch.zeros(1, 3, 4, 4, 3, dtype=torch.uint8), flow="optical")


def test_there_is_no_auto_flow_backend():
    """A metric's name carries its flow backend; "auto" would make it depend on what happens to be cached."""
    with pytest.raises(ValueError, match="'auto'"):
        flicker.resolve_flow_backend("auto")
    assert flicker.resolve_flow_backend("farneback") == "farneback"


def test_raft_small_refuses_without_its_cached_weights(monkeypatch, tmp_path):
    monkeypatch.setattr(flicker, "raft_weights_path", lambda: tmp_path / "absent.pth")
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        flicker.resolve_flow_backend("raft_small")


def test_raft_small_runs_when_its_weights_are_cached(monkeypatch, tmp_path):
    """The RAFT path, run with untrained weights standing in for the cached file (only plumbing is tested)."""
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    weights: Path = tmp_path / "raft_small_C_T_V2-01064c6d.pth"
    torch.save(raft_small(weights=None).state_dict(), weights)
    monkeypatch.setattr(flicker, "raft_weights_path", lambda: weights)
    assert torch.isfinite(warp_error(as_videos(square_clip()[:3]), flow="raft_small")).all()


# --- the counter-example: a smooth moving clip versus a static flickering one -----------------------------------

T, S = 17, 64  # a toy clip's size


def soft_square_clip(speed: int) -> np.ndarray:
    """A 12 px square with soft (2 px) edges gliding right by `speed` px per frame over a smooth background;
    no flicker at all."""
    yy, xx = np.mgrid[0:S, 0:S]
    background = np.stack([60 + 20 * np.sin(xx / 5.0) + 15 * np.cos(yy / 6.0)] * 3, axis=-1)
    clip = np.empty((T, S, S, 3))
    for t in range(T):
        distance = np.maximum(np.abs(xx - (12 + speed * t)), np.abs(yy - 32))
        alpha = np.clip((6 - distance) / 2 + 0.5, 0, 1)[..., None]
        clip[t] = background * (1 - alpha) + alpha * np.array([220, 180, 40])
    return clip


@pytest.fixture(scope="module")
def moving_and_flickering():
    """[smooth square moving 2 px/frame, static clip with ±3-level brightness flicker]"""
    still = soft_square_clip(speed=0)
    flickering = still + np.random.default_rng(0).uniform(-3, 3, (T, 1, 1, 1))
    return as_videos(soft_square_clip(speed=2), flickering)


def test_moving_clip_does_not_score_worse_than_a_flickering_static_one(moving_and_flickering):
    """Moving-clip flicker evidence (warp error, HF energy) must not punish clean motion; raw VBench does
    (both score within 0.01 of each other), which is why it is only applied to static clips."""
    moving, flickering = 0, 1
    warp = warp_error(moving_and_flickering, flow="farneback")
    hf = hf_energy(moving_and_flickering)
    assert warp[moving] < warp[flickering]
    assert hf[moving] < hf[flickering]
    vb = vbench_flicker(moving_and_flickering)
    assert abs(float(vb[moving] - vb[flickering])) < 0.01  # raw VBench cannot tell motion from flicker


def test_static_filter_passes_the_flickering_still_and_refuses_the_moving_clip(moving_and_flickering):
    is_static, motion = static_clips(moving_and_flickering, flow="farneback")
    assert is_static.tolist() == [False, True]
    assert motion[0] > 1.0 and motion[1] < 0.5  # ~2 px/frame for the square, ~0 for the flicker


def test_static_filter_is_vbench_rule_a_few_fast_pairs_are_tolerated():
    """VBench's rule at 17 frames: up to round(2 * 17 / 16) = 2 pairs (the last two aside) may move faster than
    3 px * 64 / 256 = 0.75 px per frame; a third fast pair, or a large jump between the last frames, makes it move."""
    still = soft_square_clip(speed=0)

    def jumping(at: list[int]) -> np.ndarray:
        clip = still.copy()
        for t in at:  # the square jumps 4 px right at frame t and back at t + 1
            clip[t] = np.roll(still[t], 4, axis=1)
        return clip

    videos = as_videos(jumping([3]), jumping([3, 9]), jumping([3, 7, 11]), jumping([16]))
    is_static, motion = static_clips(videos, flow="farneback")
    assert static_threshold(S, S) == pytest.approx(0.75)
    # one jump = two fast pairs (there and back): tolerated; two jumps are four; between the last two frames the
    # bound is 2 * 2 * 0.75 = 3 px, and a 4 px jump there is motion
    assert is_static.tolist() == [True, False, False, False]
    assert float(motion.min()) > 0.75  # every clip has a fast pair: the tolerance, not the threshold, decides


def _vbench_record(videos, static_prompt):
    scorers = metrics.Scorers(clip=None, clip_frames=8, detector=None, flow="farneback", frames=T,
                              static_max_flow_px=0.5)
    (vb,) = [m for m in metrics.REGISTRY if m.static_only]
    values = vb.per_clip(videos, [], scorers)
    mask, motion = metrics.static_mask(videos.numpy(), static_prompt, scorers)
    return metrics.static_record(vb, values, np.arange(len(values)), static_prompt, mask, motion, "farneback", 0.5)


def test_vbench_record_skips_the_moving_clip_and_says_so(moving_and_flickering):
    moving_only = _vbench_record(moving_and_flickering[:1], np.array([True]))
    assert moving_only["value"] is None and moving_only["n_static"] == 0
    assert "none of the 1 clips of static prompts passed the static filter" in moving_only["skipped"]
    both = _vbench_record(moving_and_flickering, np.array([True, True]))
    assert both["n_static"] == 1 and both["n_total"] == 2
    assert both["value"] == pytest.approx(float(vbench_flicker(moving_and_flickering[1:])[0]))
    no_static_prompts = _vbench_record(moving_and_flickering, np.array([False, False]))
    assert no_static_prompts["value"] is None and "no static prompts" in no_static_prompts["skipped"]
