"""JEDi, the JEPA Embedding Distance (Luo et al., "Beyond FVD: Enhanced Evaluation Metrics for Video Generation
Quality", ICLR 2025, arXiv:2410.05203): an MMD with a polynomial kernel between V-JEPA features of two clip sets.

The paper finds I3D's feature space non-Gaussian and blind to temporal distortions, and FVD in need of thousands of
clips; JEDi reached its steady value with about 16% of FVD's samples and agreed better with human ratings. Its code
(github.com/oooolga/JEDi, `videojedi/mmd_polynomial.py` and `JEDiMetric.compute_metric`) computes

    JEDi = 100 · [ mean_ij k(x_i, x_j) + mean_ij k(y_i, y_j) − 2 mean_ij k(x_i, y_j) ],   k(a, b) = (a·b / d)²

(scikit-learn's polynomial kernel with degree 2, gamma 1/d, coef0 0), the biased V-statistic: its i = j terms add
(E k(x, x) − E k(x, x')) / n per set, a bias that grows with each set's own spread. That is FVD's flaw again at
small n: a student that lost diversity gets less bias and can rank ahead of a better one. The eval therefore reports
the same kernel and scale with the unbiased U-statistic (KID's estimator, as eval/kvd.py; rows matched by prompt and
seed drop their paired cross terms, so identical sets give exactly 0); `jedi(..., unbiased=False)` is the paper's
number, which agrees with it to O(1/n). The U-statistic is eval/kvd.py's `kvd()` called with this kernel's degree
and coef.

Features: a V-JEPA 2 model (Assran et al. 2025) loaded by `transformers` from a local folder (config.json and
safetensors weights; never a hub id, never remote code, never a pickle). A `VJEPA2Model` folder (the pretrained
encoder, e.g. facebook/vjepa2-vitl-fpc64-256) gives the mean of its last-layer tokens, as JEDi's code does for an
encoder without a probe; a `VJEPA2ForVideoClassification` folder (e.g. facebook/vjepa2-vitl-fpc16-256-ssv2) gives
its attentive pooler's output, as JEDi's default does with V-JEPA's SSv2 probe. Frames: the first `frames`
consecutive frames of each clip, each resized and centre-cropped as V-JEPA 2's own video processor does
(`preprocess_for_vjepa2`).

Names. The paper's backbone is V-JEPA 1 ViT-H/16 with its SSv2 probe, which `transformers` does not load, so no
score here is the paper's JEDi under another backbone's name: the backbone name says the family, the width and
depth, patch and crop size, the pooling and the sha256 of the weights (for one safetensors file that is the hash the
hub shows for it), e.g. `jedi[vjepa2-vitl16-256px-mean-sha256:0123456789ab,16f]`. A tiny or retrained network
can never share a real checkpoint's name.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from distill.core.config import ConfigError
from distill.core.hashing import sha256_of_file
from distill.core.video import check_videos
from distill.eval.kvd import kvd, polynomial_kernel

DEGREE, COEF, SCALE = 2, 0.0, 100.0  # JEDiMetric.compute_metric: mmd_poly(degree=2, coef0=0) * 100
DEFAULT_FRAMES = 16
# V-JEPA 2's video processor (transformers VJEPA2VideoProcessor): ImageNet statistics, shortest edge to crop·256/224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VIT_SIZES = {(1024, 24): "vitl", (1280, 32): "vith", (1408, 40): "vitg"}  # (hidden, layers) of V-JEPA 2's ViTs
HUB_EXAMPLE = "facebook/vjepa2-vitl-fpc64-256"


# --- the distance -------------------------------------------------------------------------------------------------

def _as_features(x, what: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 2:
        raise ValueError(f"jedi: {what} must be a feature array [N >= 2, D], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"jedi: {what} has NaN or infinite entries")
    return arr


def jedi(x, y, matched: bool = False, unbiased: bool = True) -> float:
    """100 · MMD² of feature sets x [m, d] and y [n, d] under k(a, b) = (a·b / d)² (module docstring).

    `unbiased=True`: the U-statistic (no i = j terms), whose expectation is the population value at any n;
    `matched=True` (m == n, row i of both from the same prompt and seed) also drops the cross pairs k(x_i, y_i).
    `unbiased=False`: JEDi's published V-statistic, every term included (`matched` does not apply)."""
    x, y = _as_features(x, "x"), _as_features(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"jedi: x and y have different feature dimensions, {x.shape[1]} and {y.shape[1]}")
    if unbiased:
        return SCALE * kvd(x, y, matched=matched, degree=DEGREE, coef=COEF, what="jedi")
    k_xx, k_yy, k_xy = (polynomial_kernel(a, b, degree=DEGREE, coef=COEF) for a, b in ((x, x), (y, y), (x, y)))
    return float(SCALE * (k_xx.mean() + k_yy.mean() - 2.0 * k_xy.mean()))


