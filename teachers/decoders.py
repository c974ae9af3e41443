"""A small distilled video decoder: latents to pixels in place of a family's VAE decode, causal in time so it streams.

It takes what `Teacher.decode` takes (a family's normalised latents [B, C, F, h, w]) and gives what it gives (uint8
video [B, T, H, W, 3]), with T = 1 + temporal·(F − 1): as causal video VAEs decode, the first latent frame becomes one
frame and every later one `temporal` frames, and frame t depends only on the latent frames up to its own. It names no
family: it is sized from the latent's channels and the family's `VideoFactors` (temporal, spatial compression).

    latents ─► causal 3-D conv + `depth` causal residual blocks        (at latent resolution: most of the compute)
            ─► 1×1×1 conv to `temporal` frames' channels, unfolded in time  (first latent frame: its last sub-frame)
            ─► log2(spatial) per-frame stages: 3×3 conv, pixel shuffle ×2, 3×3 conv   (2-D, so time stays causal)
            ─► 3×3 conv to RGB in [-1, 1]

Causal convolutions pad with zeros before the first latent frame and otherwise read the frames before; streaming
(`decode_stream`) keeps the last frames each one read and feeds latent frames one at a time, so it computes the same
numbers as `decode` (to float rounding) and gives the first frame after one latent frame's work.

A diffusers `ModelMixin`/`ConfigMixin`: `save_pretrained` writes config.json + safetensors, and
`VideoDecoder.from_pretrained(folder)` loads it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

State = dict  # a streaming decode's memory: each causal convolution's last input frames, keyed by the module


class CausalConv3d(nn.Conv3d):
    """A k×k×k convolution that reads frames ≤ t for output frame t: `k − 1` frames of left padding in time (zeros
    before the first frame, or the previous call's last input frames when streaming), `k // 2` in space."""

    def __init__(self, cin: int, cout: int, kernel: int = 3):
        super().__init__(cin, cout, kernel, padding=(0, kernel // 2, kernel // 2))
        self.history = kernel - 1

    def forward(self, x: torch.Tensor, state: State | None = None) -> torch.Tensor:
        past = None if state is None else state.get(self)
        if past is None:
            b, c, _, h, w = x.shape
            past = x.new_zeros(b, c, self.history, h, w)
        x = torch.cat([past, x], dim=2)
        if state is not None:
            state[self] = x[:, :, -self.history:]
        return super().forward(x)


class CausalResBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv1, self.conv2 = CausalConv3d(width, width), CausalConv3d(width, width)

    def forward(self, x: torch.Tensor, state: State | None = None) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x), state)), state)


