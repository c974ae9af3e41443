#!/usr/bin/env python
"""Make the built-in tiny teacher (`builtin:tiny-wan`): a genuine diffusers WanPipeline trained on the toy world.

    python scripts/train_tiny_teacher.py --out teachers/builtin/tiny-wan      # or: make teacher

Stages, each checkpointed under --work so that a killed run continues where it stopped (re-run the command):
  1. vae      train the tiny AutoencoderKLWan on 5-frame 32x32 crops around the shape (shape-weighted L1 + MSE
              on the unclamped decoder output, small KL)
  2. decoder  train the VAE decoder on whole 17-frame clips, encoder frozen (the causal decoder's path across
              4-frame chunks needs clips longer than one chunk)
  3. latents  encode the training clips; per-channel latent mean/std go into the VAE config as Wan expects
  4. dit      train the tiny WanTransformer3DModel (2x2 latent patches: 320 tokens) with the flow-matching
              objective (v = noise - x0) at noise levels t = shift(u, 3), u ~ U(0, 1), 10% caption dropout to the
              empty prompt (for CFG), EMA
  5. export   save the pipeline with save_pretrained (safetensors) plus distill_teacher.json (sampler defaults)
  6. report   sample held-out prompts at 50 UniPC steps and 4 Euler steps, read the clips back with the toy-world
              reader, write docs/tiny-teacher.json and the frame grid docs/tiny-teacher-grid.png

Seeded and CPU-first; pass --device cuda to use a GPU. `--reuse-vae TEACHER` takes an existing teacher's VAE
(weights and latent statistics) and text encoder instead of stages 1-2, so that only the DiT is trained again:
how the shipped DiT was trained longer on a GPU (docs/tiny-teacher.md).
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
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from distill import toyworld  # noqa: E402
from distill.teachers.wan.tiny import TinyWanSpec, build_components  # noqa: E402

MAX_SEQ = 16  # text length the tiny teacher is trained and sampled with (recorded in distill_teacher.json)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def atomic_save(tensors: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
    os.replace(tmp, path)


def atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_stage(model, opt, step: int, ckpt: Path, state_path: Path) -> None:
    """Weights (safetensors) first, then the optimiser state and step: a kill between the two resumes from the
    previous state file, never from a newer state with older weights."""
    atomic_save(model.state_dict(), ckpt)
    atomic_torch_save({"opt": opt.state_dict(), "step": step}, state_path)


def resume_stage(model, opt, ckpt: Path, state_path: Path, what: str) -> int:
    """The step a stage stopped at (0 for a fresh stage), with the model and optimiser restored."""
    if not state_path.exists():
        return 0
    model.load_state_dict(load_file(ckpt))
    state = torch.load(state_path, weights_only=True)
    opt.load_state_dict(state["opt"])
    log(f"{what}: resumed at step {state['step']}")
    return state["step"]


def to_pixels(video: np.ndarray) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] -> float [B, 3, T, H, W] in [-1, 1]."""
    return torch.from_numpy(video).permute(0, 4, 1, 2, 3).float() / 127.5 - 1


def decode_for_training(vae, z: torch.Tensor) -> torch.Tensor:
    """`vae.decode(z).sample` without its final clamp to [-1, 1]: the clamp has no gradient, so a pixel that
    overshoots (the white and black backgrounds sit at +-0.88) would stop learning. The same frame-by-frame
    causal decode as diffusers' `AutoencoderKLWan._decode`."""
    vae.clear_cache()
    x = vae.post_quant_conv(z)
    frames = []
    for i in range(x.shape[2]):
        vae._conv_idx = [0]
        frames.append(vae.decoder(x[:, :, i:i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                                  first_chunk=i == 0))
    vae.clear_cache()
    return torch.cat(frames, dim=2)


def reconstruction_loss(rec: torch.Tensor, x: torch.Tensor, object_weight: float,
                        temporal_weight: float = 0.0) -> torch.Tensor:
    """L1 + MSE with the shape's pixels weighted up: the shape covers ~5% of a frame, and an unweighted loss is
    content to paint the background alone. With `temporal_weight`, plus that times the L1 distance between the
    frame-to-frame changes of `rec` and of `x` (on [B, 3, T, H, W]): an edge that wobbles where the clip stands
    still costs there even when each frame alone is close."""
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1)  # [B, 3, T, 4W]
    background = border.median(dim=-1).values[..., None, None]
    is_object = ((x - background).abs().sum(dim=1, keepdim=True) > 0.1).float()
    weight = 1 + (object_weight - 1) * is_object
    loss = ((rec - x).abs() * weight).mean() + ((rec - x).pow(2) * weight).mean()
    if temporal_weight:
        loss = loss + temporal_weight * (rec.diff(dim=2) - x.diff(dim=2)).abs().mean()
    return loss