# --- the feature network ------------------------------------------------------------------------------------------

def preprocess_for_vjepa2(videos: torch.Tensor, frames: int, crop: int) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] -> float32 [B, frames, 3, crop, crop], normalised, on the videos' device.

    Time: the first `frames` consecutive frames (the clip's own frame rate, as FVD16's window). Space: as
    `VJEPA2VideoProcessor`: the shortest edge resized to int(crop · 256 / 224) (bilinear, antialiased), a centre
    crop of crop × crop, then ImageNet mean and std. A clip shorter than `frames` is refused, not padded."""
    check_videos(videos)
    b, t, h, w, _ = videos.shape
    if t < frames:
        raise ValueError(f"V-JEPA 2 features read {frames} consecutive frames; these clips have {t}")
    short = int(crop * 256 / 224)
    size = (short, max(short, round(w * short / h))) if h <= w else (max(short, round(h * short / w)), short)
    x = videos[:, :frames].reshape(b * frames, h, w, 3).permute(0, 3, 1, 2).float()
    # resized on the 0..255 scale and rounded, as the processor resizes uint8 frames before rescaling them
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).round().clamp(0, 255) / 255.0
    top, left = (size[0] - crop) // 2, (size[1] - crop) // 2
    x = x[:, :, top:top + crop, left:left + crop]
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).reshape(b, frames, 3, crop, crop).contiguous()


def weights_sha256(files: list[Path]) -> str:
    """sha256 of the one weights file (what the hub lists for it), or of the sorted `name sha256` lines of shards."""
    if len(files) == 1:
        return sha256_of_file(files[0])
    lines = "".join(f"{p.name} {sha256_of_file(p)}\n" for p in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


def backbone_name(config, pooling: str, sha256: str) -> str:
    """`vjepa2-vitl16-256px-mean-sha256:0123456789ab`: what the features come from, down to the weights."""
    size = VIT_SIZES.get((config.hidden_size, config.num_hidden_layers),
                         f"vit-d{config.hidden_size}x{config.num_hidden_layers}-p")
    return f"vjepa2-{size}{config.patch_size}-{config.crop_size}px-{pooling}-sha256:{sha256[:12]}"


def _refuse(folder: Path, problem: str) -> ConfigError:
    return ConfigError(f"V-JEPA 2 folder {str(folder)!r} {problem}; download one beforehand (for example "
                       f"`huggingface-cli download {HUB_EXAMPLE} --local-dir DIR`) and give its path")


def check_folder(path: str | Path) -> tuple[Path, list[Path], dict]:
    """(folder, its safetensors files, its config) of a V-JEPA 2 folder, from the files alone (no weights read), or
    ConfigError naming the folder: absent, no config.json, no safetensors weights, or not a V-JEPA 2 model."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise _refuse(folder, "does not exist")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise _refuse(folder, "has no config.json")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        found = f" (it holds {', '.join(pickles)}: pickle weights are never loaded)" if pickles else ""
        raise _refuse(folder, f"has no safetensors weights{found}")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as err:
        raise _refuse(folder, f"has an unreadable config.json ({err})") from None
    if not isinstance(config, dict) or config.get("model_type") != "vjepa2":
        kind = config.get("model_type") if isinstance(config, dict) else None
        raise _refuse(folder, f"holds a {kind!r} model, not V-JEPA 2 (config.json model_type 'vjepa2')")
    return folder, weights, config


