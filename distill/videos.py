"""Real clips for training: a folder of video files with captions, or a saved `datasets` folder with a video
column, brought to the teacher's clip size (first `frames` frames, centre crop to the aspect ratio, resize).

A video folder follows the `datasets` "videofolder" layout: video files next to a `metadata.jsonl` whose lines
name each file and its caption, e.g. {"file_name": "clips/0001.mp4", "prompt": "a red fox trots through snow"}.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from distill.core.config import ConfigError

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")


def fit_clip(video: np.ndarray, frames: int, height: int, width: int, origin: str) -> np.ndarray:
    """uint8 [T, H, W, 3] → the first `frames` frames, centre-cropped to height:width and resized (antialiased)."""
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ConfigError(f"{origin}: expected RGB frames [T, H, W, 3], got shape {tuple(video.shape)}")
    if video.shape[0] < frames:
        raise ConfigError(f"{origin}: has {video.shape[0]} frames, the teacher's clips need {frames}")
    x = torch.from_numpy(np.ascontiguousarray(video[:frames])).permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    scale = max(height / h, width / w)
    crop_h, crop_w = round(height / scale), round(width / scale)
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    x = x[..., top:top + crop_h, left:left + crop_w]
    x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


class VideoSource:
    """Captions up front; clips read one by one on demand (only when their latents are not cached yet)."""

    def __init__(self, source: str, column: str, frames: int, height: int, width: int):
        self.source, self.size = source, (frames, height, width)
        path = Path(source)
        meta = path / "metadata.jsonl"
        if meta.is_file():
            rows = [json.loads(line) for line in meta.read_text().splitlines() if line.strip()]
            for i, row in enumerate(rows):
                if "file_name" not in row or column not in row:
                    raise ConfigError(f"{meta}: line {i + 1} needs 'file_name' and {column!r} (data.prompt_column)")
                if not (path / row["file_name"]).is_file():
                    raise ConfigError(f"{meta}: line {i + 1}: video {row['file_name']!r} does not exist")
            self.prompts = [str(r[column]).strip() for r in rows]
            self._files = [path / r["file_name"] for r in rows]
            self._dataset = None
        else:
            import datasets

            try:
                ds = datasets.load_from_disk(str(path))
            except FileNotFoundError:
                raise ConfigError(f"data.source: {source!r} is neither a video folder (no metadata.jsonl) nor a saved "
                                  f"datasets folder") from None
            if isinstance(ds, datasets.DatasetDict):
                ds = ds["train"]
            missing = [c for c in (column, "video") if c not in ds.column_names]
            if missing:
                raise ConfigError(f"data.source: {source!r} has no column(s) {missing}; it has {ds.column_names}")
            self._dataset = ds.with_format("numpy")
            self.prompts = [str(p).strip() for p in ds[column]]
            self._files = None
        if not self.prompts:
            raise ConfigError(f"data.source: {source!r} holds no clips")

    def __len__(self) -> int:
        return len(self.prompts)

    def clip(self, i: int) -> np.ndarray:
        if self._files is not None:
            import imageio.v3 as iio

            origin = str(self._files[i])
            video = np.asarray(iio.imread(self._files[i], index=None))
        else:
            origin = f"{self.source}[{i}]"
            video = np.asarray(self._dataset[i]["video"])
        return fit_clip(video.astype(np.uint8), *self.size, origin)
