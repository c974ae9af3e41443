#!/usr/bin/env python
"""Training throughput and memory of the consistency recipe: how long one optimiser step takes next to the sum of
the network passes it is made of, and the peak memory per rank under ZeRO-2 and ZeRO-3, measured side by side in
one run on this machine.

    python scripts/bench_train.py                                     # tiny teacher; 1 rank, then ZeRO-2/3 x 2 ranks
    python scripts/bench_train.py --steps 3 --warmup 1 data.size=8    # a quick check (key=value: config overrides)
    python scripts/bench_train.py --shape wan-1.3b --nproc 1          # a Wan-2.1-1.3B-shaped student, 81x480x832
    python scripts/bench_train.py --shape wan-1.3b --layers 1 --frames 5 --height 64 --width 64 --nproc 1  # smoke

What each row measures (every row is a fresh `torchrun` job of this script, building the real `distill.train.Run`):
  step             `run.train_step(step)`: the whole optimiser step (data, teacher, target, student, step, EMA).
  teacher fwd      the teacher with CFG (`run.handles(embeds, "student")["teacher"]`, both halves in one forward), no_grad.
  target fwd       the EMA target (`["target"]`), no_grad.
  student fwd+bwd  `run.engine.backward(student(x_t, t).float().pow(2).mean())`, on the same batch shapes.
  sum of passes    teacher + target + student; `step / sum` is the overhead the engine adds (goal: <= 1.15x).
  the rest         timed alone: `engine.step()` (optimizer, clipping, ZeRO gathers; it also closes the isolated
                   backward above, so the engine's state stays that of a normal run), `ema.update()`, data + text
                   embeddings, the recipe's own tensor math (networks stubbed), the loss all-reduce.
Each item is the median over --steps rounds after --warmup rounds; a round runs one `train_step` and then each
item once, every item starting after a barrier (and a CUDA synchronise on GPU). With several ranks each figure is
the slowest rank's median (so the parts can add up to more than the step: "unaccounted" may be negative); the
JSON keeps every rank's rounds. The isolated passes move the weights a little (their `engine.step()` is real);
timings do not depend on the weight values. The target is the student's EMA copy, which the engine keeps in fp32,
so on bf16 runs the target forward runs in fp32, as it does in training.

Memory per rank: on CUDA `torch.cuda.max_memory_allocated()` over the warm-up and timed rounds (peak stats reset
after setup) and `memory_allocated()` right after setup; on CPU the process's resident set: peak = VmHWM
(= ru_maxrss) reset after setup through /proc/self/clear_refs, and VmRSS after setup. On CUDA the rows use the
bf16 DeepSpeed files (zero2-bf16.json, zero3-bf16.json) and a bf16 teacher, one GPU per rank; on CPU the fp32
files. Each row's output goes to <out>.<stage>-x<ranks>.log beside the JSON.

--shape wan-1.3b builds, in a temporary folder, a Wan pipeline whose DiT has Wan 2.1 1.3B's shape with random
weights (30 layers, 12 heads x 128, ffn 8960, text_dim 4096), a 1-layer UMT5 with d_model 4096 and a tiny VAE with
Wan's 4x8x8 compression, and trains it at batch 1 per rank with gradient checkpointing on 2 toy-world clips at the
video size (81x480x832: latents [16, 21, 60, 104]), teacher settings shift 8, guidance 6, 512 text tokens. Its
negative prompt is empty (Wan's Chinese one has no words in the toy tokenizer); the text is padded to 512 tokens
either way, so the DiT's cost is Wan's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WAN_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
PASSES = ("teacher fwd (CFG)", "target fwd", "student fwd+bwd")
REST = ("optimizer step", "EMA update", "data + embeds", "recipe math", "loss all-reduce")
GIB = 1 << 30


# --- command line -------------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="key=value overrides of the training config")
    p.add_argument("--config", default="configs/recipes/consistency-tiny.yaml")
    p.add_argument("--steps", type=int, default=10, help="timed rounds (medians over these)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    p.add_argument("--nproc", type=int, help="ranks of the ZeRO-2 / ZeRO-3 rows (default: 2, at most the GPUs "
                                             "there are; 1 with --shape wan-1.3b)")
    p.add_argument("--compare-zero", action=argparse.BooleanOptionalAction, default=True,
                   help="also run ZeRO-2 and ZeRO-3 with --nproc ranks (default: on)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="auto: bf16 on CUDA")
    p.add_argument("--shape", choices=("tiny", "wan-1.3b"), default="tiny")
    p.add_argument("--layers", type=int, help="wan-1.3b: DiT layers (default 30)")
    p.add_argument("--frames", type=int, help="wan-1.3b: video frames (default 81)")
    p.add_argument("--height", type=int, help="wan-1.3b: video height (default 480)")
    p.add_argument("--width", type=int, help="wan-1.3b: video width (default 832)")
    p.add_argument("--out", type=Path, default=Path("runs/bench/train.json"))
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # set by the parent: the rank reports' folder
    args = p.parse_intermixed_args()
    if args.shape != "wan-1.3b" and any(v is not None for v in (args.layers, args.frames, args.height, args.width)):
        p.error("--layers/--frames/--height/--width only apply to --shape wan-1.3b")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if args.nproc is None:
        args.nproc = 1 if args.shape == "wan-1.3b" else min(2, gpus) if gpus else 2
    if gpus and args.nproc > gpus:
        p.error(f"--nproc {args.nproc}: this machine has {gpus} GPU(s), one per rank")
    if min(args.steps, args.nproc) < 1 or args.warmup < 0:
        p.error("--steps and --nproc must be at least 1, --warmup at least 0")
    return args


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.worker is not None:
        try:
            worker(args)
        except BaseException as err:  # the parent reads this rather than torchrun's summary
            args.worker.mkdir(parents=True, exist_ok=True)
            name = f"error-rank{os.environ.get('RANK', 0)}.txt"
            (args.worker / name).write_text(f"{type(err).__name__}: {err}".strip().splitlines()[0][:300] + "\n")
            raise
    else:
        parent(args)


# --- timing and memory inside one rank ------------------------------------------------------------------------
def timed(fn, device: torch.device) -> float:
    """Seconds of fn(), started together on every rank, finished when the device is."""
    import torch.distributed as dist

    dist.barrier()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _proc_status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def memory_now(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else _proc_status("VmRSS")


def reset_peak(device: torch.device) -> str:
    """Restart the peak-memory count; returns what the peak will then measure."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "CUDA max_memory_allocated since setup; after setup: memory_allocated"
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (and ru_maxrss) to the current RSS
        return "CPU process peak RSS since setup (VmHWM reset via clear_refs); after setup: VmRSS"
    except OSError:
        return "CPU process peak RSS since start, setup included (ru_maxrss); after setup: VmRSS"


