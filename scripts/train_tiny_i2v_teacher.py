#!/usr/bin/env python
"""Make `builtin:tiny-wan-ti2v`: a Wan 2.2 TI2V-shaped teacher (text and an optional first image) fine-tuned from
the shipped text-to-video `builtin:tiny-wan`.

    python scripts/train_tiny_i2v_teacher.py --out teachers/builtin/tiny-wan-ti2v      # or: make teacher-ti2v

Wan 2.2 TI2V needs no image encoder: its pipeline folder is a `WanPipeline` with `expand_timesteps: true`, the DiT
takes one timestep per token, and an image-to-video clip is sampled with the clean latent of the first image in
latent frame 0 (its tokens at timestep 0) while the other frames are denoised (teachers/wan/i2v.py). The same DiT
(tiny-wan's, unchanged in shape) is fine-tuned here with that objective:

  - flow matching (v = noise - x0) at noise levels t = shift(u, 3), u ~ U(0, 1), as tiny-wan was trained;
  - on `--image-share` of each batch, latent frame 0 of the noisy input is the clean latent of the clip's first
    frame (encoded alone, as the sampler encodes the given image) with timestep 0 on its tokens, and the loss is
    on the other latent frames only; on the rest, text-to-video with the per-token timestep all equal (the folder
    keeps sampling from text alone, as TI2V-5B does);
  - 10% caption dropout to the empty prompt (for CFG over text with the image kept), EMA.

Training clips are rendered from the toy world's TRAINING combinations only (the held-out rule stays). The text
encoder, tokenizer, VAE and scheduler are tiny-wan's.

Resumable: the encoded data and every --save-every steps (weights, EMA, optimiser, step) are kept under --work;
re-run the command after an interruption. The batch is a function of the step, so a resumed run draws what the
uninterrupted one would have. Seeded; CPU-first (--device cuda for a GPU).
"""

from __future__ import annotations

import argparse
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
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from distill import toyworld  # noqa: E402
from distill.teachers.wan import WanTeacher  # noqa: E402
from distill.teachers.wan import i2v  # noqa: E402
from scripts.train_tiny_teacher import atomic_save, atomic_torch_save, log  # noqa: E402

MAX_SEQ = 16  # tiny-wan's text length (a toy caption is 11 tokens)


# --- data -----------------------------------------------------------------------------------------------------------
@torch.no_grad()
def first_frame_latents(teacher: WanTeacher, video: torch.Tensor) -> torch.Tensor:
    """The clean latent [B, z, 1, h, w] of each clip's frame 0 encoded alone: what `encode_images` gives the sampler
    for that frame as the first image (a one-frame condition video through the VAE, normalised)."""
    frame0 = video[:, :1].to(teacher.device).permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # [B, 3, 1, H, W]
    return teacher._vae_mode(frame0)


@torch.no_grad()
def encode_data(teacher: WanTeacher, n: int, seed: int, work: Path) -> dict:
    """Latents of n training clips (and 64 held back for the before/after loss), their first frames' latents and
    their captions' embeddings; cached in the work folder."""
    path = work / "data.safetensors"
    if path.is_file():
        return load_file(path)
    examples = toyworld.sample_examples("train", n + 64, seed)
    latents, firsts = [], []
    for i in range(0, len(examples), 16):
        chunk = examples[i:i + 16]
        video = torch.from_numpy(np.stack([toyworld.render(a, s) for a, s in chunk]))
        latents.append(teacher.encode_video(video).cpu())
        firsts.append(first_frame_latents(teacher, video).cpu())
        if (i // 16) % 20 == 0:
            log(f"data: {i + len(chunk)}/{len(examples)} clips encoded")
    z, first = torch.cat(latents), torch.cat(firsts)
    embeds = teacher.embed([a.caption() for a, _ in examples]).cpu()
    data = {"z": z[:n], "first": first[:n], "embeds": embeds[:n], "val_z": z[n:], "val_first": first[n:],
            "val_embeds": embeds[n:], "null": teacher.embed([""]).cpu()}
    atomic_save(data, path)
    return data


# --- the objective --------------------------------------------------------------------------------------------------
def noise_levels(n: int, shift: float, gen: torch.Generator, device) -> torch.Tensor:
    u = torch.rand(n, generator=gen, device=device)
    return (shift * u / (1 + (shift - 1) * u)).clamp(min=1e-3)


def ti2v_loss(dit, z, first, embeds, t, noise, with_image: torch.Tensor, patch) -> torch.Tensor:
    """The flow-matching loss of a batch in which the rows `with_image` hold their clean first-frame latent in
    latent frame 0 at timestep 0 (loss on the other frames), and the other rows are text-to-video (one timestep per
    token, all equal; loss on every frame)."""
    tt = t.view(-1, 1, 1, 1, 1)
    xt = (1 - tt) * z + tt * noise
    keep = with_image.view(-1, 1, 1, 1, 1)
    xt = torch.where(keep, i2v.keep_first_frame(xt, first), xt)
    timestep = (t * 1000).float()
    per_token_image = i2v.first_frame_clean(timestep, xt, patch)
    per_token_text = timestep[:, None].expand_as(per_token_image)
    timestep = torch.where(with_image[:, None], per_token_image, per_token_text)
    v = dit(hidden_states=xt, timestep=timestep, encoder_hidden_states=embeds, return_dict=False)[0]
    err = (v - (noise - z)).pow(2)  # [B, C, F, h, w]
    weight = torch.ones_like(err[:, :1])
    weight[:, :, :1] = (~keep).float()[:, :, :1].expand_as(weight[:, :, :1])  # frame 0 is given, not learnt
    return (err * weight).sum() / (weight.sum() * err.shape[1])


@torch.no_grad()
def eval_loss(dit, data: dict, shift: float, patch, with_image: bool) -> float:
    """The loss on the held-back clips at fixed draws (comparable across models): image-to-video or text-only."""
    gen = torch.Generator().manual_seed(12345)
    z = data["val_z"]
    t = noise_levels(len(z), shift, gen, "cpu")
    noise = torch.randn(z.shape, generator=gen)
    flags = torch.full((len(z),), with_image)
    return float(ti2v_loss(dit.eval(), z, data["val_first"], data["val_embeds"], t, noise, flags, patch))


def lr_at(step: int, args) -> float:
    """Short warm-up, then cosine to a tenth."""
    return args.lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))


