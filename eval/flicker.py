"""Temporal flicker: three per-clip measures of frame-to-frame instability, and VBench's static filter.

- `vbench_flicker`: VBench's temporal-flickering score. HIGHER is steadier (1.0 = no change at all). It reads
  any change as flicker, motion included, so VBench scores it only on STATIC clips: its temporal-flickering
  prompts describe still scenes, and a static filter drops the clips that move anyway. `static_clips` is that
  filter here; the eval reports `flicker.vbench` on the clips of static prompts that pass it, and nothing else.
- `warp_error`: flow-compensated warping error (Lai et al., ECCV 2018). LOWER is steadier. Unlike the raw frame
  difference it does not punish motion, only change that motion does not explain: the flicker evidence for
  moving clips, with `hf_energy`.
- `hf_energy`: share of temporal spectral energy at high frequencies. LOWER is steadier.

Each function takes uint8 videos [B, T, H, W, 3] (T >= 2; 3 for `hf_energy`'s default linear detrend) and
returns float64 [B], one value per clip. The eval reaches them through its metric registry (eval/metrics.py).
"""

from __future__ import annotations

import functools
from pathlib import Path
from urllib.parse import urlparse

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from distill.core.video import check_videos


# --- (a) VBench temporal flickering -------------------------------------------------------------------------------

def vbench_flicker(videos: torch.Tensor) -> torch.Tensor:
    """(255 − mean |f(t+1) − f(t)|) / 255 per clip, the mean over all pixels, channels and consecutive pairs on
    the uint8 scale, as VBench's `temporal_flickering` (which reads all frames at full size). In [0, 1]; higher is
    steadier, 1.0 for a static clip. It also drops with genuine motion: VBench applies it to near-static clips."""
    check_videos(videos, min_frames=2, what="flicker")
    scores = []
    for clip in videos:  # one clip at a time: the int16 differences of an 81x480x832 clip are ~200 MB
        diff = (clip[1:].to(torch.int16) - clip[:-1].to(torch.int16)).abs()
        mean_abs_diff = diff.sum(dtype=torch.float64) / diff.numel()
        scores.append((255.0 - mean_abs_diff) / 255.0)
    return torch.stack(scores).cpu()


# --- (b) flow-compensated warping error ---------------------------------------------------------------------------

# torchvision's RAFT-small weights, used only if already in torch hub's cache: this module never downloads.
RAFT_WEIGHTS_URL = "https://download.pytorch.org/models/raft_small_C_T_V2-01064c6d.pth"
RAFT_MIN_SIDE = 128  # RAFT's 1/8-resolution correlation pyramid needs room; smaller frames are upsampled
RAFT_CHUNK = 8  # frame pairs per RAFT call: its correlation volume grows with (H·W)²
# Farneback parameters: OpenCV's documented example values (pyramid scale, levels, window, iterations, poly_n,
# poly_sigma, flags).
FARNEBACK_PARAMS = (0.5, 3, 15, 3, 5, 1.2, 0)


def raft_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(RAFT_WEIGHTS_URL).path).name


def resolve_flow_backend(flow: str) -> str:
    """Check that `flow` can run here and return it. There is no "auto": a metric's name carries its flow backend,
    and a name that changed with what happens to be cached would make the same suite score differently (and a
    gate refuse) on another machine."""
    if flow == "raft_small":
        if not raft_weights_path().is_file():
            raise FileNotFoundError(f"flow='raft_small' needs its weights at {raft_weights_path()} (not "
                                    f"downloaded here: fetch {RAFT_WEIGHTS_URL} there, or use flow='farneback')")
        return flow
    if flow == "farneback":
        return flow
    raise ValueError(f"flow must be 'raft_small' or 'farneback', got {flow!r}")


@functools.lru_cache(maxsize=2)
def _load_raft(weights_path: str) -> torch.nn.Module:
    from torchvision.models.optical_flow import raft_small

    model = raft_small(weights=None, progress=False)
    model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return model.eval().requires_grad_(False)


