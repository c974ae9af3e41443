"""Alarms for adversarial training: each warns, is logged to `alarms.jsonl`, and makes the run keep a checkpoint of
the state it went off in. Every rank computes the same figures (the same clips, the all-reduced losses), so every
rank takes the same decision without talking to the others.

- discriminator collapse: D's GAN loss stays below `d_collapse` for `patience` consecutive checks (D has won; G's
  gradients vanish);
- flat colour or noise: the student's decoded one-step clips have a spatial variance, or a share of spatial
  high-frequency energy, outside [low, high] times that of real clips.
"""

from __future__ import annotations

import json
import warnings

import torch


def spatial_stats(videos: torch.Tensor, cutoff: float = 0.5) -> dict[str, float]:
    """uint8 clips [B, T, H, W, 3] → mean per-frame pixel variance, and the share of each frame's spatial power
    spectrum above `cutoff`·Nyquist (noise drives it up, flat colour drives the variance to 0)."""
    x = videos.float().mean(-1) / 255.0  # intensity [B, T, H, W]
    variance = x.var(dim=(-2, -1)).mean()
    power = torch.fft.fftshift(torch.fft.fft2(x - x.mean(dim=(-2, -1), keepdim=True)), dim=(-2, -1)).abs().pow(2)
    h, w = x.shape[-2:]
    fy = torch.linspace(-1, 1, h).view(-1, 1).abs()
    fx = torch.linspace(-1, 1, w).view(1, -1).abs()
    high = (torch.maximum(fy, fx) > cutoff).to(power)
    share = (power * high).sum() / power.sum().clamp_min(1e-12)
    return {"variance": float(variance), "hf_share": float(share)}


class Alarms:
    def __init__(self, run, state: dict | None = None):
        self.run = run
        self.cfg = run.cfg.recipe.alarms
        state = state or (run.meta.get("alarms") if run.meta else None) or {}
        self.low_d_checks = state.get("low_d_checks", 0)
        n = min(4, len(run.data))
        self.prompts = [run.data.prompts[i] for i in range(n)]
        self.reference = spatial_stats(run.teacher.decode(run.data.x0[:n]))

    def state(self) -> dict:
        return {"low_d_checks": self.low_d_checks, "reference": self.reference}

    def _raise(self, step: int, kind: str, detail: str) -> None:
        message = f"step {step}: alarm {kind}: {detail}; keeping a checkpoint of this state"
        if self.run.rank == 0:
            warnings.warn(message, stacklevel=2)
            with (self.run.out / "alarms.jsonl").open("a") as f:
                f.write(json.dumps({"step": step, "alarm": kind, "detail": detail}) + "\n")

    def check(self, step: int, losses: dict) -> bool:
        """True when an alarm went off at this step (the caller then keeps a checkpoint)."""
        if step % self.cfg.every:
            return False
        fired = False
        d_gan = losses.get("d_gan")
        self.low_d_checks = self.low_d_checks + 1 if d_gan is not None and d_gan < self.cfg.d_collapse else 0
        if self.low_d_checks == self.cfg.patience:
            self._raise(step, "discriminator_collapse", f"D's GAN loss {d_gan:.4g} < {self.cfg.d_collapse} for "
                                                        f"{self.cfg.patience} checks")
            fired = True
        stats = spatial_stats(self.run.teacher.decode(self.run.student_latents(self.prompts, seed=step)))
        for key, value in stats.items():
            ratio = value / max(self.reference[key], 1e-12)
            if not self.cfg.low <= ratio <= self.cfg.high:
                kind = "flat_samples" if ratio < self.cfg.low and key == "variance" else "noisy_samples"
                self._raise(step, kind, f"{key} of decoded samples is {ratio:.3g}x that of real clips "
                                        f"(allowed [{self.cfg.low}, {self.cfg.high}])")
                fired = True
        return fired
