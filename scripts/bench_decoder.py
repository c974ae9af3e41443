"""The distilled video decoder against the teacher's VAE decode, side by side in one run: latency per clip, the
ratio, time to first frame, and what the decoder costs in quality (PSNR against the VAE's decode of held-out
latents: toy-world clips of the held-out split through the teacher's VAE encoder).

    PYTHONPATH=. python scripts/bench_decoder.py --decoder runs/decoder-tiny/export/decoder --out docs/decoder.json

Timing: the same latents, one clip at a time by default (batch 1, as the eval's speed protocol times a clip), the
VAE and the decoder alternating within each repeat so that a machine's load falls on both alike; `--warmup`
untimed rounds first; the median of `--repeats` rounds, with min and max. Time to first frame: the VAE decodes a
clip whole, so its first frame comes with its last; the decoder streams (`decode_stream`) and its first frame
comes after one latent frame's work. `--compile` times a second copy of the decoder under torch.compile
(teachers/compiling.py) in the same rounds, so eager against compiled is side by side too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from distill import toyworld
from distill.teachers.config import load_teacher, load_teacher_config
from distill.teachers.decoders import VideoDecoder


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def first_frame_s(decoder: VideoDecoder, z: torch.Tensor) -> float:
    start = time.perf_counter()
    stream = decoder.decode_stream(z)
    next(stream)
    elapsed = time.perf_counter() - start
    stream.close()
    return elapsed


def summary(values: list[float]) -> dict:
    return {"median_s": statistics.median(values), "min_s": min(values), "max_s": max(values), "n": len(values)}


def held_out_latents(teacher, n: int, frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    clips = np.stack([toyworld.render(a, s, frames, height, width)
                      for a, s in toyworld.sample_examples("held_out", n, seed)])
    return teacher.encode_video(torch.from_numpy(clips)).cpu()


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-clip PSNR (dB) between uint8 clips [B, T, H, W, 3]."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(255.0 ** 2 / mse.clamp_min(1e-10))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--decoder", required=True, help="a decoder folder (config.json + safetensors): an export's "
                                                    "decoder/, or a checkpoint's")
    p.add_argument("--teacher", default="tiny-wan", help="the teacher config whose VAE the decoder replaces")
    p.add_argument("--batch", type=int, default=1, help="clips per decode call (default 1: the eval's speed protocol)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--held-out", type=int, default=16, help="held-out clips for the quality figures (0: none)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--compile", action="store_true", help="also time the decoder under torch.compile, side by side")
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    tcfg = load_teacher_config(args.teacher)
    teacher = load_teacher(tcfg, "cpu")
    decoder = VideoDecoder.from_pretrained(args.decoder).eval()
    v = tcfg.video
    shape = teacher.latent_shape(v.frames, v.height, v.width)
    z = torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(0))

    compiled = None
    if args.compile:
        from distill.teachers.compiling import check_compile, compile_decoder

        check_compile("cpu")  # says why where it cannot, before any timing
        compiled = VideoDecoder.from_pretrained(args.decoder).eval()
        compile_decoder(compiled)
    with torch.no_grad():
        compile_s = timed(lambda: (compiled.decode(z), first_frame_s(compiled, z))) if compiled else None
        for _ in range(args.warmup):
            teacher.decode(z), decoder.decode(z), first_frame_s(decoder, z)
            if compiled:
                compiled.decode(z), first_frame_s(compiled, z)
        vae_s, ours_s, first_s, comp_s, comp_first_s = [], [], [], [], []
        for _ in range(args.repeats):  # alternating: a load on the machine falls on all alike
            vae_s.append(timed(lambda: teacher.decode(z)))
            ours_s.append(timed(lambda: decoder.decode(z)))
            first_s.append(first_frame_s(decoder, z))
            if compiled:
                comp_s.append(timed(lambda: compiled.decode(z)))
                comp_first_s.append(first_frame_s(compiled, z))
    vae, ours = summary(vae_s), summary(ours_s)
    result = {"teacher": args.teacher, "decoder": str(args.decoder), "clip": [v.frames, v.height, v.width],
              "latent": list(shape), "batch": args.batch, "threads": torch.get_num_threads(),
              "decoder_params": sum(q.numel() for q in decoder.parameters()),
              "vae_decoder_params": sum(q.numel() for n, q in teacher.vae.named_parameters()
                                        if not n.startswith(("encoder", "quant_conv")))
              if hasattr(teacher, "vae") else None,
              "vae_decode": vae, "decoder_decode": ours,
              "speedup": vae["median_s"] / ours["median_s"],
              "time_to_first_frame": {"vae_s": vae["median_s"], "decoder_stream": summary(first_s)}}

    if compiled:
        with torch.no_grad():  # the same weights: the same clip, up to a grey level of float reordering
            diff = float((compiled.decode(z).float() - decoder.decode(z).float()).abs().max())
        result["compiled"] = {"decode": summary(comp_s), "first_frame": summary(comp_first_s),
                              "max_abs_diff_vs_eager_grey_levels": diff,
                              "compile_s": compile_s, "speedup_vs_eager": ours["median_s"] / summary(comp_s)["median_s"]}
    if args.held_out:
        latents = held_out_latents(teacher, args.held_out, v.frames, v.height, v.width)
        with torch.no_grad():
            reference = torch.cat([teacher.decode(c) for c in latents.split(4)])
            ours_clips = torch.cat([decoder.decode(c) for c in latents.split(4)])
        per_clip = psnr(ours_clips, reference)
        mean = float(per_clip.mean())
        half = 1.96 * float(per_clip.std(unbiased=True)) / len(per_clip) ** 0.5 if len(per_clip) > 1 else float("nan")
        result["quality"] = {"psnr_db_vs_vae_decode": {"mean": mean, "ci95": [mean - half, mean + half],
                                                       "n": len(per_clip)},
                             "held_out": "toy-world held-out split, rendered at the teacher's clip size, through the "
                                         "teacher's VAE encoder (posterior mean)"}

    lines = [f"decoder vs the teacher's VAE decode, {v.frames}x{v.height}x{v.width}, batch {args.batch}, "
             f"{result['threads']} threads, median of {args.repeats}:",
             f"  VAE decode      {vae['median_s'] * 1e3:8.1f} ms  (min {vae['min_s'] * 1e3:.1f}, max {vae['max_s'] * 1e3:.1f})",
             f"  decoder decode  {ours['median_s'] * 1e3:8.1f} ms  (min {ours['min_s'] * 1e3:.1f}, max {ours['max_s'] * 1e3:.1f})",
             f"  speed-up        {result['speedup']:8.2f}x",
             f"  first frame     {result['time_to_first_frame']['decoder_stream']['median_s'] * 1e3:8.1f} ms streamed "
             f"(VAE: {vae['median_s'] * 1e3:.1f} ms, the whole clip)"]
    if compiled:
        c = result["compiled"]
        lines.append(f"  compiled        {c['decode']['median_s'] * 1e3:8.1f} ms  ({c['speedup_vs_eager']:.2f}x eager; first "
                     f"frame {c['first_frame']['median_s'] * 1e3:.1f} ms; compile {c['compile_s']:.1f} s)")
    if "quality" in result:
        q = result["quality"]["psnr_db_vs_vae_decode"]
        lines.append(f"  PSNR vs VAE     {q['mean']:8.2f} dB  (95% CI {q['ci95'][0]:.2f}..{q['ci95'][1]:.2f}, "
                     f"{q['n']} held-out clips)")
    print("\n".join(lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