class UpStage(nn.Module):
    """×2 in space, frame by frame."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.expand = nn.Conv2d(cin, cout * 4, 3, padding=1)
        self.refine = nn.Conv2d(cout, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(F.pixel_shuffle(self.expand(x), 2))
        return x + self.refine(F.silu(x))


class VideoDecoder(ModelMixin, ConfigMixin):
    """Normalised latents [B, C, F, h, w] to video; see the module docstring."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, latent_channels: int, temporal: int, spatial: int, width: int = 64, depth: int = 2,
                 min_width: int = 16):
        super().__init__()
        if spatial < 1 or spatial & (spatial - 1):
            raise ValueError(f"VideoDecoder: spatial={spatial} must be a power of 2 (its ×2 upsampling stages)")
        if temporal < 1 or latent_channels < 1 or width < 1 or depth < 0 or min_width < 1:
            raise ValueError(f"VideoDecoder: latent_channels={latent_channels}, temporal={temporal}, width={width}, "
                             f"min_width={min_width} must be >= 1 and depth={depth} >= 0")
        self.conv_in = CausalConv3d(latent_channels, width)
        self.blocks = nn.ModuleList(CausalResBlock(width) for _ in range(depth))
        self.to_time = nn.Conv3d(width, width * temporal, 1)
        widths = [width] + [max(min_width, width >> (i + 1)) for i in range(int(math.log2(spatial)))]
        self.up = nn.ModuleList(UpStage(a, b) for a, b in zip(widths, widths[1:]))
        self.conv_out = nn.Conv2d(widths[-1], 3, 3, padding=1)

    # --- shapes ---------------------------------------------------------------------------------------------------
    def frames(self, latent_frames: int) -> int:
        """Video frames from `latent_frames` latent frames (a causal video VAE's rule: 1 + temporal·(F − 1))."""
        return 1 + self.config.temporal * (latent_frames - 1)

    # --- the network ----------------------------------------------------------------------------------------------
    def forward(self, latents: torch.Tensor, state: State | None = None, first: bool = True) -> torch.Tensor:
        """Latents [B, C, F, h, w] to unclamped video [B, 3, T, H, W] (about [-1, 1]). `state` carries a stream's
        memory between calls; `first`: these latent frames start the clip (its first gives one frame)."""
        if latents.ndim != 5 or latents.shape[1] != self.config.latent_channels:
            raise ValueError(f"VideoDecoder: latents of shape {tuple(latents.shape)}; expected [B, "
                             f"{self.config.latent_channels}, F, h, w]")
        x = latents.to(self.dtype)
        x = self.conv_in(x, state)
        for block in self.blocks:
            x = block(x, state)
        x = self.to_time(F.silu(x))
        b, _, f, h, w = x.shape
        k = self.config.temporal
        x = x.view(b, -1, k, f, h, w).permute(0, 1, 3, 2, 4, 5).reshape(b, -1, f * k, h, w)
        if first:  # the clip's first latent frame stands for one frame: keep the last of its `temporal`
            x = x[:, :, k - 1:]
        t = x.shape[2]
        x = x.permute(0, 2, 1, 3, 4).reshape(b * t, -1, h, w)  # frames as a batch: the rest is 2-D
        for stage in self.up:
            x = stage(x)
        x = self.conv_out(F.silu(x))
        return x.view(b, t, 3, *x.shape[-2:]).permute(0, 2, 1, 3, 4)

    # --- the teacher's decode convention --------------------------------------------------------------------------
    @staticmethod
    def to_uint8(video: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] in [-1, 1] to uint8 [B, T, H, W, 3] on the CPU, rounded as `Teacher.decode` rounds."""
        video = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return video.permute(0, 2, 3, 4, 1).cpu()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents to uint8 video [B, T, H, W, 3], like `Teacher.decode`."""
        return self.to_uint8(self(latents.to(self.device)))

    @torch.no_grad()
    def stream(self, latents: torch.Tensor | Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Video as latent frames arrive: given latents [B, C, F, h, w] (or an iterable of [B, C, n, h, w] chunks,
        as a sampler would hand them on), yields unclamped video [B, 3, n_frames, H, W] per latent frame (1 frame
        for the first, `temporal` after): together, what `forward` gives for the whole clip."""
        chunks = latents.split(1, dim=2) if isinstance(latents, torch.Tensor) else latents
        state: State = {}
        first = True
        for chunk in chunks:
            for i in range(chunk.shape[2]):
                yield self(chunk[:, :, i:i + 1].to(self.device), state, first)
                first = False

    def decode_stream(self, latents: torch.Tensor | Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """`stream` as uint8 frames [B, n_frames, H, W, 3], the `decode` convention: the first is ready after one
        latent frame's work (time to first frame)."""
        for video in self.stream(latents):
            yield self.to_uint8(video)


def decoder_for(latent_channels: int, temporal: int, spatial: int, **sizes) -> VideoDecoder:
    """A fresh decoder for a family's latents (`Family.video_factors(folder)`: temporal, spatial; the DiT's
    `in_channels`), `sizes` its width, depth and min_width."""
    return VideoDecoder(latent_channels=latent_channels, temporal=temporal, spatial=spatial, **sizes)


def decoder_folder(path) -> Path:
    """The decoder's folder: `path` itself (config.json of a VideoDecoder) or its `decoder/` (a decoder run's
    `distill export`)."""
    path = Path(path)
    return path / "decoder" if (path / "decoder" / "config.json").is_file() else path


def check_decoder(path, latent_channels: int, temporal: int, spatial: int, what: str = "--decoder") -> Path:
    """Refuse (ValueError naming `what`, the file and the key) a decoder folder that is missing, is not a
    VideoDecoder or was made for other latents than a teacher's; returns its folder. Reads configs only."""
    folder = decoder_folder(path)
    config = folder / "config.json"
    if not config.is_file():
        raise ValueError(f"{what} {str(path)!r}: no config.json there or in its decoder/ (give a decoder folder or "
                         f"the export of a decoder run)")
    try:
        cfg = json.loads(config.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{what}: {str(config)!r} is not valid JSON ({err})") from None
    if cfg.get("_class_name") != VideoDecoder.__name__:
        raise ValueError(f"{what}: {str(config)!r} is a {cfg.get('_class_name')!r}, not a {VideoDecoder.__name__}")
    want = {"latent_channels": latent_channels, "temporal": temporal, "spatial": spatial}
    diff = {k: (cfg.get(k), v) for k, v in want.items() if cfg.get(k) != v}
    if diff:
        raise ValueError(f"{what}: {str(config)!r} was made for other latents than the teacher's: "
                         + ", ".join(f"{k} is {a!r}, the teacher's {b!r}" for k, (a, b) in diff.items()))
    if not any(folder.glob("*.safetensors")):
        raise ValueError(f"{what}: {str(folder)!r} holds no safetensors weights")
    return folder


def load_decoder(folder, device="cpu") -> VideoDecoder:
    """A checked decoder folder (`check_decoder`), loaded from safetensors for inference."""
    return VideoDecoder.from_pretrained(folder, use_safetensors=True).to(device).eval()