def _round_up8(x: float) -> int:
    return int(np.ceil(x / 8.0)) * 8


@torch.no_grad()
def _raft_flow(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Flow first->second for float frames [N, 3, H, W] in [0, 1]: [N, 2, H, W] in pixels (x, y)."""
    model = _load_raft(str(raft_weights_path())).to(first.device)
    n, _, h, w = first.shape
    scale = max(1.0, RAFT_MIN_SIDE / min(h, w))
    size = (_round_up8(h * scale), _round_up8(w * scale))
    flows = []
    for start in range(0, n, RAFT_CHUNK):
        pair = [F.interpolate(x[start:start + RAFT_CHUNK], size=size, mode="bilinear", align_corners=False)
                for x in (first, second)]
        flow = model(pair[0] * 2 - 1, pair[1] * 2 - 1)[-1]  # RAFT reads [-1, 1]; the last refinement is best
        flow = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False)
        flows.append(flow * torch.tensor([w / size[1], h / size[0]], device=flow.device).view(1, 2, 1, 1))
    return torch.cat(flows)


def _farneback_flow(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Flow first->second for float frames [N, 3, H, W] in [0, 1]: [N, 2, H, W] in pixels (x, y)."""
    def gray(frames: torch.Tensor) -> np.ndarray:
        rgb = (frames.permute(0, 2, 3, 1) * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        return np.stack([cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in rgb])

    a, b = gray(first), gray(second)
    flows = [cv2.calcOpticalFlowFarneback(a[i], b[i], None, *FARNEBACK_PARAMS) for i in range(len(a))]
    return torch.from_numpy(np.stack(flows)).permute(0, 3, 1, 2).float().to(first.device)


FLOW_BACKENDS = {"raft_small": _raft_flow, "farneback": _farneback_flow}


def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample `image` [N, C, H, W] at x + flow(x): with flow t->t+1 this brings frame t+1 back onto frame t.
    Also returns where the sample point falls inside the image [N, H, W] (outside, nothing was seen)."""
    h, w = image.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, device=image.device, dtype=image.dtype),
                            torch.arange(w, device=image.device, dtype=image.dtype), indexing="ij")
    x = xs + flow[:, 0]
    y = ys + flow[:, 1]
    grid = torch.stack([2 * x / max(w - 1, 1) - 1, 2 * y / max(h - 1, 1) - 1], dim=-1)
    warped = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)
    inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    return warped, inside


def consistent_flow_mask(flow_fw: torch.Tensor, flow_bw: torch.Tensor) -> torch.Tensor:
    """Non-occluded pixels by forward-backward consistency (Ruder et al. 2016, as used by Lai et al.):
    |F_fw + F̂_bw|² < 0.01 (|F_fw|² + |F̂_bw|²) + 0.5, with F̂_bw the backward flow warped onto frame t."""
    flow_bw_warped, inside = backward_warp(flow_bw, flow_fw)
    mismatch = (flow_fw + flow_bw_warped).pow(2).sum(dim=1)
    magnitude = flow_fw.pow(2).sum(dim=1) + flow_bw_warped.pow(2).sum(dim=1)
    return (mismatch < 0.01 * magnitude + 0.5) & inside


def _clip_warp_error(clip: torch.Tensor, flow_fn) -> torch.Tensor:
    frames = clip.permute(0, 3, 1, 2).float() / 255.0  # [T, 3, H, W] in [0, 1]
    current, following = frames[:-1], frames[1:]
    flow_fw, flow_bw = flow_fn(current, following), flow_fn(following, current)
    warped, _ = backward_warp(following, flow_fw)
    valid = consistent_flow_mask(flow_fw, flow_bw).unsqueeze(1).float()  # [T-1, 1, H, W]
    squared = (current - warped).pow(2).double()
    n_valid = valid.sum(dim=(1, 2, 3)).double() * 3  # channel-pixels, as Lai et al. normalise
    masked = (squared * valid).sum(dim=(1, 2, 3)) / n_valid.clamp(min=1)
    # A pair with nothing consistent (a cut, or flow failure) is scored over all pixels instead: that is flicker too.
    per_pair = torch.where(n_valid > 0, masked, squared.mean(dim=(1, 2, 3)))
    return per_pair.mean()


@torch.no_grad()
def warp_error(videos: torch.Tensor, flow: str = "farneback") -> torch.Tensor:
    """Flow-compensated warping error per clip (Lai et al. 2018): warp frame t+1 back onto frame t with the flow
    t->t+1, keep pixels whose forward and backward flows agree and land inside the frame, and average the squared
    residual over those pixels and the 3 channels, on frames scaled to [0, 1]; then average over the T−1 pairs.
    Lower is steadier. `flow`: "farneback" (OpenCV, no weights) or "raft_small" (torchvision, cached weights)."""
    check_videos(videos, min_frames=2, what="flicker")
    flow_fn = FLOW_BACKENDS[resolve_flow_backend(flow)]
    return torch.stack([_clip_warp_error(clip, flow_fn) for clip in videos]).cpu()


# --- (c) temporal high-frequency energy ---------------------------------------------------------------------------

DETRENDS = ("linear", "mean")
MIN_MEAN_SQUARE = 1e-10


def _detrended(intensity: torch.Tensor, detrend: str) -> torch.Tensor:
    """Remove each pixel's temporal mean, and with "linear" its least-squares straight line over time too."""
    residual = intensity - intensity.mean(dim=0)
    if detrend == "linear":
        t = torch.arange(intensity.shape[0], device=intensity.device, dtype=intensity.dtype)
        t = (t - t.mean()).view(-1, 1, 1)
        slope = (t * residual).sum(dim=0) / t.pow(2).sum()
        residual = residual - slope * t
    return residual


def hf_energy(videos: torch.Tensor, cutoff: float = 0.25, detrend: str = "linear") -> torch.Tensor:
    """Share of temporal spectral energy above `cutoff`·Nyquist, per clip, in [0, 1]; lower is steadier.

    Per pixel: intensity (mean of R, G, B on [0, 1]) over time, detrended, FFT along time; the one-sided power
    spectrum counts each frequency once (interior bins doubled, so the parts add up to the signal's energy).
    The clip's value is Σ_pixels E_high / Σ_pixels E_total: the per-pixel shares averaged with each pixel weighted
    by its total temporal energy, so a static pixel (no energy, an undefined share) counts for nothing instead of
    dragging the mean to 0 or 1. A perfectly static clip gives 0.

    `detrend`: "mean" removes only each pixel's temporal mean. "linear" (default) also removes its straight-line
    trend: the FFT treats the clip as periodic, so a steady drift (a fade, a slow exposure change) would otherwise
    appear as a jump at the wrap-around with energy at every frequency (~35% above 0.25·Nyquist for a ramp over
    8 frames) and read as flicker.
    """
    check_videos(videos, min_frames=3 if detrend == "linear" else 2, what="flicker")
    if not 0.0 <= cutoff < 1.0:
        raise ValueError(f"cutoff is a fraction of the Nyquist frequency in [0, 1), got {cutoff}")
    if detrend not in DETRENDS:
        raise ValueError(f"detrend must be one of {DETRENDS}, got {detrend!r}")
    t = videos.shape[1]
    freqs = torch.fft.rfftfreq(t, device=videos.device)  # cycles per frame; Nyquist = 0.5
    one_sided = torch.full_like(freqs, 2.0, dtype=torch.float64)
    one_sided[0] = 1.0
    if t % 2 == 0:
        one_sided[-1] = 1.0
    high = freqs / 0.5 > cutoff
    scores = []
    for clip in videos:  # one clip at a time: a float spectrum of an 81x480x832 clip is hundreds of MB
        intensity = clip.float().mean(dim=-1) / 255.0  # [T, H, W]
        spectrum = torch.fft.rfft(_detrended(intensity, detrend), dim=0)
        energy = spectrum.abs().pow(2).sum(dim=(1, 2), dtype=torch.float64) * one_sided  # [F]
        total = energy.sum()
        # By Parseval total = T·Σ residual², so this is the mean squared residual. Float32 round-off leaves ~1e-14
        # in a static or purely linear clip; below RMS 1e-5 (0.003 grey levels) there is no signal to split.
        mean_square = total / (t * intensity.numel())
        scores.append(energy[high].sum() / total if mean_square > MIN_MEAN_SQUARE else total.new_zeros(()))
    return torch.stack(scores).cpu()


# --- (d) the static filter VBench's temporal flickering needs -----------------------------------------------------

# VBench's rule (vbench/static_filter.py), with the suite's pinned flow backend in place of RAFT-things:
STATIC_TOP_FRACTION = 0.02  # a pair's score: the mean flow of its fastest 2% of pixels
STATIC_FLOW_PX_AT_256 = 3.0  # the threshold, in pixels per frame at a 256-pixel short side; scaled with the clip
STATIC_TOLERANCE_PER_16 = 2  # pairs allowed above it, per 16 frames (a moment of jitter is not motion)


def static_threshold(height: int, width: int) -> float:
    """VBench's per-pair threshold, px per frame at the clip's resolution: 3 px at a 256-pixel short side, scaled."""
    return STATIC_FLOW_PX_AT_256 * min(height, width) / 256.0


@torch.no_grad()
def pair_motion(videos: torch.Tensor, flow: str = "farneback") -> torch.Tensor:
    """How much each step of a clip moves, float64 [B, T-1], in pixels per frame at the clip's resolution: for
    every pair of consecutive frames, the mean optical-flow magnitude over its fastest `STATIC_TOP_FRACTION` of
    pixels (a small moving subject on a still background still counts). Flow, not frame difference: a ±3-level
    flicker and a square gliding 2 px per frame change the frames by about as much, and only the flow tells them
    apart."""
    check_videos(videos, min_frames=2, what="static filter")
    flow_fn = FLOW_BACKENDS[resolve_flow_backend(flow)]
    scores = []
    for clip in videos:
        frames = clip.permute(0, 3, 1, 2).float() / 255.0
        magnitude = flow_fn(frames[:-1], frames[1:]).pow(2).sum(dim=1).sqrt().flatten(1)  # [T-1, H*W]
        k = max(1, int(STATIC_TOP_FRACTION * magnitude.shape[1]))
        scores.append(magnitude.topk(k, dim=1).values.mean(dim=1).double())
    return torch.stack(scores).cpu()


def static_clips(videos: torch.Tensor, flow: str = "farneback",
                 max_flow_px: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """VBench's static filter: (is_static [B] bool, motion [B], the clip's fastest pair score). A clip of T frames
    is static when at most round(2 T / 16) of its pairs, the last two aside, move faster than the threshold
    (`static_threshold`, or `max_flow_px` where a suite pins one), and each of the last two stays below
    2 round(2 T / 16) times it. VBench tolerates a few fast pairs because flow on a still clip is not zero: a
    decoder's shimmer or a flicker reads as a fraction of a pixel here and there."""
    scores = pair_motion(videos, flow)
    frames, height, width = videos.shape[1:4]
    threshold = static_threshold(height, width) if max_flow_px is None else max_flow_px
    allowed = round(STATIC_TOLERANCE_PER_16 * frames / 16)
    body, tail = scores[:, :-2], scores[:, -2:]
    is_static = ((body > threshold).sum(dim=1) <= allowed) & (tail <= 2 * allowed * threshold).all(dim=1)
    return is_static, scores.max(dim=1).values
