#!/usr/bin/env python
"""Make `builtin:tiny-wan-a14b`: a Wan 2.2 A14B-shaped teacher (two expert DiTs switching at `boundary_ratio`)
derived from the shipped `builtin:tiny-wan`.

    python scripts/make_two_expert_teacher.py --out teachers/builtin/tiny-wan-a14b

A14B's experts are one architecture trained on two noise ranges: `transformer` on the high-noise steps
(t ≥ boundary), `transformer_2` on the low-noise ones. Here each expert starts from the tiny teacher's DiT and is
fine-tuned with the flow-matching objective on its own side of the boundary only (noise levels t = shift(u, 3),
u uniform over the part of [0, 1] that maps to the expert's range), on toy-world training clips encoded by the
tiny teacher's VAE, with 10% caption dropout (for CFG) and an EMA. The text encoder, tokenizer and VAE are the
tiny teacher's. Each expert's flow-matching loss on its own range and on the other one, before and after, goes to
docs/tiny-teacher-a14b.json: an expert that specialised gains on its range.

Resumable: each finished expert is kept under --work; re-run the command after an interruption. Seeded; CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from distill import toyworld  # noqa: E402
from distill.teachers.wan import WanTeacher  # noqa: E402

BOUNDARY = 0.875  # Wan 2.2 A14B text-to-video's boundary_ratio


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def u_of_t(t: float, shift: float) -> float:
    """The inverse of t = shift·u / (1 + (shift − 1)·u)."""
    return t / (shift - (shift - 1) * t)


def levels(n: int, lo: float, hi: float, shift: float, gen: torch.Generator) -> torch.Tensor:
    """n noise levels t = shift(u), u uniform over the u-range that maps onto [lo, hi)."""
    a, b = u_of_t(lo, shift), u_of_t(hi, shift)
    u = a + (b - a) * torch.rand(n, generator=gen)
    return (shift * u / (1 + (shift - 1) * u)).clamp(min=1e-3)


def fm_loss(dit, z, embeds, t, noise) -> torch.Tensor:
    tt = t.view(-1, 1, 1, 1, 1)
    xt = (1 - tt) * z + tt * noise
    v = dit(hidden_states=xt, timestep=t * 1000, encoder_hidden_states=embeds, return_dict=False)[0]
    return F.mse_loss(v, noise - z)


@torch.no_grad()
def eval_loss(dit, data: dict, lo: float, hi: float, shift: float, n: int = 64) -> float:
    """Flow-matching loss on held-back clips at levels of [lo, hi), fixed draws (comparable across models)."""
    gen = torch.Generator().manual_seed(12345)
    z, e = data["val_z"][:n], data["val_embeds"][:n]
    t = levels(len(z), lo, hi, shift, gen)
    noise = torch.randn(z.shape, generator=gen)
    return float(fm_loss(dit.eval(), z, e, t, noise))


def training_data(teacher: WanTeacher, n: int, seed: int) -> dict:
    examples = toyworld.sample_examples("train", n + 64, seed)
    latents = []
    for i in range(0, len(examples), 16):
        chunk = examples[i:i + 16]
        video = torch.from_numpy(np.stack([toyworld.render(a, s) for a, s in chunk]))
        latents.append(teacher.encode_video(video))
    z = torch.cat(latents)
    embeds = teacher.embed([a.caption() for a, _ in examples])
    return {"z": z[:n], "embeds": embeds[:n], "val_z": z[n:], "val_embeds": embeds[n:],
            "null": teacher.embed([""])}


def finetune(dit, data: dict, lo: float, hi: float, args, shift: float, name: str):
    dit = copy.deepcopy(dit).train().requires_grad_(True)
    ema = {k: v.detach().clone() for k, v in dit.state_dict().items()}
    opt = torch.optim.AdamW(dit.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    gen = torch.Generator()
    t0, running = time.time(), 0.0
    for step in range(args.steps):
        gen.manual_seed(args.seed * 1_000_003 + step + (0 if lo > 0 else 500_000))
        for g in opt.param_groups:  # short warm-up, cosine to a tenth
            g["lr"] = args.lr * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        pick = torch.randint(len(data["z"]), (args.batch,), generator=gen)
        z, cond = data["z"][pick], data["embeds"][pick]
        drop = torch.rand(args.batch, generator=gen) < 0.1
        cond = torch.where(drop[:, None, None], data["null"].expand_as(cond), cond)
        t = levels(args.batch, lo, hi, shift, gen)
        loss = fm_loss(dit, z, cond, t, torch.randn(z.shape, generator=gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dit.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            for k, p in dit.state_dict().items():
                ema[k].mul_(decay).add_(p.detach(), alpha=1 - decay) if p.is_floating_point() else ema[k].copy_(p)
        running += loss.item()
        if (step + 1) % 50 == 0:
            log(f"{name} step {step + 1}/{args.steps} loss {running / 50:.4f} ({(time.time() - t0) / 50:.2f} s/step)")
            t0, running = time.time(), 0.0
    dit.load_state_dict(ema)
    return dit.eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="builtin:tiny-wan")
    p.add_argument("--out", type=Path, default=Path("teachers/builtin/tiny-wan-a14b"))
    p.add_argument("--work", type=Path, default=Path("runs/tiny-a14b-work"), help="finished experts, for resume")
    p.add_argument("--docs", type=Path, default=Path("docs"))
    p.add_argument("--boundary", type=float, default=BOUNDARY)
    p.add_argument("--guidance", type=float, default=5.0, help="the high-noise expert's CFG scale")
    p.add_argument("--guidance-2", type=float, default=4.0, help="the low-noise expert's (guidance_scale_2)")
    p.add_argument("--steps", type=int, default=400, help="fine-tuning steps per expert")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--ema", type=float, default=0.99)
    p.add_argument("--clips", type=int, default=768)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if not 0 < args.boundary < 1:
        p.error(f"--boundary {args.boundary} is outside (0, 1)")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.time()
    teacher = WanTeacher.from_pretrained(args.base, device="cpu", max_sequence_length=16)
    shift = float(teacher.scheduler_config.get("flow_shift", 3.0))
    data = training_data(teacher, args.clips, args.seed)
    log(f"{len(data['z'])} training latents {tuple(data['z'].shape[1:])}, {len(data['val_z'])} held back")
    args.work.mkdir(parents=True, exist_ok=True)
    ranges = {"transformer": (args.boundary, 1.0), "transformer_2": (0.0, args.boundary)}
    base = teacher.transformer
    experts, report = {}, {"boundary_ratio": args.boundary, "steps_per_expert": args.steps, "batch": args.batch,
                           "base": args.base, "loss": {}}
    for name, (lo, hi) in ranges.items():
        kept = args.work / f"{name}.safetensors"
        dit = copy.deepcopy(base)
        if kept.is_file():
            dit.load_state_dict(load_file(kept))
            log(f"{name}: kept from an earlier run ({kept})")
        else:
            t0 = time.time()
            dit = finetune(base, data, lo, hi, args, shift, name)
            save_file({k: v.contiguous() for k, v in dit.state_dict().items()}, kept)
            report.setdefault("seconds", {})[name] = round(time.time() - t0, 1)
        experts[name] = dit
        report["loss"][name] = {
            f"own range [{lo}, {hi})": {"base": eval_loss(base, data, lo, hi, shift),
                                        "expert": eval_loss(dit, data, lo, hi, shift)},
            "other range": {"base": eval_loss(base, data, *ranges[[n for n in ranges if n != name][0]], shift),
                            "expert": eval_loss(dit, data, *ranges[[n for n in ranges if n != name][0]], shift)}}
        log(f"{name}: {report['loss'][name]}")

    from diffusers import WanPipeline

    pipe = teacher.pipe
    for module in pipe.vae.modules():  # the teacher keeps its VAE's conv weights channels-last on CPU
        if isinstance(module, torch.nn.Conv3d):
            module.weight.data = module.weight.data.contiguous()
    two = WanPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae,
                      transformer=experts["transformer"], transformer_2=experts["transformer_2"],
                      scheduler=pipe.scheduler, boundary_ratio=args.boundary)
    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    two.save_pretrained(tmp, safe_serialization=True)
    defaults = json.loads((teacher.folder / "distill_teacher.json").read_text())
    defaults["sampler"].update(guidance=args.guidance, guidance_2=args.guidance_2)
    (tmp / "distill_teacher.json").write_text(json.dumps(defaults, indent=2) + "\n")
    (tmp / "README.md").write_text(
        "# tiny-wan-a14b\n\nA Wan 2.2 A14B-shaped toy-world teacher (`builtin:tiny-wan-a14b`): a diffusers WanPipeline "
        f"with two experts, `transformer` for t >= {args.boundary} and `transformer_2` below, each fine-tuned from "
        "`builtin:tiny-wan` on its noise range.\nMade by `python scripts/make_two_expert_teacher.py`; sample with "
        f"guidance_scale={args.guidance}, guidance_scale_2={args.guidance_2}, max_sequence_length=16, 17 frames at "
        "64x64.\n")
    shutil.rmtree(args.out, ignore_errors=True)
    os.replace(tmp, args.out)
    report["total_seconds"] = round(time.time() - start, 1)
    args.docs.mkdir(parents=True, exist_ok=True)
    (args.docs / "tiny-teacher-a14b.json").write_text(json.dumps(report, indent=1) + "\n")
    log(f"wrote {args.out} and {args.docs / 'tiny-teacher-a14b.json'} in {report['total_seconds']} s")


if __name__ == "__main__":
    main()
