#!/usr/bin/env python
"""Train the toy world's domain CLIP (`clip_score[domain-clip]`): an open_clip `CLIP` with a small config, trained
with open_clip's contrastive loss on toy frames and their captions.

    python scripts/train_domain_clip.py --out eval/builtin/domain-clip

The image tower reads motion-history frames (eval/clip_score.py) so that direction and speed are visible in one
image. Written as an open_clip `local-dir:` folder (open_clip_config.json + open_clip_model.safetensors). It
reports held-out retrieval: how often a clip's true caption ranks first among the held-out suite's captions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.loss import ClipLoss
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from distill import toyworld  # noqa: E402
from distill.eval.clip_score import ClipBackend  # noqa: E402

MODEL_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 20, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}
PREPROCESS_CFG = {"size": 64, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic",
                  "resize_mode": "shortest"}


def write_folder(model, out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG,
              "distill": {"frame_mode": "motion_history", "training": report}}
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    # fp16 on disk keeps the BPE embedding table small; open_clip loads it back into fp32
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, out / "open_clip_model.safetensors")


def frames_of(backend: ClipBackend, clips: np.ndarray, frames: int) -> torch.Tensor:
    """Every clip's preprocessed frames, [N, frames, 3, S, S]."""
    return torch.stack([backend.prepare_frames(torch.from_numpy(c), frames) for c in clips])


@torch.no_grad()
def retrieval(backend: ClipBackend, clips: np.ndarray, captions: list[str]) -> float:
    suite = sorted(set(captions))
    scores = backend.score_matrix(torch.from_numpy(clips), suite)
    truth = torch.tensor([suite.index(c) for c in captions])
    return float((scores.argmax(1) == truth).double().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("eval/builtin/domain-clip"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=96)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seeds-per-combo", type=int, default=6)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--init", type=Path, help="continue from a domain CLIP folder (its weights; a fresh optimiser)")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    started = time.time()
    model = open_clip.CLIP(**MODEL_CFG)
    previous = None
    if args.init:
        from safetensors.torch import load_file

        model.load_state_dict({k: v.float() for k, v in load_file(args.init / "open_clip_model.safetensors").items()})
        previous = json.loads((args.init / "open_clip_config.json").read_text())["distill"]["training"]
    tokenizer = open_clip.SimpleTokenizer(context_length=MODEL_CFG["text_cfg"]["context_length"])
    backend = ClipBackend("domain-clip", model, tokenizer, 64, tuple(PREPROCESS_CFG["mean"]),
                          tuple(PREPROCESS_CFG["std"]), "motion_history")
    clips, captions = toyworld.render_pool("train", args.seeds_per_combo, args.seed)
    images = frames_of(backend, clips, args.frames)  # [N, F, 3, 64, 64]
    unique = sorted(set(captions))
    tokens = tokenizer(unique)
    caption_id = torch.tensor([unique.index(c) for c in captions])
    by_caption = [torch.nonzero(caption_id == i).flatten() for i in range(len(unique))]
    loss_fn = ClipLoss()
    model.train().requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(args.seed)
    for step in range(1, args.steps + 1):
        lr = args.lr * min(1.0, step / 100) * 0.5 * (1 + np.cos(np.pi * step / args.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        # one clip per caption in a batch, so no in-batch negative is a false one
        cap = torch.randperm(len(unique), generator=gen)[:args.batch]
        clip_idx = torch.stack([by_caption[c][torch.randint(len(by_caption[c]), (1,), generator=gen)][0]
                                for c in cap])
        frame_idx = torch.randint(args.frames, (len(cap),), generator=gen)
        img = model.encode_image(images[clip_idx, frame_idx], normalize=True)
        txt = model.encode_text(tokens[cap], normalize=True)
        loss = loss_fn(img, txt, model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        if step % 100 == 0:
            print(f"step {step}/{args.steps} loss {loss.item():.3f} scale {model.logit_scale.exp().item():.1f}",
                  flush=True)
    model.eval().requires_grad_(False)
    held_clips, held_captions = toyworld.render_pool("held_out", 2, args.seed + 1)
    report = {"held_out_top1_retrieval": retrieval(backend, held_clips, held_captions),
              "train_top1_retrieval": retrieval(backend, clips[::6], captions[::6]),
              "minutes": (time.time() - started) / 60, "steps": args.steps, "seed": args.seed, "lr": args.lr,
              "continued_from": previous}
    write_folder(model, args.out, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