def memory_peak(device: torch.device) -> int:
    import resource

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return max(_proc_status("VmHWM"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (cuda)"
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        pass
    return f"cpu ({model}), {torch.get_num_threads()} threads per rank"


# --- one rank of one row (run under torchrun by the parent) -------------------------------------------------------
def step_inputs(run, step: int) -> dict:
    """What `Run.train_step` feeds the networks at this step: x0, embeddings, t and x_t of the same shapes."""
    bs = run.cfg.data.batch_size
    position = (step * run.world + run.rank) * bs  # train_step's, with grad_accum 1
    batch = run.data.batch(position, bs)
    x0 = batch.x0.to(run.device)
    sigmas = run.recipe.sigmas
    t = sigmas[torch.randint(0, len(sigmas) - 1 - run.recipe.cfg.skip, (bs,))].to(run.device, torch.float64)
    return {"position": position, "x0": x0, "embeds": run.data.embed(batch.prompts).to(run.device), "t": t,
            "x_t": torch.randn_like(x0)}


def time_round(run, step: int) -> dict[str, float]:
    """One train_step, then each of its parts alone on the same shapes."""
    import torch.distributed as dist


    dev, bs = run.device, run.cfg.data.batch_size
    out = {"step": timed(lambda: run.train_step(step), dev)}
    inp = step_inputs(run, step)
    nets = run.handles(inp["embeds"], "student")
    x_t, t = inp["x_t"], inp["t"]
    with torch.no_grad():
        out["teacher fwd (CFG)"] = timed(lambda: nets["teacher"](x_t, t), dev)
        out["target fwd"] = timed(lambda: (nets["ema"] if "ema" in nets else nets["student"])(x_t, t), dev)

    def student():
        loss = nets["student"](x_t, t).float().pow(2).mean()
        run.engine.backward(loss)

    out["student fwd+bwd"] = timed(student, dev)
    out["optimizer step"] = timed(run.engine.step, dev)  # also closes the backward above, as train_step does
    out["EMA update"] = timed(run.ema.update, dev) if run.ema is not None else 0.0

    def data():
        batch = run.data.batch(inp["position"], bs)
        return run.data.embed(batch.prompts).to(dev), batch.x0.to(dev)

    out["data + embeds"] = timed(data, dev)
    stub = lambda x, s: torch.zeros_like(x)  # noqa: E731
    generator = torch.Generator().manual_seed(step)
    out["recipe math"] = timed(lambda: run.recipe(stub, stub, stub, inp["x0"], generator), dev)
    losses = lambda: dist.all_reduce(torch.tensor([1.0, 2.0], dtype=torch.float64, device=dev))  # noqa: E731
    out["loss all-reduce"] = timed(losses, dev)
    dist.barrier()
    return out


def worker(args: argparse.Namespace) -> None:
    import deepspeed
    import torch.distributed as dist

    from distill.train import Run
    from distill.train_config import load_train_config

    cfg = load_train_config(args.config, args.overrides)
    t0 = time.perf_counter()
    run = Run(cfg, progress=False)
    setup_s = time.perf_counter() - t0
    dev = run.device
    after_setup = memory_now(dev)
    measure = reset_peak(dev)
    rounds = [time_round(run, step) for step in range(args.warmup + args.steps)][args.warmup:]
    report = {"rank": run.rank, "world": run.world, "device": device_name(dev), "memory_measure": measure,
              "after_setup_bytes": after_setup, "peak_bytes": memory_peak(dev), "setup_s": setup_s,
              "median_s": {k: statistics.median(r[k] for r in rounds) for k in rounds[0]},
              "rounds_s": rounds, "deepspeed": cfg.deepspeed, "zero_stage": run.ds["zero_optimization"]["stage"],
              "bf16": bool(run.ds.get("bf16", {}).get("enabled")), "teacher_dtype": run.tcfg.dtype,
              "batch_size": cfg.data.batch_size, "x0_shape": list(run.data.x0.shape[1:]),
              "gradient_checkpointing": cfg.student.gradient_checkpointing,
              "student_params": sum(getattr(p, "ds_numel", p.numel()) for p in run.engine.module.parameters()),
              "versions": {"torch": torch.__version__, "deepspeed": deepspeed.__version__}}
    if dev.type == "cuda":
        report["peak_reserved_bytes"] = torch.cuda.max_memory_reserved(dev)
    args.worker.mkdir(parents=True, exist_ok=True)
    (args.worker / f"rank{run.rank}.json").write_text(json.dumps(report, indent=1) + "\n")
    dist.barrier()


# --- the Wan-2.1-1.3B-shaped teacher (random weights) ---------------------------------------------------------
def build_wan_folder(folder: Path, layers: int) -> None:
    """A WanPipeline folder: a DiT of Wan 2.1 1.3B's shape (random weights, `layers` blocks), a 1-layer UMT5 whose
    d_model is the DiT's text_dim, and a tiny VAE with Wan's compression (4x in time, 8x8 in space, 16 channels).
    Saved in fp32, as Wan's own folder is; the run loads the DiT in the teacher's dtype."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from distill.teachers.wan.tiny import build_tokenizer
    from distill.toyworld import vocabulary

    torch.manual_seed(0)
    tokenizer = build_tokenizer(vocabulary())
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=WAN_1_3B["text_dim"], d_kv=32, d_ff=64, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    z = WAN_1_3B["in_channels"]
    vae = AutoencoderKLWan(base_dim=8, z_dim=z, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                           temperal_downsample=[False, True, True], latents_mean=[0.0] * z, latents_std=[1.0] * z)
    transformer = WanTransformer3DModel(**{**WAN_1_3B, "num_layers": layers})
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=8.0)
    WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                scheduler=scheduler).save_pretrained(folder, safe_serialization=True)


def wan_overrides(args: argparse.Namespace, tmp: Path, bf16: bool) -> list[str]:
    """Build the folder and its teacher config; the training-config overrides that use them."""
    layers, frames = args.layers or WAN_1_3B["num_layers"], args.frames or 81
    height, width = args.height or 480, args.width or 832
    folder = tmp / "wan-1.3b-random"
    t0 = time.perf_counter()
    build_wan_folder(folder, layers)
    print(f"built a random Wan-1.3B-shaped teacher ({layers} layers) in {time.perf_counter() - t0:.0f}s",
          file=sys.stderr)
    teacher = {"name": "wan2.1-1.3b-shape-random", "source": str(folder), "dtype": "bfloat16" if bf16 else "float32",
               "sampler": {"name": "unipc", "steps": 50, "guidance": 6.0, "shift": 8.0},
               "video": {"frames": frames, "height": height, "width": width, "fps": 16},
               "negative_prompt": "", "max_sequence_length": 512}
    path = tmp / "wan-1.3b-random.yaml"
    path.write_text(json.dumps(teacher, indent=1) + "\n")  # JSON is YAML
    return [f"teacher={path}", "data.size=2", "data.batch_size=1", "student.gradient_checkpointing=true",
            "recipe.guidance=null"]


# --- the parent: one torchrun job per row, one table ----------------------------------------------------------
def ds_file(stage: int, bf16: bool) -> str:
    return f"configs/deepspeed/zero{stage}{'-bf16' if bf16 else ''}.json"


def plan(config_deepspeed: str, args: argparse.Namespace, bf16: bool) -> list[tuple[str, int]]:
    """(DeepSpeed file, ranks) per row: the config's own file on one rank (its bf16 twin on bf16), then ZeRO-2 and
    ZeRO-3 on --nproc ranks; a row already in the list is not run twice."""
    from distill.train_config import deepspeed_path

    stem = Path(config_deepspeed).name.removesuffix(".json")
    single = ds_file(int(stem[-1]), True) if bf16 and stem in ("zero2", "zero3") else config_deepspeed
    rows = [(single, 1)] + ([(ds_file(2, bf16), args.nproc), (ds_file(3, bf16), args.nproc)]
                            if args.compare_zero else [])
    seen, out = set(), []
    for ds, n in rows:
        if (deepspeed_path(ds).resolve(), n) not in seen:
            seen.add((deepspeed_path(ds).resolve(), n))
            out.append((ds, n))
    return out


def run_row(args: argparse.Namespace, ds: str, nproc: int, overrides: list[str], tmp: Path, log: Path) -> dict:
    """Launch this script under torchrun for one row; its ranks' reports, summarised (or the error)."""
    name = f"{Path(ds).stem}-x{nproc}"
    reports = tmp / f"reports-{name}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(Path(__file__).resolve()), "--worker", str(reports), "--config", args.config,
           "--steps", str(args.steps), "--warmup", str(args.warmup),
           *overrides, f"deepspeed={ds}", f"out={tmp / ('run-' + name)}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    row = {"stage": Path(ds).stem, "deepspeed": ds, "ranks": nproc, "wall_s": time.perf_counter() - t0,
           "log": str(log)}
    files = sorted(reports.glob("rank*.json"), key=lambda p: int(p.stem[4:]))
    if proc.returncode != 0 or len(files) != nproc:
        errors = sorted(reports.glob("error-rank*.txt"))
        error = errors[0].read_text().strip() if errors else f"exit {proc.returncode}"
        print(f"  {name} failed: {error}\n  (its output: {log})", file=sys.stderr)
        return {**row, "error": error}
    ranks = [json.loads(p.read_text()) for p in files]
    med = {k: max(r["median_s"][k] for r in ranks) for k in ranks[0]["median_s"]}  # the slowest rank's
    passes = sum(med[k] for k in PASSES)
    return {**row, "device": ranks[0]["device"], "memory_measure": ranks[0]["memory_measure"], "seconds": med,
            "sum_of_passes_s": passes, "step_over_passes": med["step"] / passes,
            "unaccounted_s": med["step"] - passes - sum(med[k] for k in REST),
            "peak_gib": [r["peak_bytes"] / GIB for r in ranks],
            "after_setup_gib": [r["after_setup_bytes"] / GIB for r in ranks], "per_rank": ranks}


def environment() -> dict:
    from importlib.metadata import version

    def git(*a):
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()

    return {"git_sha": git("rev-parse", "HEAD") + ("+dirty" if git("status", "--porcelain", "-uno") else ""),
            "torch": torch.__version__, "deepspeed": version("deepspeed"), "diffusers": version("diffusers"),
            "python": platform.python_version(), "host": platform.node(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def print_tables(result: dict) -> None:
    rows = result["rows"]
    mems = lambda xs: " / ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    print(f"{'stage':<11} {'ranks':>5} {'step s':>8} {'passes s':>9} {'ratio':>6}  {'peak mem/rank GiB':<19} "
          f"{'after setup GiB':<17} device")
    for r in rows:
        head = f"{r['stage']:<11} {r['ranks']:>5}"
        if "error" in r:
            print(f"{head}  failed: {r['error'][:120]}")
            continue
        print(f"{head} {r['seconds']['step']:8.3f} {r['sum_of_passes_s']:9.3f} {r['step_over_passes']:5.2f}x  "
              f"{mems(r['peak_gib']):<19} {mems(r['after_setup_gib']):<17} {r['device']}")
    ok = [r for r in rows if "error" not in r]
    if ok:
        print(f"\n{'seconds (median; slowest rank)':<32}" + "".join(f"{r['stage'] + ' x' + str(r['ranks']):>14}"
                                                                    for r in ok))
        lines = [("step (train_step)", lambda r: r["seconds"]["step"])]
        lines += [(f"  {k}", lambda r, k=k: r["seconds"][k]) for k in PASSES]
        lines += [("  = sum of passes", lambda r: r["sum_of_passes_s"])]
        lines += [(f"  {k}", lambda r, k=k: r["seconds"][k]) for k in REST]
        lines += [("  unaccounted", lambda r: r["unaccounted_s"])]
        for label, get in lines:
            print(f"{label:<32}" + "".join(f"{get(r):14.4f}" for r in ok))
        for measure in dict.fromkeys(r["memory_measure"] for r in ok):
            print(f"memory: {measure}")
    e = result["env"]
    print(f"shape: {result['shape']}; x0 per example {result.get('x0_shape')}, batch {result.get('batch_size')} "
          f"per rank; {result['steps']} timed rounds after {result['warmup']} warm-up")
    print(f"git {e['git_sha'][:12]}{'+dirty' if e['git_sha'].endswith('+dirty') else ''}, torch {e['torch']}, "
          f"deepspeed {e['deepspeed']}, OMP_NUM_THREADS={e['OMP_NUM_THREADS']}; wrote {result['out']}")


def parent(args: argparse.Namespace) -> None:
    from distill.train_config import load_train_config

    bf16 = args.precision == "bf16" or (args.precision == "auto" and torch.cuda.is_available())
    args.config, args.out = str(Path(args.config).resolve()), args.out.resolve()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench_train-") as tmp:
        tmp = Path(tmp)
        overrides = ["wandb.mode=disabled", "train.steps=1000000", f"data.cache_dir={tmp / 'cache'}"]
        overrides += wan_overrides(args, tmp, bf16) if args.shape == "wan-1.3b" else ["data.size=16"]
        overrides += (["teacher_dtype=bfloat16"] if bf16 else []) + list(args.overrides)
        cfg = load_train_config(args.config, overrides)  # a bad key fails here, before any job starts
        if cfg.train.grad_accum != 1:
            raise SystemExit("bench_train: train.grad_accum must be 1 (each isolated pass is one micro-step)")
        rows = []
        for ds, n in plan(cfg.deepspeed, args, bf16):
            print(f"bench_train: {Path(ds).stem} on {n} rank(s) ...", file=sys.stderr, flush=True)
            log = args.out.with_name(f"{args.out.stem}.{Path(ds).stem}-x{n}.log")
            rows.append(run_row(args, ds, n, overrides, tmp, log))
    first = next((r["per_rank"][0] for r in rows if "per_rank" in r), {})
    result = {"schema": "distill.bench_train/1", "config": args.config, "shape": args.shape,
              "overrides": overrides, "precision": "bf16" if bf16 else "fp32", "steps": args.steps,
              "warmup": args.warmup, "x0_shape": first.get("x0_shape"), "batch_size": first.get("batch_size"),
              "student_params": first.get("student_params"), "env": environment(), "out": str(args.out),
              "rows": rows}
    if args.shape == "wan-1.3b":
        result["wan"] = {"layers": args.layers or WAN_1_3B["num_layers"], "frames": args.frames or 81,
                         "height": args.height or 480, "width": args.width or 832}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print_tables(result)
    if any("error" in r for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