def batch_of_clips(rng: np.random.Generator, n: int, frames: int, crop: int = 0) -> np.ndarray:
    """n random training clips, `frames` long; with `crop`, a crop x crop window around the shape, half of them
    touching a frame's edge (so the decoder also learns the edge) -- a quarter of the pixels of a full frame at
    32, and the shape is what there is to learn (convolutions do not care where the window was)."""
    attrs = toyworld.train_attributes()
    clips = []
    for _ in range(n):
        a = attrs[rng.integers(len(attrs))]
        clip = toyworld.render(a, int(rng.integers(2**31)))
        start = int(rng.integers(0, toyworld.FRAMES - frames + 1))
        clip = clip[start:start + frames]
        if crop:
            h, w = clip.shape[1:3]
            background = np.median(clip[0, 0], axis=0)
            ys, xs = np.nonzero(np.abs(clip[frames // 2].astype(int) - background).sum(-1) > 30)
            cy, cx = (ys.mean(), xs.mean()) if len(ys) else (h / 2, w / 2)
            jitter = rng.integers(-crop // 4, crop // 4 + 1, size=2)
            top = int(np.clip(cy - crop / 2 + jitter[0], 0, h - crop))
            left = int(np.clip(cx - crop / 2 + jitter[1], 0, w - crop))
            if rng.random() < 0.5:  # snap to the nearer edges
                top = 0 if top < h - crop - top else h - crop
            if rng.random() < 0.5:
                left = 0 if left < w - crop - left else w - crop
            clip = clip[:, top:top + crop, left:left + crop]
        clips.append(clip)
    return np.stack(clips)


# --- stage 1: VAE -----------------------------------------------------------------------------------------------
def train_vae(vae, args, work: Path) -> None:
    ckpt, state_path = work / "vae.safetensors", work / "vae_state.pt"
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    step = resume_stage(vae, opt, ckpt, state_path, "vae")
    rng = np.random.default_rng([args.seed, 1, step])
    vae.train()
    t0 = time.time()
    while step < args.vae_steps:
        lr = args.vae_lr * (0.1 if step >= 0.8 * args.vae_steps else 1.0)
        for g in opt.param_groups:
            g["lr"] = lr
        x = to_pixels(batch_of_clips(rng, args.vae_batch, args.vae_frames, args.vae_crop)).to(args.device)
        post = vae.encode(x).latent_dist
        # The posterior mean, not a sample: the DiT learns from mode() latents, and sampling at the initial unit
        # variance drowns the shape's small signal for hundreds of steps (the KL term keeps the variance bounded).
        rec = decode_for_training(vae, post.mode())
        kl = post.kl().mean() / x[0].numel()
        loss = reconstruction_loss(rec, x, args.object_weight) + args.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 50 == 0 or step == args.vae_steps:
            log(f"vae step {step}/{args.vae_steps} loss {loss.item():.4f} ({(time.time() - t0) / 50:.2f}s/step)")
            t0 = time.time()
        if step % args.save_every == 0 or step == args.vae_steps:
            save_stage(vae, opt, step, ckpt, state_path)
    vae.eval()


# --- stage 2: the VAE decoder on whole clips -------------------------------------------------------------------
def finetune_decoder(vae, args, work: Path) -> None:
    """Stage 1 trains on short clips (first frame + one 4-frame chunk) because it is fast; the causal decoder's
    path across later chunks (its feature cache) is then untrained. Here the decoder learns whole clips while
    the encoder stays frozen, so the latents the DiT learns from do not change."""
    ckpt, state_path = work / "vae_decoder.safetensors", work / "vae_decoder_state.pt"
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    opt = torch.optim.AdamW(params, lr=args.decoder_lr, weight_decay=0.0)
    step = resume_stage(vae, opt, ckpt, state_path, "vae decoder")
    rng = np.random.default_rng([args.seed, 3, step])
    vae.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    vae.decoder.train()
    t0 = time.time()
    while step < args.decoder_steps:
        for g in opt.param_groups:
            g["lr"] = args.decoder_lr * (0.1 if step >= 0.8 * args.decoder_steps else 1.0)
        x = to_pixels(batch_of_clips(rng, args.decoder_batch, toyworld.FRAMES)).to(args.device)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mode()
        rec = decode_for_training(vae, z)
        loss = reconstruction_loss(rec, x, args.object_weight, args.decoder_temporal_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step % 25 == 0 or step == args.decoder_steps:
            log(f"vae decoder step {step}/{args.decoder_steps} loss {loss.item():.4f} "
                f"({(time.time() - t0) / 25:.2f}s/step)")
            t0 = time.time()
        if step % 100 == 0 or step == args.decoder_steps:
            save_stage(vae, opt, step, ckpt, state_path)
    vae.eval().requires_grad_(False)


@torch.no_grad()
def check_vae(vae, args, n: int = 32) -> dict:
    """The toy-world reader on VAE round trips of held-out clips: a VAE that drops the shape shows here."""
    examples = toyworld.sample_examples("held_out", n, args.seed + 9)
    clips = np.stack([toyworld.render(a, s) for a, s in examples])
    rec = vae.decode(vae.encode(to_pixels(clips).to(args.device)).latent_dist.mode()).sample
    rec = ((rec.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()
    return toyworld.attribute_accuracy(rec, [a.caption() for a, _ in examples])


# --- stage 3: latents -------------------------------------------------------------------------------------------
def reuse_vae(parts: dict, teacher: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Load `teacher`'s VAE and text encoder into `parts` (stages 1-2 are then not run); returns its per-channel
    latent mean and std, which the DiT must keep using: they are part of the VAE's config that ships."""
    for name, file in (("vae", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors")):
        path = teacher / name / file
        if not path.is_file():
            sys.exit(f"--reuse-vae {teacher}: no {name}/{file} there (a teacher folder made by this script?)")
        missing, unexpected = parts[name].load_state_dict(load_file(path), strict=False)
        missing = [k for k in missing if not k.endswith("embed_tokens.weight")]  # UMT5's tied copy of `shared`
        if missing or unexpected:
            sys.exit(f"--reuse-vae {teacher}: {path} does not fit this script's {name} "
                     f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    config = json.loads((teacher / "vae" / "config.json").read_text())
    return torch.tensor(config["latents_mean"]), torch.tensor(config["latents_std"])


@torch.no_grad()
def encode_dataset(vae, args, work: Path, stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """`stats`: the latent mean and std to normalise with (a reused VAE's own); else measured on these clips."""
    path = work / "latents.safetensors"
    if path.exists():
        return load_file(path)
    examples = toyworld.sample_examples("train", args.n_clips, args.seed + 2)
    captions = sorted({a.caption() for a in toyworld.train_attributes()})
    index = {c: i for i, c in enumerate(captions)}
    latents, ids = [], []
    for i in range(0, len(examples), 16):
        chunk = examples[i:i + 16]
        x = to_pixels(np.stack([toyworld.render(a, s) for a, s in chunk])).to(args.device)
        latents.append(vae.encode(x).latent_dist.mode().cpu())
        ids += [index[a.caption()] for a, _ in chunk]
        if (i // 16) % 20 == 0:
            log(f"latents: {i + len(chunk)}/{len(examples)}")
    z = torch.cat(latents)
    mean, std = stats if stats is not None else (z.mean(dim=(0, 2, 3, 4)), z.std(dim=(0, 2, 3, 4)))
    out = {"latents": z, "caption_ids": torch.tensor(ids), "mean": mean, "std": std}
    atomic_save(out, path)
    (work / "captions.json").write_text(json.dumps(captions))
    return out


# --- stage 4: DiT -----------------------------------------------------------------------------------------------
@torch.no_grad()
def text_embeddings(tokenizer, text_encoder, captions: list[str]) -> torch.Tensor:
    """Embeddings exactly as WanPipeline makes them: UMT5 states up to the real length, zeros after."""
    tok = tokenizer(captions, padding="max_length", max_length=MAX_SEQ, truncation=True, add_special_tokens=True,
                    return_attention_mask=True, return_tensors="pt").to(text_encoder.device)
    states = text_encoder(tok.input_ids, tok.attention_mask).last_hidden_state
    return states * tok.attention_mask[..., None]


def train_dit(transformer, embeds, null_embed, data, args, work: Path, spec_shift: float):
    ckpt, state_path = work / "dit.safetensors", work / "dit_state.pt"
    ema = {k: v.detach().clone() for k, v in transformer.state_dict().items()}
    opt = torch.optim.AdamW(transformer.parameters(), lr=args.dit_lr, weight_decay=0.01, betas=(0.9, 0.99))
    step, fitted = 0, False
    if state_path.exists():
        weights = load_file(ckpt)
        transformer.load_state_dict({k[4:]: v for k, v in weights.items() if k.startswith("net.")})
        ema = {k[4:]: v for k, v in weights.items() if k.startswith("ema.")}
        state = torch.load(state_path, weights_only=True)
        opt.load_state_dict(state["opt"])
        step = state["step"]
        fitted = bool(state.get("fitted"))
        if args.dit_minutes and fitted:  # the length the budget fitted before the kill
            args.dit_steps = state["dit_steps"]
        log(f"dit: resumed at step {step} of {args.dit_steps}")
    z = ((data["latents"] - data["mean"].view(1, -1, 1, 1, 1)) / data["std"].view(1, -1, 1, 1, 1)).to(args.device)
    ids = data["caption_ids"].to(args.device)
    embeds, null_embed = embeds.to(args.device), null_embed.to(args.device)
    gen = torch.Generator(args.device)
    transformer.train()
    budget_start = time.time()
    state = transformer.state_dict()  # views of the live parameters and buffers
    float_keys = [k for k, v in state.items() if v.is_floating_point()]
    ema = {k: v.to(args.device) for k, v in ema.items()}
    ema_float = [ema[k] for k in float_keys]
    t0, running, first = time.time(), 0.0, step
    while step < args.dit_steps:
        gen.manual_seed(args.seed * 1_000_003 + step)  # the batch is a function of the step: exact resume
        warm = min(1.0, (step + 1) / 200)
        lr = args.dit_lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.dit_steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        pick = torch.randint(len(z), (args.dit_batch,), generator=gen, device=args.device)
        x0 = z[pick]
        cond = embeds[ids[pick]]
        drop = torch.rand(args.dit_batch, generator=gen, device=args.device) < args.caption_dropout
        cond = torch.where(drop[:, None, None], null_embed.expand_as(cond), cond)
        # Noise levels drawn the way the sampler visits them (uniform, then shifted): the object's place and
        # motion are decided at high noise, where a shift-3 sampler spends most of its steps.
        u = torch.rand(args.dit_batch, generator=gen, device=args.device)
        t = (spec_shift * u / (1 + (spec_shift - 1) * u)).clamp(min=1e-3)
        noise = torch.randn(x0.shape, generator=gen, device=args.device)
        tt = t.view(-1, 1, 1, 1, 1)
        xt = (1 - tt) * x0 + tt * noise
        v = transformer(hidden_states=xt, timestep=t * 1000, encoder_hidden_states=cond, return_dict=False)[0]
        loss = F.mse_loss(v, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        opt.step()
        step += 1
        with torch.no_grad():  # one fused update of every floating tensor (a loop would launch 2 ops per tensor)
            decay = min(args.ema, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema_float, [state[k] for k in float_keys], 1 - decay)
        running = running + loss.detach()  # no .item() per step: on a GPU it would wait for every step
        if args.dit_minutes and not fitted and step == first + BUDGET_PROBE:
            # A run killed before its length was fitted fits it here anew, its minutes counted from the resume.
            args.dit_steps, fitted = fit_budget(args, step, time.time() - budget_start, BUDGET_PROBE), True
            log(f"dit: {args.dit_minutes} min fit {args.dit_steps} steps (re-run with --dit-steps {args.dit_steps})")
        if step % 100 == 0 or step == args.dit_steps:
            log(f"dit step {step}/{args.dit_steps} loss {running.item() / 100:.4f} lr {lr:.2e} "
                f"({(time.time() - t0) / 100:.2f}s/step)")
            t0, running = time.time(), 0.0
        if step % args.save_every == 0 or step == args.dit_steps or step == first + BUDGET_PROBE:
            for k in state.keys() - set(float_keys):  # integer buffers, if any: copied, not averaged
                ema[k].copy_(state[k])
            weights = {**{f"net.{k}": v for k, v in transformer.state_dict().items()},
                       **{f"ema.{k}": v for k, v in ema.items()}}
            atomic_save(weights, ckpt)
            atomic_torch_save({"opt": opt.state_dict(), "step": step, "dit_steps": args.dit_steps, "fitted": fitted},
                              state_path)
    transformer.load_state_dict(ema)
    transformer.eval()


BUDGET_PROBE = 300  # steps timed before --dit-minutes fixes the DiT's length


def fit_budget(args, step: int, elapsed_s: float, timed_steps: int) -> int:
    """The DiT's length that fills --dit-minutes at the pace of the steps timed so far (at most --dit-steps), in
    hundreds. The cosine then runs to that length; the timed steps followed the --dit-steps schedule, at most 1.3%
    above the learning rate the fitted length gives them (for lengths of 4,000 steps and more)."""
    left = args.dit_minutes * 60 - elapsed_s
    fit = step + int(left / (elapsed_s / timed_steps))
    return max(step, min(args.dit_steps, fit // 100 * 100))


# --- stage 5: export --------------------------------------------------------------------------------------------
def export(parts: dict, data: dict, spec: TinyWanSpec, out: Path, made_by: str, guidance: float) -> None:
    from diffusers import AutoencoderKLWan, WanPipeline

    vae = parts["vae"]
    config = dict(vae.config)
    config["latents_mean"] = [round(float(v), 6) for v in data["mean"]]
    config["latents_std"] = [round(float(v), 6) for v in data["std"]]
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    vae_final = AutoencoderKLWan.from_config(config)
    vae_final.load_state_dict(vae.state_dict())
    pipe = WanPipeline(tokenizer=parts["tokenizer"], text_encoder=parts["text_encoder"], vae=vae_final,
                       transformer=parts["transformer"], scheduler=parts["scheduler"])
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    defaults = {
        "sampler": {"name": "unipc", "steps": 50, "guidance": guidance, "shift": spec.flow_shift},
        "video": {"frames": toyworld.FRAMES, "height": toyworld.HEIGHT, "width": toyworld.WIDTH, "fps": 8},
        "negative_prompt": "",
        "max_sequence_length": MAX_SEQ,
    }
    (tmp / "distill_teacher.json").write_text(json.dumps(defaults, indent=2) + "\n")
    (tmp / "README.md").write_text(
        "# tiny-wan\n\nThe built-in toy-world teacher of `distill` (`builtin:tiny-wan`): a diffusers WanPipeline.\n"
        f"Made by `python scripts/train_tiny_teacher.py {made_by}`; see docs/tiny-teacher.md.\n"
        f"Sample with max_sequence_length={MAX_SEQ}, 17 frames at 64x64.\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def build_parser() -> argparse.ArgumentParser:
    """This script's options (scripts/decoder_trial.py reads stage 2's defaults from here)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("teachers/builtin/tiny-wan"))
    p.add_argument("--work", type=Path, default=Path("runs/tiny-teacher-work"), help="checkpoints for resume")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reuse-vae", type=Path, metavar="TEACHER",
                   help="take this teacher folder's VAE (and text encoder) instead of training one: the DiT alone")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--vae-steps", type=int, default=900)
    p.add_argument("--vae-batch", type=int, default=16)
    p.add_argument("--vae-frames", type=int, default=5, help="clip length the VAE trains on (4k+1)")
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--vae-crop", type=int, default=32, help="square crop around the shape (0: whole frames)")
    p.add_argument("--vae-kl", type=float, default=1e-4)
    p.add_argument("--object-weight", type=float, default=10.0, help="loss weight of the shape's pixels")
    p.add_argument("--decoder-steps", type=int, default=200)
    p.add_argument("--decoder-batch", type=int, default=4)
    p.add_argument("--decoder-lr", type=float, default=5e-4)
    p.add_argument("--decoder-temporal-weight", type=float, default=0.0,
                   help="weight of the frame-to-frame L1 term in stage 2 (0: the shipped recipe)")
    p.add_argument("--n-clips", type=int, default=2400)
    spec_defaults = TinyWanSpec()
    p.add_argument("--dit-patch", type=int, default=spec_defaults.dit_patch[-1],
                   help="spatial patch of the DiT, in latent cells (tokens per clip: 5 x (16 / patch)^2)")
    p.add_argument("--dit-layers", type=int, default=spec_defaults.dit_layers)
    p.add_argument("--dit-ffn", type=int, default=spec_defaults.dit_ffn)
    p.add_argument("--dit-steps", type=int, default=8000)
    p.add_argument("--dit-minutes", type=float, default=0.0,
                   help="fit the DiT's length to this many minutes, timed over its first 300 steps (at most "
                        "--dit-steps); the log names the length, for an exact re-run")
    p.add_argument("--dit-batch", type=int, default=16)
    p.add_argument("--dit-lr", type=float, default=1e-3)
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument("--guidance", type=float, default=3.0,
                   help="the CFG scale the export's distill_teacher.json samples with (3: docs/tiny-teacher.md, "
                        "'Guidance'; at 5 green subjects on black turn yellow)")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--docs", type=Path, default=Path("docs"), help="where the report stage writes")
    p.add_argument("--skip-report", action="store_true")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.time()

    spec = TinyWanSpec(dit_patch=(1, args.dit_patch, args.dit_patch), dit_layers=args.dit_layers,
                       dit_ffn=args.dit_ffn)
    parts = build_components(spec, toyworld.vocabulary(), seed=args.seed)
    for name in ("text_encoder", "vae", "transformer"):
        parts[name].to(args.device)
    parts["text_encoder"].eval().requires_grad_(False)

    stats = None
    if args.reuse_vae:
        stats = reuse_vae(parts, args.reuse_vae)
        parts["vae"].eval().requires_grad_(False)
        log(f"stages 1-2: the VAE and text encoder of {args.reuse_vae}")
    else:
        log("stage 1/6: vae")
        train_vae(parts["vae"], args, args.work)
        log("stage 2/6: vae decoder on whole clips")
        finetune_decoder(parts["vae"], args, args.work)
    vae_check = check_vae(parts["vae"], args)
    log(f"vae on held-out clips: reader accuracy {vae_check['all']:.3f}, palette error "
        f"{vae_check['palette_error']:.1f} (ground truth: 1.000, ~0.4)")
    (args.work / "vae_check.json").write_text(json.dumps(vae_check))
    log("stage 3/6: latents")
    data = encode_dataset(parts["vae"], args, args.work, stats)
    log(f"latent mean {data['mean'].mean():.3f} std {data['std'].mean():.3f} over {len(data['latents'])} clips")
    log("stage 4/6: dit")
    captions = json.loads((args.work / "captions.json").read_text())
    embeds = text_embeddings(parts["tokenizer"], parts["text_encoder"], captions)
    null_embed = text_embeddings(parts["tokenizer"], parts["text_encoder"], [""])
    train_dit(parts["transformer"], embeds, null_embed, data, args, args.work, spec.flow_shift)
    log("stage 5/6: export")
    for name in ("text_encoder", "vae", "transformer"):
        parts[name].to("cpu")
    export(parts, data, spec, args.out, " ".join(sys.argv[1:] if argv is None else argv), args.guidance)
    train_minutes = (time.time() - started) / 60
    log(f"exported {args.out} ({sum(f.stat().st_size for f in args.out.rglob('*') if f.is_file()) / 1e6:.1f} MB) "
        f"after {train_minutes:.1f} min")
    (args.work / "timing.json").write_text(json.dumps({"train_minutes_this_invocation": train_minutes}))
    if not args.skip_report:
        log("stage 6/6: report")
        from scripts.tiny_teacher_report import write_report

        write_report(str(args.out), args.docs, device=args.device)
    log(f"done in {(time.time() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
