"""The toy world's video detector: a small 3D CNN trained to recognise every attribute of a toy clip, motion
included (`scripts/train_domain_video_net.py`). Its pooled features stand in for I3D's in Fréchet distances and
diversity on the toy world, and every number computed with it is named `[domain-video-net]`."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

DOMAIN_VIDEO_NET_DIR = Path(__file__).resolve().parent / "builtin" / "domain-video-net"


def _block(c_in: int, c_out: int, stride) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1), nn.GroupNorm(8, c_out), nn.SiLU())


class DomainVideoNet(nn.Module):
    def __init__(self, heads: dict[str, int], width: int = 16, feature_dim: int = 128, frames: int = 17,
                 size: int = 64):
        super().__init__()
        self.config = {"heads": dict(heads), "width": width, "feature_dim": feature_dim, "frames": frames,
                       "size": size}
        w = width
        self.body = nn.Sequential(
            _block(6, w, (1, 2, 2)), _block(w, 2 * w, (2, 2, 2)), _block(2 * w, 4 * w, (2, 2, 2)),
            _block(4 * w, 8 * w, (2, 2, 2)))
        self.proj = nn.Linear(8 * w, feature_dim)
        self.heads = nn.ModuleDict({k: nn.Linear(feature_dim, n) for k, n in heads.items()})

    def prepare(self, videos: torch.Tensor) -> torch.Tensor:
        """uint8 [B, T, H, W, 3] -> float [B, 6, T', S, S]: the frames in [-1, 1] at the net's length and size,
        and their temporal differences (motion is then visible to the first layer, not only learnable by it)."""
        x = videos.to(self.proj.weight.device).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
        t, s = self.config["frames"], self.config["size"]
        if tuple(x.shape[2:]) != (t, s, s):
            x = F.interpolate(x, size=(t, s, s), mode="trilinear", align_corners=False)
        diff = F.pad(x[:, :, 1:] - x[:, :, :-1], (0, 0, 0, 0, 1, 0))
        return torch.cat([x, diff], dim=1)

    def features(self, videos: torch.Tensor) -> torch.Tensor:
        h = self.body(self.prepare(videos))
        return self.proj(h.mean(dim=(2, 3, 4)))

    def forward(self, videos: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        f = self.features(videos)
        return f, {k: head(F.silu(f)) for k, head in self.heads.items()}

    @classmethod
    def from_folder(cls, folder: str | Path = DOMAIN_VIDEO_NET_DIR) -> "DomainVideoNet":
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"domain video net folder {str(folder)!r} has no config.json; make it with "
                                    f"scripts/train_domain_video_net.py")
        config = json.loads((folder / "config.json").read_text())
        net = cls(**{k: config[k] for k in ("heads", "width", "feature_dim", "frames", "size")})
        net.load_state_dict(load_file(folder / "model.safetensors"))
        return net.eval().requires_grad_(False)


class DomainVideoDetector:
    """The `VideoDetector` face of the domain video net (see eval/fvd.py)."""

    name = "domain-video-net"

    def __init__(self, net: DomainVideoNet | None = None, batch_size: int = 16):
        self.net = net if net is not None else DomainVideoNet.from_folder()
        self.feature_dim = self.net.config["feature_dim"]
        self.num_frames = self.net.config["frames"]
        self.batch_size = batch_size

    def metric_name(self, statistic: str, frames: int) -> str:
        """`fvd[domain-video-net,17f]`: the frame count the net read, and `from{T}` when it had to resample."""
        self.check_frames(frames)
        tag = f"{frames}f" if frames == self.num_frames else f"{frames}to{self.num_frames}f"
        return f"{statistic}[{self.name},{tag}]"

    def protocol(self, frames: int) -> str:
        rule = (f"all {frames} frames, consecutive" if frames == self.num_frames else
                f"{frames} frames resampled trilinearly to {self.num_frames} (a non-standard, resampled protocol)")
        return (f"domain video net: {rule}, at {self.net.config['size']}x{self.net.config['size']}, with their "
                f"frame differences; {self.feature_dim}-d pooled features")

    def check_frames(self, frames: int) -> None:
        if frames < 2:
            raise ValueError(f"detector {self.name!r} needs clips of at least 2 frames, got {frames}")

    @torch.no_grad()
    def features(self, videos: torch.Tensor) -> torch.Tensor:
        out = [self.net.features(videos[i:i + self.batch_size]) for i in range(0, len(videos), self.batch_size)]
        return torch.cat(out).double().cpu()
