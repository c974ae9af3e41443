"""CLIP prompt adherence, `clipsim[<backend>]`: 100·cos(image, text) per sampled frame, averaged per clip.

What is computed, exactly: per clip, `frames` frames are encoded by the CLIP image tower and the caption by its
text tower; both embeddings are L2-normalised; the clip's value is the MEAN over those frames of 100·cosine. It is
not torchmetrics' `CLIPScore`, which is max(100·cos, 0) per image-caption pair: no clamp at 0 here (a clamp
biases a mean upward and hides how far below zero a bad sample goes), and the mean is over frames of one clip.
Hence its own name, `clipsim` (the CLIPSIM of the text-to-video literature: mean frame-caption CLIP similarity),
on the ×100 scale. A cosine has no meaningful zero, so ratios of two clipsims depend on the backend; compare
models by the PAIRED DIFFERENCE in points on the same prompts and seeds (`paired_diff_vs_teacher`).

Backends:
- a standard open_clip model by name and pretrained tag (`ViT-B-32` with `laion2b_s34b_b79k` by default), the
  weights from open_clip's cache or a local file; named `clipsim[ViT-B-32/laion2b_s34b_b79k]`;
- the toy world's domain CLIP (`eval/builtin/domain-clip`, an open_clip `CLIP` trained by
  `scripts/train_domain_clip.py`), loaded through open_clip's `local-dir:` schema; named `clipsim[domain-clip]`.

Frames: `frames` sampled uniformly over the clip. The domain CLIP reads *motion-history frames*: frame t with
fading copies of the few frames before it behind it, so that a single image shows which way and how fast the shape
moves (the toy captions name a direction and a speed, which no single raw frame can show); its frames are spread
over those with a full trail behind them. Standard backends read raw frames. The frame mode is part of a backend's stored config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from distill.eval.fvd import uniform_frame_indices

DOMAIN_CLIP_DIR = Path(__file__).resolve().parent / "builtin" / "domain-clip"
STANDARD_MODEL, STANDARD_PRETRAINED = "ViT-B-32", "laion2b_s34b_b79k"
TRAIL = 4  # motion-history frames: how many earlier frames leave a trail
TRAIL_STRIDE = 2


def motion_history(video: torch.Tensor, index: int) -> torch.Tensor:
    """Frame `index` of a float video [T, H, W, 3] with a trail of earlier frames (every TRAIL_STRIDE-th frame,
    TRAIL of them, the older the fainter) composited under it: where the current frame matches its own background
    the trail shows through. The trail's side gives the direction of travel and its length the speed."""
    frame = video[index]
    out = frame.clone()
    background = frame.reshape(-1, 3).median(dim=0).values
    for k in range(TRAIL, 0, -1):
        past = video[max(index - k * TRAIL_STRIDE, 0)]
        alpha = 0.5 - 0.05 * k
        moved = (past - background).abs().sum(-1, keepdim=True) > 0.25
        out = torch.where(moved, (1 - alpha) * background + alpha * past, out)
    current = (frame - background).abs().sum(-1, keepdim=True) > 0.25
    return torch.where(current, frame, out)


def motion_history_indices(n_frames: int, k: int) -> torch.Tensor:
    """k frames spread uniformly over those that have a full trail behind them (all frames of a clip too short
    for one): a frame near the start has no history, so it would show neither direction nor speed."""
    first = TRAIL * TRAIL_STRIDE if n_frames > TRAIL * TRAIL_STRIDE else 0
    return first + uniform_frame_indices(n_frames - first, min(k, n_frames - first))