class VJEPA2Features(torch.nn.Module):
    """V-JEPA 2 as a `distill.eval.fvd.VideoDetector`: per-clip features of uint8 clips, a name for reports."""

    def __init__(self, model: torch.nn.Module, pooling: str, name: str, frames: int = DEFAULT_FRAMES,
                 batch_size: int = 4):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.pooling, self.name, self.num_frames, self.batch_size = pooling, name, frames, batch_size
        config = model.config
        self.crop = config.crop_size
        self.feature_dim = config.hidden_size
        if frames < config.tubelet_size or frames % config.tubelet_size:
            raise ValueError(f"V-JEPA 2 reads frames in tubelets of {config.tubelet_size}; frames={frames} is not a "
                             f"positive multiple of it")

    @classmethod
    def from_folder(cls, path: str | Path, frames: int = DEFAULT_FRAMES, device: str | torch.device = "cpu",
                    batch_size: int = 4) -> "VJEPA2Features":
        """Load a V-JEPA 2 folder with `transformers`, from local files only. Refused (ConfigError, naming the
        folder) when the folder, its config or its safetensors weights are absent, when it is not a V-JEPA 2 model,
        or when its weights leave part of the network that makes the features uninitialised."""
        from transformers import VJEPA2ForVideoClassification, VJEPA2Model

        folder, weights, config = check_folder(path)
        probe = "VJEPA2ForVideoClassification" in (config.get("architectures") or [])
        model_cls, pooling = (VJEPA2ForVideoClassification, "probe") if probe else (VJEPA2Model, "mean")
        try:
            model, info = model_cls.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                                    dtype=torch.float32, output_loading_info=True)
        except (OSError, ValueError, RuntimeError) as err:
            raise _refuse(folder, f"could not be loaded ({str(err).splitlines()[0]})") from None
        # the predictor (pretraining only) and the classifier's last layer do not make the features
        missing = [k for k in info["missing_keys"] if ".predictor." not in f".{k}" and not k.startswith("classifier.")]
        if missing:
            raise _refuse(folder, f"lacks weights for {len(missing)} tensors of the feature network "
                                  f"({', '.join(sorted(missing)[:3])}, ...)")
        name = backbone_name(model.config, pooling, weights_sha256(weights))
        return cls(model.to(device), pooling, name, frames=frames, batch_size=batch_size)

    def metric_name(self, statistic: str, frames: int) -> str:
        """`jedi[vjepa2-vitl16-256px-mean-sha256:0123456789ab,16f]`: the backbone and the frame window."""
        self.check_frames(frames)
        return f"{statistic}[{self.name},{self.num_frames}f]"

    def protocol(self, frames: int) -> str:
        pool = "mean of the last layer's tokens" if self.pooling == "mean" else "the attentive probe's pooled token"
        return (f"the first {self.num_frames} consecutive frames of each clip (of {frames}); shortest edge resized "
                f"to {int(self.crop * 256 / 224)}, centre crop {self.crop}x{self.crop}, ImageNet mean/std (V-JEPA 2's "
                f"video processor); {self.feature_dim}-d features: {pool}")

    def check_frames(self, frames: int) -> None:
        if frames < self.num_frames:
            raise ValueError(f"V-JEPA 2 features ({self.name}) read {self.num_frames} consecutive frames; the suite "
                             f"has frames={frames}")

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def features(self, videos: torch.Tensor) -> torch.Tensor:
        check_videos(videos)
        device, out = self._device(), []
        for start in range(0, videos.shape[0], self.batch_size):
            pixels = preprocess_for_vjepa2(videos[start:start + self.batch_size].to(device), self.num_frames,
                                           self.crop)
            if self.pooling == "probe":
                tokens = self.model.vjepa2(pixel_values_videos=pixels, skip_predictor=True).last_hidden_state
                feats = self.model.pooler(tokens)
            else:
                feats = self.model(pixel_values_videos=pixels, skip_predictor=True).last_hidden_state.mean(dim=1)
            out.append(feats.float().cpu())
        return torch.cat(out)
