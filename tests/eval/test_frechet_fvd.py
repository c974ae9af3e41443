"""Fréchet distance (eval/frechet.py) and FVD with its detectors (eval/fvd.py), on tiny tensors."""

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from distill.eval.frechet import feature_stats, frechet_distance
from distill.eval.fvd import (
    I3D_KWARGS,
    PINNED_I3D_SHA256,
    I3DDetector,
    VideoDetector,
    fvd_from_features,
    preprocess_for_i3d,
    sha256_of_file,
    uniform_frame_indices,
)


def random_covariance(rng, d, condition=1.0):
    """A random SPD matrix: eigenvalues in [0.5, 2], or log-spaced from 1 down to 1/condition (ill-conditioned)."""
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    eigenvalues = np.logspace(0, -np.log10(condition), d) if condition > 1 else rng.uniform(0.5, 2.0, d)
    return (q * eigenvalues) @ q.T


def reference_distance(mu1, sigma1, mu2, sigma2):
    """The textbook formula with scipy's general matrix square root (as pytorch-fid / StyleGAN-V)."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2 * np.real(covmean)))


# --- frechet.py ---------------------------------------------------------------------------------------------------

def test_identical_sets_give_zero():
    feats = np.random.default_rng(0).standard_normal((40, 6))
    mu, sigma = feature_stats(feats)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


def test_equal_covariances_give_squared_mean_difference():
    rng = np.random.default_rng(1)
    sigma = random_covariance(rng, 5)
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(float(np.sum((mu1 - mu2) ** 2)), rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("condition", [1.0, 1e6])
def test_matches_scipy_sqrtm_reference(seed, condition):
    rng = np.random.default_rng(seed)
    d = 8
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    sigma1, sigma2 = random_covariance(rng, d, condition), random_covariance(rng, d, condition)
    ours = frechet_distance(mu1, sigma1, mu2, sigma2)
    assert ours == pytest.approx(reference_distance(mu1, sigma1, mu2, sigma2), rel=1e-7, abs=1e-9)


def test_singular_covariances_from_few_samples_stay_finite_and_match_reference():
    rng = np.random.default_rng(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mu1, sigma1 = feature_stats(rng.standard_normal((4, 10)))
        mu2, sigma2 = feature_stats(rng.standard_normal((4, 10)) + 0.5)
    ours = frechet_distance(mu1, sigma1, mu2, sigma2)
    assert np.isfinite(ours) and ours > 0
    assert ours == pytest.approx(reference_distance(mu1, sigma1, mu2, sigma2), rel=1e-5)


def test_accepts_torch_and_returns_float():
    mu = torch.zeros(3)
    sigma = torch.eye(3)
    value = frechet_distance(mu, sigma, mu + 1, sigma)
    assert isinstance(value, float) and value == pytest.approx(3.0)


def test_feature_stats_are_float64_unbiased():
    feats = torch.randn(20, 4, dtype=torch.float32)
    mu, sigma = feature_stats(feats)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64 and sigma.shape == (4, 4)
    np.testing.assert_allclose(sigma, np.cov(feats.double().numpy(), rowvar=False), rtol=1e-12)


def test_warns_when_fewer_samples_than_dimensions():
    with pytest.warns(UserWarning, match=r"N=3.*D=5"):
        feature_stats(np.random.default_rng(0).standard_normal((3, 5)))


def test_no_warning_with_enough_samples():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        feature_stats(np.random.default_rng(0).standard_normal((10, 5)))


def test_rejects_a_matrix_that_is_not_a_covariance():
    mu = np.zeros(2)
    not_psd = np.array([[1.0, 0.0], [0.0, -1.0]])
    with pytest.raises(ValueError, match="positive semi-definite"):
        frechet_distance(mu, not_psd, mu, np.eye(2))
    with pytest.raises(ValueError, match="symmetric"):
        frechet_distance(mu, np.array([[1.0, 0.5], [0.0, 1.0]]), mu, np.eye(2))


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same length"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


# --- test videos and stand-in detectors ---------------------------------------------------------------------------

def moving_square_clips(n, seed, frames=9, size=32):
    """n clips of a bright square gliding at a random constant velocity over a dark background."""
    rng = np.random.default_rng(seed)
    clips = np.full((n, frames, size, size, 3), 20, dtype=np.uint8)
    for i in range(n):
        x, y = rng.uniform(2, size - 10, 2)
        vx, vy = rng.uniform(-1.5, 1.5, 2)
        for t in range(frames):
            cx = int(np.clip(round(x + vx * t), 0, size - 8))
            cy = int(np.clip(round(y + vy * t), 0, size - 8))
            clips[i, t, cy:cy + 8, cx:cx + 8] = 230
    return torch.from_numpy(clips)


class StandIn:
    """The naming part of the detector face, for stand-ins that read every frame."""

    def metric_name(self, statistic, frames):
        return f"{statistic}[{self.name},{frames}f]"

    def protocol(self, frames):
        return f"all {frames} frames"

    def check_frames(self, frames):
        pass


class MeanColourDetector(StandIn):
    """A stand-in detector: per-channel mean and std of each clip (no sense of time at all)."""

    name = "stand-in-colour"
    feature_dim = 6
    num_frames = None

    def features(self, videos):
        x = videos.double() / 255
        return torch.cat([x.mean(dim=(1, 2, 3)), x.std(dim=(1, 2, 3))], dim=1)


class FrameDifferenceDetector(StandIn):
    """A temporally sensitive stand-in detector: statistics of frame-to-frame and two-frame differences."""

    name = "stand-in-frame-diff"
    feature_dim = 4
    num_frames = None

    def features(self, videos):
        x = videos.double().mean(dim=-1) / 255  # [B, T, H, W]
        step1 = (x[:, 1:] - x[:, :-1]).abs().mean(dim=(2, 3))  # [B, T-1]
        step2 = (x[:, 2:] - x[:, :-2]).abs().mean(dim=(2, 3))
        return torch.stack([step1.mean(1), step1.max(1).values, step2.mean(1), step1.std(1)], dim=1)


def test_stand_ins_have_the_detector_face():
    assert isinstance(MeanColourDetector(), VideoDetector)
    assert not isinstance(object(), VideoDetector)


# --- FVD of detector features ----------------------------------------------------------------------------------

def test_fvd_identical_sets_is_about_zero_and_shift_raises_it():
    feats = np.random.default_rng(0).standard_normal((30, 6))
    assert fvd_from_features(feats, feats) == pytest.approx(0.0, abs=1e-9)
    assert fvd_from_features(feats, feats + 0.5) == pytest.approx(6 * 0.5 ** 2, rel=1e-9)  # only the mean moves


def test_fvd_from_videos_grows_when_fake_clips_are_brightened():
    det = MeanColourDetector()
    real = det.features(moving_square_clips(12, seed=0))
    near = fvd_from_features(real, det.features(moving_square_clips(12, seed=1)))
    bright = (moving_square_clips(12, seed=1).int() + 25).clamp(max=255).to(torch.uint8)
    assert fvd_from_features(real, det.features(bright)) > near + 1e-3


def test_fvd_sees_frames_shuffled_in_time_with_a_temporal_detector():
    real = moving_square_clips(16, seed=0)
    ordered = moving_square_clips(16, seed=1)
    order = torch.from_numpy(np.random.default_rng(2).permutation(ordered.shape[1]))
    shuffled = ordered[:, order]

    def fvd(detector, fake):
        return fvd_from_features(detector.features(real), detector.features(fake))

    assert fvd(FrameDifferenceDetector(), shuffled) > 5 * fvd(FrameDifferenceDetector(), ordered)
    # the time-blind detector cannot tell them apart: same frames, same per-clip colour statistics
    colour = MeanColourDetector()
    assert fvd_from_features(colour.features(ordered), colour.features(shuffled)) == pytest.approx(0.0, abs=1e-9)


# --- I3D: preprocessing and the hash-pinned loader ----------------------------------------------------------------

def test_uniform_frame_indices_cover_the_clip():
    assert uniform_frame_indices(9, 16).tolist()[0] == 0 and uniform_frame_indices(9, 16).tolist()[-1] == 8
    assert uniform_frame_indices(81, 16).tolist() == sorted(set(uniform_frame_indices(81, 16).tolist()))
    assert uniform_frame_indices(16, 16).tolist() == list(range(16))


def test_preprocess_for_i3d_layout_and_range():
    videos = torch.zeros(2, 17, 20, 30, 3, dtype=torch.uint8)
    videos[..., 0] = 255  # pure red
    x = preprocess_for_i3d(videos)
    assert x.shape == (2, 3, 16, 224, 224) and x.dtype == torch.float32
    assert torch.allclose(x[:, 0], torch.ones(())) and torch.allclose(x[:, 1:], -torch.ones(()))


def test_i3d_reads_the_first_16_consecutive_frames():
    """FVD16: frames 0..15 at the clip's own rate; a uniform resample of 17 frames would drop frame 8 instead."""
    videos = torch.arange(17, dtype=torch.uint8).mul(15).view(1, 17, 1, 1, 1).expand(1, 17, 4, 4, 3).contiguous()
    x = preprocess_for_i3d(videos)
    levels = ((x[0, 0, :, 0, 0] + 1) * 255 / 2).round().long() // 15
    assert levels.tolist() == list(range(16))
    with pytest.raises(ValueError, match="16 consecutive frames; these clips have 9"):
        preprocess_for_i3d(torch.zeros(1, 9, 4, 4, 3, dtype=torch.uint8))