def finetune(dit, data: dict, args, shift: float, work: Path):
    """Fine-tune `dit` in place with the TI2V objective; checkpoints every --save-every steps, resumes from them.
    Returns the EMA weights."""
    ckpt, state_path = work / "dit.safetensors", work / "dit_state.pt"
    patch = tuple(dit.config.patch_size)
    dit.train().requires_grad_(True)
    ema = {k: v.detach().clone() for k, v in dit.state_dict().items()}
    opt = torch.optim.AdamW(dit.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    step = 0
    if state_path.is_file():
        weights = load_file(ckpt)
        dit.load_state_dict({k[4:]: v for k, v in weights.items() if k.startswith("net.")})
        ema = {k[4:]: v for k, v in weights.items() if k.startswith("ema.")}
        state = torch.load(state_path, weights_only=True)
        opt.load_state_dict(state["opt"])
        step = state["step"]
        log(f"dit: resumed at step {step}")
    dev = args.device
    z, first, embeds, null = (data[k].to(dev) for k in ("z", "first", "embeds", "null"))
    gen = torch.Generator(dev)
    t0, running = time.time(), 0.0
    while step < args.steps:
        gen.manual_seed(args.seed * 1_000_003 + step)  # the batch is a function of the step: exact resume
        lr = lr_at(step, args)
        for g in opt.param_groups:
            g["lr"] = lr
        pick = torch.randint(len(z), (args.batch,), generator=gen, device=dev)
        cond = embeds[pick]
        drop = torch.rand(args.batch, generator=gen, device=dev) < args.caption_dropout
        cond = torch.where(drop[:, None, None], null.expand_as(cond), cond)
        with_image = torch.rand(args.batch, generator=gen, device=dev) < args.image_share
        t = noise_levels(args.batch, shift, gen, dev)
        noise = torch.randn(z[pick].shape, generator=gen, device=dev)
        loss = ti2v_loss(dit, z[pick], first[pick], cond, t, noise, with_image, patch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dit.parameters(), 1.0)
        opt.step()
        step += 1
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            for k, p in dit.state_dict().items():
                ema[k].mul_(decay).add_(p.detach(), alpha=1 - decay) if p.is_floating_point() else ema[k].copy_(p)
        running += loss.item()
        if step % args.log_every == 0 or step == args.steps:
            n = step % args.log_every or args.log_every
            log(f"dit step {step}/{args.steps} loss {running / n:.4f} lr {lr:.2e} "
                f"({(time.time() - t0) / n:.2f} s/step)")
            t0, running = time.time(), 0.0
        if step % args.save_every == 0 or step == args.steps:
            atomic_save({**{f"net.{k}": v for k, v in dit.state_dict().items()},
                         **{f"ema.{k}": v for k, v in ema.items()}}, ckpt)
            atomic_torch_save({"opt": opt.state_dict(), "step": step}, state_path)
    return ema


# --- export ---------------------------------------------------------------------------------------------------------
def export(teacher: WanTeacher, dit, out: Path) -> None:
    """The TI2V pipeline folder: tiny-wan's parts with the fine-tuned DiT, `expand_timesteps: true`."""
    from diffusers import WanPipeline

    pipe = teacher.pipe
    for module in pipe.vae.modules():  # the teacher keeps its VAE's conv weights channels-last on CPU
        if isinstance(module, torch.nn.Conv3d):
            module.weight.data = module.weight.data.contiguous()
    ti2v = WanPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae,
                       transformer=dit.to("cpu"), scheduler=pipe.scheduler, expand_timesteps=True)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    ti2v.save_pretrained(tmp, safe_serialization=True)
    shutil.copy(teacher.folder / "distill_teacher.json", tmp / "distill_teacher.json")
    (tmp / "README.md").write_text(
        "# tiny-wan-ti2v\n\nA Wan 2.2 TI2V-shaped toy-world teacher (`builtin:tiny-wan-ti2v`): a diffusers "
        "WanPipeline with `expand_timesteps`, sampled from text and an optional first image (its clean latent in "
        "latent frame 0 at timestep 0). Fine-tuned from `builtin:tiny-wan` by "
        "`python scripts/train_tiny_i2v_teacher.py`; see docs/tiny-teacher-i2v.md.\n"
        f"Sample with max_sequence_length={MAX_SEQ}, 17 frames at 64x64.\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="builtin:tiny-wan", help="the text-to-video teacher fine-tuned from")
    p.add_argument("--out", type=Path, default=Path("teachers/builtin/tiny-wan-ti2v"))
    p.add_argument("--work", type=Path, default=Path("runs/tiny-ti2v-work"), help="data and checkpoints, for resume")
    p.add_argument("--docs", type=Path, default=Path("docs"), help="where the training record goes")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--image-share", type=float, default=0.8, help="share of each batch conditioned on frame 0")
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument("--clips", type=int, default=1024, help="training clips encoded (training combinations only)")
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args(argv)
    if not 0 <= args.image_share <= 1:
        p.error(f"--image-share {args.image_share} is outside [0, 1]")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.time()
    args.work.mkdir(parents=True, exist_ok=True)
    teacher = WanTeacher.from_pretrained(args.base, device=args.device, max_sequence_length=MAX_SEQ)
    if teacher.image_input != "none" or teacher.boundary_t is not None:
        p.error(f"--base {args.base!r} must be a one-DiT text-to-video teacher (it is {teacher.image_input!r} on "
                f"images, {'two experts' if teacher.boundary_t is not None else 'one DiT'})")
    shift = float(teacher.scheduler_config.get("flow_shift", 3.0))
    data = encode_data(teacher, args.clips, args.seed, args.work)
    log(f"{len(data['z'])} training latents {tuple(data['z'].shape[1:])}, {len(data['val_z'])} held back "
        f"({time.time() - started:.0f} s so far)")
    dit = teacher.transformer
    patch = tuple(dit.config.patch_size)
    base_state = {k: v.detach().clone() for k, v in dit.state_dict().items()}
    before = {"image": eval_loss(dit, data, shift, patch, True), "text": eval_loss(dit, data, shift, patch, False)}
    log(f"held-back loss before: {before}")
    t_train = time.time()
    ema = finetune(dit, data, args, shift, args.work)
    train_seconds = time.time() - t_train
    dit.load_state_dict(ema)
    dit.eval().requires_grad_(False)
    after = {"image": eval_loss(dit, data, shift, patch, True), "text": eval_loss(dit, data, shift, patch, False)}
    log(f"held-back loss after: {after}")
    export(teacher, dit, args.out)
    record = {"base": args.base, "steps": args.steps, "batch": args.batch, "lr": args.lr, "ema": args.ema,
              "image_share": args.image_share, "clips": args.clips,
              "held_back_loss": {"base": before, "ti2v": after},
              "seconds_this_invocation": {"total": round(time.time() - started, 1),
                                          "dit": round(train_seconds, 1)},
              "changed_tensors": sum(not torch.equal(base_state[k], v) for k, v in ema.items())}
    (args.work / "record.json").write_text(json.dumps(record, indent=1) + "\n")
    args.docs.mkdir(parents=True, exist_ok=True)
    (args.docs / "tiny-teacher-i2v-train.json").write_text(json.dumps(record, indent=1) + "\n")
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file()) / 1e6
    log(f"wrote {args.out} ({size:.1f} MB) in {(time.time() - started) / 60:.1f} min; record {args.docs / 'tiny-teacher-i2v-train.json'}")


if __name__ == "__main__":
    main()