@dataclass
class ClipBackend:
    """An open_clip model, its preprocessing and tokenizer, and how it reads frames."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    image_size: int
    mean: tuple
    std: tuple
    frame_mode: str = "raw"  # "raw" | "motion_history"

    @classmethod
    def open_clip(cls, model_name: str = STANDARD_MODEL, pretrained: str = STANDARD_PRETRAINED,
                  device: str = "cpu", cache_dir: str | None = None) -> "ClipBackend":
        """A standard open_clip model; `pretrained` is a tag (from open_clip's cache, or downloaded when online)
        or a local weights file."""
        import open_clip

        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained,
                                                                     device=device, cache_dir=cache_dir)
        tag = Path(pretrained).stem if Path(pretrained).is_file() else pretrained
        return cls._wrap(f"{model_name}/{tag}", model, open_clip.get_tokenizer(model_name), "raw")

    @classmethod
    def domain(cls, folder: str | Path = DOMAIN_CLIP_DIR, device: str = "cpu") -> "ClipBackend":
        import open_clip

        folder = Path(folder)
        config_path = folder / "open_clip_config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"domain CLIP folder {str(folder)!r} has no open_clip_config.json; "
                                    f"make it with scripts/train_domain_clip.py")
        model = open_clip.create_model(f"local-dir:{folder}", device=device)
        frame_mode = json.loads(config_path.read_text()).get("distill", {}).get("frame_mode", "raw")
        return cls._wrap("domain-clip", model, open_clip.get_tokenizer(f"local-dir:{folder}"), frame_mode)

    @classmethod
    def _wrap(cls, name, model, tokenizer, frame_mode) -> "ClipBackend":
        model.eval().requires_grad_(False)
        visual = model.visual
        size = visual.image_size[0] if isinstance(visual.image_size, (tuple, list)) else visual.image_size
        mean = getattr(visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's
        std = getattr(visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)
        return cls(name, model, tokenizer, int(size), tuple(mean), tuple(std), frame_mode)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prepare_frames(self, video: torch.Tensor, k: int) -> torch.Tensor:
        """uint8 [T, H, W, 3] -> k preprocessed images [k, 3, S, S] (resize shorter side, centre crop,
        normalise: CLIP's eval preprocessing, done on tensors)."""
        v = video.float() / 255.0
        if self.frame_mode == "motion_history":
            frames = torch.stack([motion_history(v, int(i)) for i in motion_history_indices(len(v), k)])
        else:
            frames = v[uniform_frame_indices(len(v), min(k, len(v)))]
        return self._preprocess(frames)

    def _preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """float frames [N, H, W, 3] in [0, 1] -> [N, 3, S, S]: resize the shorter side, centre crop, normalise."""
        x = frames.permute(0, 3, 1, 2)
        h, w = x.shape[-2:]
        scale = self.image_size / min(h, w)
        x = F.interpolate(x, size=(max(self.image_size, round(h * scale)), max(self.image_size, round(w * scale))),
                          mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (x.shape[-2] - self.image_size) // 2, (x.shape[-1] - self.image_size) // 2
        x = x[..., top:top + self.image_size, left:left + self.image_size]
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def image_features(self, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """L2-normalised image embeddings [N, D] (float64) of uint8 images [N, H, W, 3], each read as a RAW image
        whatever the backend's frame mode (a motion-history frame is about a clip, not one image): the image-level
        features of the first-frame and subject-consistency metrics."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {tuple(images.shape)}")
        out = []
        for start in range(0, len(images), batch_size):
            x = self._preprocess(images[start:start + batch_size].float() / 255.0).to(self.device)
            out.append(F.normalize(self.model.encode_image(x).float(), dim=-1))
        return torch.cat(out).double().cpu()

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    @torch.no_grad()
    def clip_scores(self, videos: torch.Tensor, texts: list[str], frames: int = 8) -> torch.Tensor:
        """Per-clip score [B]: mean over `frames` sampled frames of 100·cos(image, caption)."""
        if len(videos) != len(texts):
            raise ValueError(f"{len(videos)} clips but {len(texts)} captions")
        text = self.text_features(list(texts))
        scores = []
        for video, t in zip(videos, text):
            images = self.prepare_frames(video, frames).to(self.device)
            img = F.normalize(self.model.encode_image(images).float(), dim=-1)
            scores.append(100.0 * (img @ t).mean())
        return torch.stack(scores).double().cpu()

    @torch.no_grad()
    def score_matrix(self, videos: torch.Tensor, texts: list[str], frames: int = 8) -> torch.Tensor:
        """[B, len(texts)] clip-vs-caption scores (for retrieval checks)."""
        text = self.text_features(list(texts))
        rows = []
        for video in videos:
            img = F.normalize(self.model.encode_image(self.prepare_frames(video, frames).to(self.device)).float(), -1)
            rows.append(100.0 * (img @ text.T).mean(0))
        return torch.stack(rows).double().cpu()