class TinyI3D(torch.nn.Module):
    """Stands in for i3d_torchscript.pt: same call signature, refuses the wrong flags or input layout."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 400)

    def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True,
                return_features: bool = False) -> torch.Tensor:
        if rescale or resize or not return_features:
            raise RuntimeError("called with the wrong detector flags")
        if x.shape[1] != 3 or x.shape[2] != 16 or x.shape[3] != 224 or x.shape[4] != 224:
            raise RuntimeError("expected [B, 3, 16, 224, 224]")
        if x.min() < -1.0 or x.max() > 1.0:
            raise RuntimeError("expected values in [-1, 1]")
        return self.proj(x.mean(dim=(2, 3, 4)))


@pytest.fixture(scope="module")
def tiny_i3d_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("i3d") / "i3d_torchscript.pt"
    torch.jit.script(TinyI3D()).save(str(path))
    return path


def test_i3d_refuses_a_file_whose_hash_does_not_match(tiny_i3d_file):
    actual = sha256_of_file(tiny_i3d_file)
    with pytest.raises(ValueError) as caught:
        I3DDetector.from_file(tiny_i3d_file)  # the pinned hash: this tiny file is not the real detector
    message = str(caught.value)
    assert str(tiny_i3d_file) in message and PINNED_I3D_SHA256 in message and actual in message
    with pytest.raises(ValueError, match="0" * 64):
        I3DDetector.from_file(tiny_i3d_file, sha256="0" * 64)


def test_i3d_refuses_without_a_pinned_hash(tiny_i3d_file):
    with pytest.raises(ValueError, match="sha256="):
        I3DDetector.from_file(tiny_i3d_file, sha256=None)


def test_i3d_loads_with_the_right_hash_and_runs_with_reference_kwargs(tiny_i3d_file):
    detector = I3DDetector.from_file(tiny_i3d_file, sha256=sha256_of_file(tiny_i3d_file).upper())
    assert isinstance(detector, VideoDetector)
    assert detector.name.startswith("i3d-sha256:") and detector.name != "i3d"  # not the standard name
    assert I3D_KWARGS == {"rescale": False, "resize": False, "return_features": True}
    feats = detector.features(moving_square_clips(2, seed=0, frames=17))
    assert feats.shape == (2, 400) and torch.isfinite(feats).all()
    assert detector.metric_name("fvd", 17) == f"fvd16[{detector.name}]"
    assert detector.metric_name("kvd", 81) == f"kvd16[{detector.name}]"
    assert "first 16 consecutive frames" in detector.protocol(81)
    with pytest.raises(ValueError, match="at least 16 frames"):
        detector.metric_name("fvd", 9)


def test_domain_detector_names_its_frame_protocol():
    from distill.eval.domain_video_net import DomainVideoDetector, DomainVideoNet

    det = DomainVideoDetector(DomainVideoNet({"shape": 3}, width=8, feature_dim=16))
    assert det.metric_name("fvd", 17) == "fvd[domain-video-net,17f]"
    assert det.metric_name("kvd", 33) == "kvd[domain-video-net,33to17f]"  # resampled: a different name
    assert "non-standard" in det.protocol(33) and "all 17 frames" in det.protocol(17)
