#!/usr/bin/env python
"""The first thing to run on a GPU (at most ~8 minutes on one H100/H200): latency, one training step per recipe
with the memory planner's prediction beside it, and the eval's throughput. Writes gpu_check.json and gpu_check.md
to --out after every part, so a run cut short still leaves what it measured.

    python scripts/gpu_check.py --out runs/gpu_check                 # needs CUDA; exit 2 without it
    python scripts/gpu_check.py --out /tmp/gc --dry-run              # tiny shapes on CPU (the test runs this)

Parts, in order (each skipped with a note when fewer than its budget's seconds are left before --deadline-s):
  latency   a DiT of Wan 2.1 1.3B's config (diffusers WanTransformer3DModel, random weights, bf16) at 81x480x832
            (latents 16x21x60x104, 32,760 tokens, 512 text tokens): the teacher's 50 Euler steps with CFG (the two
            halves in one batch-2 forward: 100 NFE), the student's 4 and 1 steps; each latency's ratio to the
            teacher's, next to the NFE bound (100/4 = 25, 100/1 = 100)
  train     one optimiser step of each recipe (consistency; APT from the teacher's weights) through the real
            `distill.train.Run` on a 1-rank process group: ZeRO-2 bf16 (configs/deepspeed/zero2-bf16.json),
            gradient checkpointing, batch 1 at 81x480x832, a random Wan-1.3B-shaped pipeline folder; the median of
            2 steps after 1 warm-up, torch.cuda.max_memory_allocated over them, and `distill plan`'s per-rank
            prediction for the same config on this GPU. A recipe the planner says cannot fit is not started.
  eval      clips per second of the domain CLIP score and the domain video net features on 64 toy-world clips
            (scripts/bench_eval.py's stages) on this device.
  decode    the teacher VAE's decode of one clip (diffusers AutoencoderKLWan of Wan 2.1's config, random weights,
            bf16) against a distilled decoder of configs/recipes/decoder-wan2.1-1.3b.yaml's size (teachers/decoders.py,
            random weights: speed only), on the same 16x21x60x104 latents: whole-clip decode, the decoder's time to
            first frame when streamed, and the decoder under torch.compile (its compile time apart)
  latency-compiled
            the latency part's DiT and rows under torch.compile as `--compile` compiles it (inductor, Triton on
            CUDA; teachers/compiling.py), with the compile time of each graph (CFG's batch 2, the student's batch 1)
            reported apart from the timed runs, and the eager latencies of the latency part beside it. Last, and
            skipped when the deadline leaves too little: `--parts latency latency-compiled` runs it on its own.
--dry-run: the same code on CPU in fp32 with the tiny teacher's DiT config, 17x64x64 clips, 8 eval clips.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
GIB = 1 << 30
PARTS = ("latency", "train-consistency", "train-apt", "eval", "decode", "latency-compiled")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--deadline-s", type=float, default=450.0, help="stop starting parts after this many seconds")
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU (no CUDA needed)")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="the parts to run (default: all)")
    return p.parse_args(argv)


class Report:
    def __init__(self, out: Path, meta: dict):
        self.out, self.data = out, {"schema": "distill.gpu_check/1", **meta, "parts": {}, "skipped": {}}
        out.mkdir(parents=True, exist_ok=True)

    def add(self, part: str, result: dict) -> None:
        self.data["parts"][part] = result
        self.write()

    def skip(self, part: str, why: str) -> None:
        self.data["skipped"][part] = why
        self.write()

    def write(self) -> None:
        (self.out / "gpu_check.json").write_text(json.dumps(self.data, indent=1) + "\n")
        (self.out / "gpu_check.md").write_text(markdown(self.data) + "\n")


def markdown(d: dict) -> str:
    lines = [f"gpu_check on {d['device']} ({'dry run, tiny shapes' if d['dry_run'] else d['shape']}); "
             f"torch {d['torch']}", ""]
    for part in ("latency", "latency-compiled"):
        lat = d["parts"].get(part)
        if not lat:
            continue
        if "error" in lat:
            lines += [f"{part}: {lat['error']}", ""]
            continue
        if part == "latency-compiled":
            lines.append(f"compiled ({lat['backend']}); compile s: "
                         + ", ".join(f"{k} {v:.1f}" for k, v in lat["compile_s"].items()))
        lines += ["| sampler | steps | NFE | latency s | teacher / this | NFE bound |", "|---|---|---|---|---|---|"]
        for r in lat["rows"]:
            lines.append(f"| {r['name']}{' (compiled)' if part == 'latency-compiled' else ''} | {r['steps']} | "
                         f"{r['nfe']} | {r['seconds']:.3f} | {r['speedup']:.1f}x | {r['nfe_bound']:.0f}x |")
        lines.append("")
    for recipe in ("consistency", "apt"):
        r = d["parts"].get(f"train-{recipe}")
        if r is None:
            continue
        if "error" in r or "refused" in r:
            lines.append(f"train {recipe}: {r.get('error') or r.get('refused')}")
            continue
        lines.append(f"train {recipe}: step {r['step_s']:.3f} s; peak allocated {r['peak_gib']:.2f} GiB "
                     f"(reserved {r['reserved_gib']:.2f}); planner predicted {r['predicted_gib']:.2f} GiB "
                     f"(ratio {r['predicted_gib'] / r['peak_gib']:.2f})" if r['peak_gib'] else
                     f"train {recipe}: step {r['step_s']:.3f} s; planner predicted {r['predicted_gib']:.2f} GiB "
                     f"(no CUDA peak on CPU)")
    dec = d["parts"].get("decode")
    if dec:
        if "error" in dec:
            lines.append(f"decode: {dec['error']}")
        else:
            compiled = (f"; compiled {dec['compiled_s']:.3f} s (first frame {dec['compiled_first_frame_s']:.3f} s, "
                        f"compile {dec['compile_s']:.1f} s)" if "compiled_s" in dec else
                        f"; not compiled: {dec.get('compiled_error')}")
            lines.append(f"decode one clip: VAE {dec['vae_s']:.3f} s, distilled decoder {dec['decoder_s']:.3f} s "
                         f"({dec['speedup']:.1f}x; first frame streamed {dec['decoder_first_frame_s']:.3f} s)"
                         + compiled)
    ev = d["parts"].get("eval")
    if ev:
        lines += ["", "| eval stage | clips/s |", "|---|---|"]
        lines += [f"| {k} | {v['clips_per_s']:.1f} |" for k, v in ev.get("stages", {}).items()]
        if "error" in ev:
            lines.append(f"eval: {ev['error']}")
    for part, why in d["skipped"].items():
        lines.append(f"skipped {part}: {why}")
    return "\n".join(lines)


# --- latency ----------------------------------------------------------------------------------------------------
def dit_config(dry: bool) -> dict:
    if dry:
        from distill.teachers.resolve import resolve

        cfg = json.loads((resolve("builtin:tiny-wan") / "transformer" / "config.json").read_text())
        return {k: v for k, v in cfg.items() if not k.startswith("_")}
    from bench_train import WAN_1_3B

    return dict(WAN_1_3B)


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def latency(device, dtype, dry: bool, compiled: bool = False) -> dict:
    import torch
    from diffusers import WanTransformer3DModel

    cfg = dit_config(dry)
    torch.manual_seed(0)
    with torch.device(device):
        model = WanTransformer3DModel(**cfg).to(dtype).eval()
    compile_s = {}
    if compiled:
        from distill.teachers.compiling import BACKEND, check_compile

        check_compile(device)  # CompileUnavailable says why; the part records it as its error
        model.compile(backend=BACKEND)  # in place, as teachers/compiling.py compiles a teacher's DiT
    latent = (cfg["in_channels"], 5, 16, 16) if dry else (16, 21, 60, 104)
    text = torch.randn(2, 16 if dry else 512, cfg["text_dim"], device=device, dtype=dtype)

    @torch.no_grad()
    def sample(steps: int, cfg_scale: float | None) -> float:
        x = torch.randn(1, *latent, device=device, dtype=dtype)
        ts = torch.linspace(1.0, 0.0, steps + 1, device=device)
        sync(device)
        t0 = time.perf_counter()
        for i in range(steps):
            t = (ts[i] * 1000).expand(2 if cfg_scale else 1)
            if cfg_scale:  # conditional and unconditional halves in one forward
                v = model(hidden_states=torch.cat([x, x]), timestep=t, encoder_hidden_states=text,
                          return_dict=False)[0]
                cond, uncond = v.chunk(2)
                v = uncond + cfg_scale * (cond - uncond)
            else:
                v = model(hidden_states=x, timestep=t, encoder_hidden_states=text[:1], return_dict=False)[0]
            x = x + (ts[i + 1] - ts[i]) * v
        sync(device)
        return time.perf_counter() - t0

    for name, cfg_scale in (("cfg_batch2", 6.0), ("student_batch1", None)):  # warm-up (kernels, allocator)
        t0 = time.perf_counter()
        sample(1, cfg_scale)
        compile_s[name] = time.perf_counter() - t0  # with compile: the graph's compile plus one step
    if compiled:
        sample(1, 6.0), sample(1, None)  # graphs compiled: a second warm-up as the eager part has
    rows = []
    for name, steps, guidance in (("teacher (CFG)", 50, 6.0), ("student", 4, None), ("student", 1, None)):
        rows.append({"name": name, "steps": steps, "nfe": steps * (2 if guidance else 1),
                     "seconds": sample(steps, guidance)})
    teacher = rows[0]
    for r in rows:
        r["speedup"] = teacher["seconds"] / r["seconds"]
        r["nfe_bound"] = teacher["nfe"] / r["nfe"]
    out = {"dit": cfg, "latent": list(latent), "dtype": str(dtype), "rows": rows}
    if compiled:
        out.update(backend=BACKEND, compile_s=compile_s)
    return out


# --- the VAE's decode against a distilled decoder -----------------------------------------------------------------
def decode(device, dtype, dry: bool) -> dict:
    import torch
    from diffusers import AutoencoderKLWan

    from distill.teachers.compiling import check_compile, compile_decoder
    from distill.teachers.decoders import VideoDecoder

    if dry:
        from distill.teachers.resolve import resolve

        vae = AutoencoderKLWan.from_pretrained(resolve("builtin:tiny-wan") / "vae")
        sizes, latent = {"width": 16, "depth": 1, "min_width": 8}, (vae.config.z_dim, 5, 16, 16)
    else:
        vae = AutoencoderKLWan()  # Wan 2.1's VAE config (z 16, 4x temporal, 8x spatial)
        sizes, latent = {"width": 128, "depth": 3, "min_width": 32}, (16, 21, 60, 104)
    vae = vae.to(device, dtype).eval()
    # a Wan VAE halves the size at every stage but the last, and the frame rate at each temporal_downsample
    factors = {"spatial": 2 ** (len(vae.config.dim_mult) - 1), "temporal": 2 ** sum(vae.config.temperal_downsample)}

    def make():
        torch.manual_seed(0)  # the eager and the compiled decoder: the same weights
        return VideoDecoder(latent_channels=latent[0], **factors, **sizes).to(device, dtype).eval()
    decoder, compiled = make(), make()
    z = torch.randn(1, *latent, device=device, dtype=dtype)

    def timed(fn) -> float:
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - t0

    def first_frame(dec) -> float:
        def run():
            stream = dec.stream(z)
            next(stream)
            stream.close()
        return timed(run)

    out = {"latent": list(latent), "dtype": str(dtype), "decoder_sizes": sizes,
           "decoder_params": sum(p.numel() for p in decoder.parameters())}
    with torch.no_grad():
        vae_fn = lambda: vae.decode(z, return_dict=False)
        timed(vae_fn), timed(lambda: decoder(z)), first_frame(decoder)  # warm-up
        out["vae_s"] = statistics.median(timed(vae_fn) for _ in range(2))
        out["decoder_s"] = statistics.median(timed(lambda: decoder(z)) for _ in range(3))
        out["decoder_first_frame_s"] = statistics.median(first_frame(decoder) for _ in range(3))
        out["speedup"] = out["vae_s"] / out["decoder_s"]
        try:
            check_compile(device)
            compile_decoder(compiled)
            out["compile_s"] = timed(lambda: compiled(z)) + first_frame(compiled)  # the graphs' compiles
            first_frame(compiled)
            out["compiled_s"] = statistics.median(timed(lambda: compiled(z)) for _ in range(3))
            out["compiled_first_frame_s"] = statistics.median(first_frame(compiled) for _ in range(3))
        except Exception as err:  # the eager figures stand; say why there are no compiled ones
            out["compiled_error"] = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300] if str(err) else ''}"
    return out


# --- one training step per recipe --------------------------------------------------------------------------------
def train_config(recipe: str, tmp: Path, dry: bool, device):
    from distill.train_config import load_train_config

    overrides = ["wandb.mode=disabled", "train.steps=1000", "data.size=2", "data.batch_size=1",
                 f"data.cache_dir={tmp / 'cache'}", f"out={tmp / ('run-' + recipe)}", "train.validate_every=1000",
                 "student.gradient_checkpointing=true"]
    if not dry:
        from bench_train import build_wan_folder

        folder = tmp / "wan-1.3b-random"
        if not folder.is_dir():
            build_wan_folder(folder, 30)
        teacher = {"name": "wan2.1-1.3b-shape-random", "source": str(folder), "dtype": "bfloat16",
                   "sampler": {"name": "unipc", "steps": 50, "guidance": 6.0, "shift": 8.0},
                   "video": {"frames": 81, "height": 480, "width": 832, "fps": 16}, "negative_prompt": "",
                   "max_sequence_length": 512}
        (tmp / "teacher.yaml").write_text(json.dumps(teacher) + "\n")
        overrides += [f"teacher={tmp / 'teacher.yaml'}", "deepspeed=configs/deepspeed/zero2-bf16.json",
                      "teacher_dtype=bfloat16"]
    if recipe == "consistency":
        return load_train_config("configs/recipes/consistency-tiny.yaml", overrides + ["recipe.guidance=null"])
    return load_train_config("configs/recipes/apt-tiny.yaml", overrides + ["student.init=teacher",
                                                                           "recipe.discriminator_init=teacher"])


def train_step(recipe: str, tmp: Path, dry: bool, device) -> dict:
    import torch

    from distill.plan import plan
    from distill.train import Run

    cfg = train_config(recipe, tmp, dry, device)
    if device.type == "cuda":
        capacity = torch.cuda.get_device_properties(device).total_memory / GIB
    else:
        capacity = 1e6  # no limit to check on CPU: the prediction is still reported
    predicted = plan(cfg, 1, capacity, device=device.type, suggest=False)
    result = {"predicted_gib": predicted.total / GIB, "predicted_items": {i.name: i.bytes / GIB
                                                                           for i in predicted.items}}
    if not predicted.fits:
        return {**result, "refused": f"the planner predicts {predicted.total / GIB:.1f} GiB > {capacity:.1f} GiB"}
    run = Run(cfg, progress=False)
    try:
        run.train_step(0)  # warm-up
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for step in (1, 2):
            sync(device)
            t0 = time.perf_counter()
            run.train_step(step)
            sync(device)
            times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
        reserved = torch.cuda.max_memory_reserved(device) if device.type == "cuda" else 0
        return {**result, "step_s": statistics.median(times), "steps_s": times, "peak_gib": peak / GIB,
                "reserved_gib": reserved / GIB, "x0_shape": list(run.data.x0.shape[1:])}
    finally:
        del run
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


# --- eval throughput -------------------------------------------------------------------------------------------
def eval_throughput(device, dry: bool) -> dict:
    import numpy as np
    import torch

    from distill import toyworld
    from distill.eval.clip_score import ClipBackend
    from distill.eval.domain_video_net import DomainVideoDetector

    n = 8 if dry else 64
    examples = toyworld.sample_examples("held_out", n, seed=0)
    videos = torch.from_numpy(np.stack([toyworld.render(a, s) for a, s in examples]))
    captions = [a.caption() for a, _ in examples]
    clip = ClipBackend.domain(device=str(device))
    detector = DomainVideoDetector()
    detector.net.to(device)
    out = {}
    for name, fn in (("clip_score[domain-clip]", lambda: clip.clip_scores(videos, captions)),
                     ("features[domain-video-net]", lambda: detector.features(videos))):
        fn()  # warm-up
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out[name] = {"clips": n, "seconds": time.perf_counter() - t0}
        out[name]["clips_per_s"] = n / out[name]["seconds"]
    return {"stages": out}


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a GPU, or pass --dry-run for tiny shapes on CPU",
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    os.chdir(REPO)  # the recipe configs name files relative to the repository
    device = torch.device("cpu") if args.dry_run else torch.device("cuda", 0)
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"
    report = Report(args.out.resolve(), {"device": name, "dry_run": args.dry_run, "torch": torch.__version__,
                                         "shape": "Wan 2.1 1.3B config, 81x480x832, bf16"})
    # (part, seconds it may need at worst on one H100: a part is started only with that much time left)
    budget = {"latency": 150, "train-consistency": 120, "train-apt": 120, "eval": 40, "decode": 90,
              "latency-compiled": 300}
    budget = {part: need for part, need in budget.items() if part in args.parts}
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        for part, need in budget.items():
            left = args.deadline_s - (time.perf_counter() - start)
            if left < (5 if args.dry_run else need):
                report.skip(part, f"{left:.0f} s left before --deadline-s {args.deadline_s:.0f}, it may need {need}")
                continue
            t0 = time.perf_counter()
            try:
                if part in ("latency", "latency-compiled"):
                    result = latency(device, dtype, args.dry_run, compiled=part == "latency-compiled")
                elif part == "decode":
                    result = decode(device, dtype, args.dry_run)
                elif part.startswith("train-"):
                    result = train_step(part.removeprefix("train-"), Path(tmp), args.dry_run, device)
                else:
                    result = eval_throughput(device, args.dry_run)
            except Exception as err:  # one part's failure must not cost the others' figures
                result = {"error": f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300] if str(err) else ''}"}
            result["wall_s"] = time.perf_counter() - t0
            report.add(part, result)
            print(f"gpu_check: {part} done in {result['wall_s']:.0f} s", file=sys.stderr, flush=True)
    print(markdown(report.data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
