#!/usr/bin/env python
"""The memory planner (distill/plan.py) against measurement, on CPU ranks, at Wan 2.1 1.3B's width.

    python scripts/measure_memory.py                      # 3 layers, 2 ranks, ZeRO-0 / ZeRO-2 / ZeRO-3 (fp32)
    python scripts/measure_memory.py --layers 2 --stages 2 3

A DiT with Wan 2.1 1.3B's width and head layout (dim 1536 = 12 heads x 128, ffn 8960, text dim 4096; random
weights; depth --layers) is trained by the real `distill.train.Run` (consistency recipe, toy-world clips of
5x64x64 = 32 tokens, batch 1, gradient checkpointing) under torchrun (gloo, OMP_NUM_THREADS=1), one job per ZeRO
stage, with the fp32 DeepSpeed files (configs/deepspeed/zero{0,2,3}.json). What is compared, per rank:

  model states   measured: the bytes of every live tensor storage in the process (gc walk, one count per storage),
                 taken inside the 2nd `engine.step()` before it runs (weights, gradients or their partitions, master
                 copies, Adam moments from step 1, DeepSpeed's gradient buckets, the teacher, the EMA, plus the
                 tiny VAE and cached text embeddings); predicted: the planner's weights, gradients, master,
                 optimizer, teacher, EMA and DeepSpeed-buffer items. On CPU this is what "GPU memory" maps to.
  peak process   measured: peak RSS (VmHWM) over the two training steps (reset after setup); predicted: the RSS
                 measured after imports, before any network is built, plus the planner's training peak.
DeepSpeed's own estimators (estimate_zero2/3_model_states_mem_needs_all_live, GPU figure without offload) are
printed beside them: they count one 16-bit network with Adam, not the teacher, the EMA or fp32 weights.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from bench_train import WAN_1_3B, _proc_status, build_wan_folder, reset_peak  # noqa: E402

GIB = 1 << 30


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=3, help="DiT depth (Wan 1.3B has 30)")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--stages", type=int, nargs="+", default=[0, 2, 3], choices=(0, 1, 2, 3))
    p.add_argument("--config", default="configs/recipes/consistency-tiny.yaml")
    p.add_argument("--out", type=Path, default=Path("runs/bench/memory.json"))
    p.add_argument("--render", type=Path, help="re-write the table (and DeepSpeed's estimates) of an earlier --out JSON")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="key=value overrides of the training config")
    return p.parse_intermixed_args()


def live_tensor_bytes() -> int:
    """Bytes of every distinct tensor storage reachable from Python objects."""
    gc.collect()
    seen: dict[int, int] = {}
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
                s = obj.untyped_storage()
                seen[s.data_ptr()] = max(seen.get(s.data_ptr(), 0), s.nbytes())
        except (RuntimeError, ReferenceError):
            continue
    return sum(seen.values())


def worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from distill.train import Run
    from distill.train_config import load_train_config

    cfg = load_train_config(args.config, args.overrides)
    baseline = _proc_status("VmRSS")  # after imports, before any network
    run = Run(cfg, progress=False)
    build_peak = _proc_status("VmHWM")  # the teacher loaded, the training clips made, every network built
    engine = run.engine
    snapshots = []
    original = engine.step

    def step(*a, **k):
        snapshots.append(live_tensor_bytes())
        return original(*a, **k)

    engine.step = step
    run.train_step(0)  # step 1: Adam's moments appear
    reset_peak(run.device)
    run.train_step(1)
    report = {"rank": run.rank, "baseline_rss": baseline, "peak_rss_build": build_peak,
              "states_at_step": snapshots[-1],
              "peak_rss_steps": _proc_status("VmHWM"), "rss_after": _proc_status("VmRSS")}
    args.worker.mkdir(parents=True, exist_ok=True)
    (args.worker / f"rank{run.rank}.json").write_text(json.dumps(report) + "\n")
    dist.barrier()


def deepspeed_estimates(layers: int, nproc: int) -> dict:
    """DeepSpeed's estimators for the student's DiT. The `_all_live` forms count parameters by distinct data_ptr,
    which a meta-device model does not have (every pointer is 0), so the counts they would take from a real model
    (total; largest layer = most parameters held directly by one module) are computed here and passed to the
    functions they call."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        model = WanTransformer3DModel(**{**WAN_1_3B, "num_layers": layers})
    total = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return {"total_params": total, "largest_layer_params": largest,
            "zero2_gpu_bytes": estimate_zero2_model_states_mem_needs(total, nproc, 1, cpu_offload=False)[1],
            "zero3_gpu_bytes": estimate_zero3_model_states_mem_needs(total, largest, nproc, 1, cpu_offload=False,
                                                                     cpu_offload_params=False)[1]}


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker is not None:
        return worker(args)
    if args.render is not None:
        result = json.loads(args.render.read_text())
        result["deepspeed_estimators"] = deepspeed_estimates(result["layers"], result["nproc"])
        args.render.write_text(json.dumps(result, indent=1) + "\n")
        args.render.with_suffix(".md").write_text(markdown(result) + "\n")
        return print(markdown(result))
    from distill.plan import plan
    from distill.train_config import load_train_config

    args.out = args.out.resolve()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="measure_memory-") as tmp:
        tmp = Path(tmp)
        folder = tmp / "wan-1.3b-width"
        build_wan_folder(folder, args.layers)
        teacher = {"name": "wan2.1-1.3b-width-random", "source": str(folder), "dtype": "float32",
                   "sampler": {"name": "unipc", "steps": 50, "guidance": 6.0, "shift": 8.0},
                   "video": {"frames": 5, "height": 64, "width": 64, "fps": 8}, "negative_prompt": "",
                   "max_sequence_length": 512}
        (tmp / "teacher.yaml").write_text(json.dumps(teacher) + "\n")
        base = [f"teacher={tmp / 'teacher.yaml'}", "data.size=2", "data.batch_size=1", "recipe.guidance=null",
                "student.gradient_checkpointing=true", "wandb.mode=disabled", "train.steps=1000",
                f"data.cache_dir={tmp / 'cache'}", *args.overrides]
        for stage in args.stages:
            ds = f"configs/deepspeed/zero{stage}.json"
            overrides = [*base, f"deepspeed={ds}", f"out={tmp / f'run{stage}'}"]
            reports = tmp / f"reports{stage}"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                   str(args.nproc), str(Path(__file__).resolve()), "--worker", str(reports), "--config",
                   args.config, *overrides]
            env = {**os.environ, "OMP_NUM_THREADS": "1",
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
            log = args.out.with_name(f"{args.out.stem}.zero{stage}.log")
            t0 = time.perf_counter()
            print(f"measure_memory: ZeRO-{stage} on {args.nproc} ranks ...", file=sys.stderr, flush=True)
            with open(log, "w") as f:
                proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
            files = sorted(reports.glob("rank*.json"))
            if proc.returncode or len(files) != args.nproc:
                rows.append({"stage": stage, "error": f"exit {proc.returncode}; see {log}"})
                continue
            ranks = [json.loads(p.read_text()) for p in files]
            cfg = load_train_config(args.config, overrides)
            baseline = max(r["baseline_rss"] for r in ranks)
            p = plan(cfg, args.nproc, 24.0, device="cpu", overhead=baseline, suggest=False)
            states = sum(i.bytes for i in p.items if i.kind in ("state", "buffer"))
            buffers = sum(i.bytes for i in p.items if i.name.startswith("gradient bucket"))
            measured_states = max(r["states_at_step"] for r in ranks)
            measured_peak = max(r["peak_rss_steps"] for r in ranks)
            measured_build = max(r["peak_rss_build"] for r in ranks)
            rows.append({"stage": stage, "ranks": args.nproc, "wall_s": time.perf_counter() - t0,
                         "predicted_states": states, "measured_states": measured_states, "predicted_buffers": buffers,
                         "predicted_peak": p.train_peak, "measured_peak": measured_peak, "baseline_rss": baseline,
                         "predicted_build": p.build_peak, "measured_build": measured_build,
                         "build_items": [[i.name, i.bytes] for i in p.build_items],
                         "items": [[i.name, i.bytes, i.note] for i in p.items], "per_rank": ranks})
    ds = deepspeed_estimates(args.layers, args.nproc)
    result = {"schema": "distill.measure_memory/1", "layers": args.layers, "nproc": args.nproc,
              "dit": {**WAN_1_3B, "num_layers": args.layers}, "clip": "5x64x64 (latent 16x2x8x8, 32 tokens)",
              "rows": rows, "deepspeed_estimators": ds, "torch": torch.__version__}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    md = markdown(result)
    args.out.with_suffix(".md").write_text(md + "\n")
    print(md)


def markdown(result: dict) -> str:
    """The table; "states / unpartitioned" compares model states without DeepSpeed's fixed-size buffers (the
    gradient buckets, sized by the JSON, not by the model) to ZeRO-0's on the same ranks."""
    ds = result["deepspeed_estimators"]
    ok = [r for r in result["rows"] if "error" not in r]
    no_buffers = {r["stage"]: r["measured_states"] - r["predicted_buffers"] for r in ok}
    lines = ["| ZeRO | ranks | model states predicted GiB | measured GiB | ratio | peak RSS predicted GiB | "
             "measured GiB | ratio | DeepSpeed estimator GiB | states w/o buckets / ZeRO-0's |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['stage']} | | failed: {r['error']} | | | | | | | |")
            continue
        est = ds.get(f"zero{r['stage']}_gpu_bytes")
        share = ""
        if 0 in no_buffers and r["stage"] != 0:
            share = f"{no_buffers[r['stage']] / no_buffers[0]:.3f} (goal at ZeRO-3 <= {1.2 / r['ranks']:.2f})"
        lines.append(f"| {r['stage']} | {r['ranks']} | {r['predicted_states'] / GIB:.3f} | "
                     f"{r['measured_states'] / GIB:.3f} | {r['predicted_states'] / r['measured_states']:.3f} | "
                     f"{r['predicted_peak'] / GIB:.3f} | {r['measured_peak'] / GIB:.3f} | "
                     f"{r['predicted_peak'] / r['measured_peak']:.3f} | {est / GIB:.3f} | {share} |"
                     if est else
                     f"| {r['stage']} | {r['ranks']} | {r['predicted_states'] / GIB:.3f} | "
                     f"{r['measured_states'] / GIB:.3f} | {r['predicted_states'] / r['measured_states']:.3f} | "
                     f"{r['predicted_peak'] / GIB:.3f} | {r['measured_peak'] / GIB:.3f} | "
                     f"{r['predicted_peak'] / r['measured_peak']:.3f} | | {share} |")
    builds = [r for r in ok if "measured_build" in r]
    if builds:  # before the first step: the teacher loaded, the training clips made, every network built
        lines += ["", "| ZeRO | build peak RSS predicted GiB | measured GiB | ratio |", "|---|---|---|---|"]
        lines += [f"| {r['stage']} | {r['predicted_build'] / GIB:.3f} | {r['measured_build'] / GIB:.3f} | "
                  f"{r['predicted_build'] / r['measured_build']:.3f} |" for r in builds]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
