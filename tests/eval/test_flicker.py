"""Flicker measures (eval/flicker.py) on tiny synthetic clips: a square gliding over a textured background."""

from pathlib import Path

import numpy as np
import pytest
import torch

import distill.eval.flicker as flicker
from distill.eval.flicker import HFEnergy, VBenchFlicker, WarpError, hf_energy, vbench_flicker, warp_error

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


def test_metrics_keep_per_clip_scores_and_average(clips):
    for metric, fn in [(VBenchFlicker(), vbench_flicker), (HFEnergy(cutoff=0.25), hf_energy)]:
        metric.update(clips[:2])
        metric.update(clips[2:])
        expected = fn(clips)
        assert torch.allclose(metric.scores(), expected)
        assert float(metric.compute()) == pytest.approx(float(expected.mean()))
        metric.reset()
        with pytest.raises(ValueError, match="no clips"):
            metric.scores()
    assert VBenchFlicker.higher_is_better and not HFEnergy.higher_is_better and not WarpError.higher_is_better


def test_per_clip_scores_sync_across_ranks_by_concatenation(clips):
    metric = VBenchFlicker()
    metric.update(clips)
    metric.sync(dist_sync_fn=lambda x, group=None: [x, x], distributed_available=lambda: True)
    assert torch.equal(metric.scores(), torch.cat([vbench_flicker(clips)] * 2))
    metric.unsync()
    assert metric.scores().shape == (4,)


def test_warp_error_metric_names_its_backend(clips):
    metric = WarpError(flow="farneback")
    assert metric.backend == "farneback" and metric.name == "flicker.warp_error[farneback]"
    metric.update(clips)
    assert float(metric.compute()) == pytest.approx(float(warp_error(clips, flow="farneback").mean()))


def test_auto_uses_farneback_without_local_raft_weights(monkeypatch, tmp_path):
    monkeypatch.setattr(flicker, "raft_weights_path", lambda: tmp_path / "absent.pth")
    assert flicker.resolve_flow_backend("auto") == "farneback"
    assert WarpError().name == "flicker.warp_error[farneback]"
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        flicker.resolve_flow_backend("raft_small")


def test_auto_uses_raft_when_its_weights_are_cached(monkeypatch, tmp_path):
    """The RAFT path, run with untrained weights standing in for the cached file (only plumbing is tested)."""
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    weights: Path = tmp_path / "raft_small_C_T_V2-01064c6d.pth"
    torch.save(raft_small(weights=None).state_dict(), weights)
    monkeypatch.setattr(flicker, "raft_weights_path", lambda: weights)
    metric = WarpError()
    assert metric.name == "flicker.warp_error[raft_small]"
    metric.update(as_videos(square_clip()[:3]))
    assert torch.isfinite(metric.compute())
