"""The token-scale check of a toy world, before any training: do its attributes survive the DiT's token grid?

Renders of a split are read back by the world's own reader as drawn, seen one value per latent cell (4×4 pixels),
one value per DiT token (8×8 pixels: the tiny teacher's 2×2 patches on its 4× VAE) and blurred; an attribute the
reader loses on the token grid is one the DiT has to draw inside its tokens (docs/tiny-teacher.md: the first
world's shapes). Prints a markdown table and writes the numbers as JSON.

    python scripts/check_toy_world.py --seeds 4 --json docs/toy-world.json   # ~4 min on 2 cores
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter


def box_filtered(video: np.ndarray, factor: int) -> np.ndarray:
    """uint8 [T, H, W, 3] averaged over factor×factor boxes and scaled back up bilinearly."""
    t, h, w, c = video.shape
    x = torch.from_numpy(video).float().permute(0, 3, 1, 2)
    y = F.interpolate(F.avg_pool2d(x, factor), size=(h, w), mode="bilinear", align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def blurred(video: np.ndarray, sigma: float) -> np.ndarray:
    return np.clip(gaussian_filter(video.astype(np.float32), (0, sigma, sigma, 0)), 0, 255).round().astype(np.uint8)


VIEWS = {
    "as drawn": lambda v: v,
    "one value per latent cell (4×4 px)": lambda v: box_filtered(v, 4),
    "one value per DiT token (8×8 px)": lambda v: box_filtered(v, 8),
    "blurred, σ = 1.2 px": lambda v: blurred(v, 1.2),
    "blurred, σ = 2.5 px": lambda v: blurred(v, 2.5),
}


def check(world, split: str, seeds: int, seed: int = 0) -> dict:
    attrs = world.held_out_attributes() if split == "held_out" else world.train_attributes()
    rng = random.Random(f"check|{split}|{seed}")
    renders = [(a, world.render(a, rng.randrange(2**31))) for a in attrs for _ in range(seeds)]
    captions = [a.caption() for a, _ in renders]
    return {name: world.attribute_accuracy([view(v) for _, v in renders], captions) | {"clips": len(renders)}
            for name, view in VIEWS.items()}


def table(results: dict, fields: tuple[str, ...]) -> str:
    rows = [f"| clips | n | {' | '.join(fields)} |", "|---|---|" + "---|" * len(fields)]
    for split, views in results.items():
        for view, acc in views.items():
            rows.append(f"| {split}: {view} | {acc['clips']} | " + " | ".join(f"{acc[f]:.2f}" for f in fields) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", default="domain", help="the toy world module under distill.toyworld")
    parser.add_argument("--seeds", type=int, default=4, help="renders per attribute combination")
    parser.add_argument("--splits", nargs="+", default=["held_out", "train"])
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args()
    world = importlib.import_module(f"distill.toyworld.{args.world}")
    results = {split: check(world, split, args.seeds if split == "held_out" else 1) for split in args.splits}
    fields = ("all", "shape", "colour", "background", "direction", "speed")
    print(table(results, fields))
    if args.json:
        args.json.write_text(json.dumps({"world": args.world, "seeds": args.seeds, "results": results}, indent=1))


if __name__ == "__main__":
    main()
