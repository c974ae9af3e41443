"""Writing clips: mp4 (H.264 via imageio-ffmpeg), gif, and frame-grid png."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageDraw

VIDEO_SUFFIXES = (".mp4", ".gif", ".png")


def write_mp4(path: Path, video: np.ndarray, fps: int) -> None:
    import imageio

    with imageio.get_writer(path, fps=fps, codec="libx264", quality=9, macro_block_size=1,
                            ffmpeg_log_level="error", pixelformat="yuv444p") as writer:
        for frame in video:
            writer.append_data(frame)


def write_gif(path: Path | BinaryIO, video: np.ndarray, fps: int) -> None:
    frames = [Image.fromarray(f) for f in video]
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)


def frame_grid(videos: list[np.ndarray], n_frames: int = 5, labels: list[str] | None = None,
               scale: int = 1) -> np.ndarray:
    """Rows of clips, `n_frames` evenly spaced frames each; an optional label above each row."""
    rows = []
    for i, video in enumerate(videos):
        idx = np.linspace(0, len(video) - 1, n_frames).round().astype(int)
        row = np.concatenate([np.pad(video[j], ((2, 2), (2, 2), (0, 0)), constant_values=255) for j in idx], axis=1)
        if scale > 1:
            row = row.repeat(scale, 0).repeat(scale, 1)
        if labels:
            band = Image.new("RGB", (row.shape[1], 14), "white")
            ImageDraw.Draw(band).text((3, 1), labels[i], fill=(0, 0, 0))
            row = np.concatenate([np.asarray(band), row], axis=0)
        rows.append(row)
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return np.concatenate(rows, axis=0)


def write_clip(path: str | Path, video: np.ndarray, fps: int = 16) -> list[Path]:
    """Write one uint8 clip [T, H, W, 3] as mp4, gif or png (a frame grid); returns the paths written."""
    path = Path(path)
    if path.suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"output {str(path)!r}: unknown suffix {path.suffix!r}; one of {list(VIDEO_SUFFIXES)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    video = np.ascontiguousarray(video)
    if path.suffix == ".mp4":
        write_mp4(path, video, fps)
    elif path.suffix == ".gif":
        write_gif(path, video, fps)
    else:
        Image.fromarray(frame_grid([video], n_frames=min(len(video), 9))).save(path)
    return [path]
