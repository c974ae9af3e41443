"""`distill export`: a training checkpoint into a diffusers Wan folder that stock `WanPipeline` samples in few steps.

    OUT/
        model_index.json          the teacher's, naming FlowMatchEulerDiscreteScheduler
        transformer/              the student: student/ of a full run, or the LoRA base with the adapter fused in
        scheduler/                FlowMatchEulerDiscreteScheduler(shift, stochastic_sampling=True): per step it
                                  computes exactly the multistep consistency sampler (teachers.samplers)
        text_encoder/ tokenizer/ vae/   copied from the teacher
        lora/pytorch_lora_weights.safetensors   (LoRA runs) the adapter alone, for `pipe.load_lora_weights`
        lora/wan_lora.safetensors               the same adapter in the original Wan key names (ComfyUI, DiffSynth,
                                                LightX2V; diffusers reads it too): distill.lora_format
        distill_teacher.json      the sampler and video defaults `distill sample` and `distill eval` pick up
        distill_export.json       where it came from (run, checkpoint, step, teacher, code version)
        README.md                 how to load and sample it

The folder is written next to OUT under a temporary name and renamed at the end: a failed export leaves nothing.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml

from distill.core.config import ConfigError
from distill.lora_format import WAN_LORA_FILE, write_wan_lora

from distill.teachers.config import load_teacher_config
from distill.teachers.resolve import has_two_experts, transformer_folder

SCHEDULER_CLASS = "FlowMatchEulerDiscreteScheduler"
LORA_FILE = "pytorch_lora_weights.safetensors"


def _read_checkpoint(folder: Path) -> tuple[dict, dict]:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"export: {str(folder / 'meta.json')!r} is not valid JSON ({err})") from None
    config_file = folder / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(f"export: checkpoint {str(folder)!r} is incomplete (no config.yaml)")
    config = yaml.safe_load(config_file.read_text()) or {}
    missing = [k for k in ("teacher", "sampler") if k not in meta]
    if missing:
        raise ConfigError(f"export: {str(folder / 'meta.json')!r} lacks the keys {missing}; it was not written by "
                          f"`distill train`, or by a version older than export")
    lora = (config.get("student") or {}).get("lora")
    weights = folder / ("lora" if lora else "student")
    expected = weights / (LORA_FILE if lora else "config.json")
    if not expected.is_file():
        kind = "a LoRA run (student.lora is set)" if lora else "a full fine-tuning run"
        raise ConfigError(f"export: checkpoint {str(folder)!r} is {kind} but {str(expected)!r} is missing; the "
                          f"checkpoint is incomplete")
    return meta, config


def _teacher(meta: dict, config: dict, folder: Path):
    """The teacher's config (for its video defaults and revision) and its local folder."""
    from distill.teachers.resolve import TeacherNotFound, resolve

    source = meta["teacher"]
    try:
        tcfg = load_teacher_config(str(config.get("teacher") or source))
        if tcfg.source != source:  # the config file has changed since the run: the checkpoint's word wins
            tcfg = load_teacher_config(source)
    except ConfigError:
        tcfg = load_teacher_config(source)
    try:
        return tcfg, resolve(source, tcfg.revision)
    except TeacherNotFound as err:
        raise ConfigError(f"export: the teacher of checkpoint {str(folder)!r} cannot be found: {err}") from None


def _lora_base(config: dict, teacher_folder: Path) -> Path:
    """The transformer folder the LoRA was trained on: the teacher's DiT, or the run's student.init."""
    init = (config.get("student") or {}).get("init", "teacher")
    if init == "teacher":
        return teacher_folder / "transformer"
    base = transformer_folder(init)
    if base is None:
        raise ConfigError(f"export: the LoRA was trained on student.init {str(init)!r}, which is no longer a "
                          f"transformer folder (no config.json)")
    return base


# --- writing ----------------------------------------------------------------------------------------------------
def _tensor_reader(folder: Path):
    """name -> tensor, read lazily from a (possibly sharded) diffusers safetensors folder."""
    from safetensors import safe_open

    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        where = {k: folder / f for k, f in json.loads(index.read_text())["weight_map"].items()}
    else:
        single = folder / "diffusion_pytorch_model.safetensors"
        with safe_open(single, "pt") as f:
            where = dict.fromkeys(f.keys(), single)

    def read(name: str):
        with safe_open(where[name], "pt") as f:
            return f.get_tensor(name)
    return read


def fuse_lora(base: Path, lora_file: Path, dest: Path) -> int:
    """Save base + the LoRA fused (diffusers' own loader, so it is what `load_lora_weights` gives) to `dest`, after
    checking every adapted weight numerically: W_fused = W + (alpha / r)·B·A. Returns the number of fused layers."""
    import torch
    from diffusers import WanPipeline, WanTransformer3DModel

    state, metadata = WanPipeline.lora_state_dict(str(lora_file.parent), weight_name=lora_file.name,
                                                  return_lora_metadata=True)
    bad = [k for k in state if not k.startswith("transformer.") or ".lora_" not in k]
    if bad:
        raise ConfigError(f"export: {str(lora_file)!r} holds weights that are not transformer LoRA layers: {bad[:3]}")
    transformer = WanTransformer3DModel.from_pretrained(base, torch_dtype=torch.float32)
    transformer.load_lora_adapter(state, prefix="transformer", adapter_name="student", metadata=metadata)
    transformer.fuse_lora(lora_scale=1.0)
    transformer.unload_lora()
    fused = transformer.state_dict()

    meta = metadata or {}
    rank, alpha = meta.get("transformer.r"), meta.get("transformer.lora_alpha")
    read = _tensor_reader(base)
    layers = sorted({k.removeprefix("transformer.").rsplit(".lora_", 1)[0] for k in state})
    for layer in layers:
        a = state[f"transformer.{layer}.lora_A.weight"].to(torch.float32)
        b = state[f"transformer.{layer}.lora_B.weight"].to(torch.float32)
        scale = (alpha / rank) if rank and alpha else 1.0
        expected = read(f"{layer}.weight").to(torch.float32) + scale * (b @ a)
        got = fused[f"{layer}.weight"]
        tol = 1e-5 * max(1.0, float(expected.abs().max()))
        if got.shape != expected.shape or float((got - expected).abs().max()) > tol:
            raise RuntimeError(f"export: fusing the LoRA into {layer} did not give W + {scale}·B·A; refusing to "
                               f"write a transformer that differs from the adapter")
    leftover = [k for k in fused if "lora_" in k or "base_layer" in k]
    if leftover:
        raise RuntimeError(f"export: LoRA layers left in the fused transformer: {leftover[:3]}")
    transformer.save_pretrained(dest, safe_serialization=True)
    return len(layers)


def _readme(out_name: str, sampler: dict, tcfg, lora: bool, meta: dict, folder: Path) -> str:
    v = tcfg.video
    steps, shift = sampler["steps"], sampler["shift"]
    text = f"""# {out_name}: a {steps}-step student distilled from `{meta['teacher']}`

Exported by `distill export` from `{folder}` (step {meta.get('step')}, recipe `{meta.get('recipe')}`).
A complete diffusers Wan folder: stock `WanPipeline` samples it in {steps} steps, without classifier-free guidance.
Its scheduler is `FlowMatchEulerDiscreteScheduler(shift={shift}, stochastic_sampling=True)`: multistep consistency
sampling (jump to the clean estimate, re-noise to the next level, repeat).

```python
import torch
from diffusers import WanPipeline
pipe = WanPipeline.from_pretrained("{out_name}")
video = pipe("a red circle moving left slowly on a black background", num_inference_steps={steps},
             guidance_scale=1.0, num_frames={v.frames}, height={v.height}, width={v.width},
             max_sequence_length={tcfg.max_sequence_length}, generator=torch.Generator().manual_seed(0)).frames[0]
```

The scheduler draws its re-noising noise from the global torch RNG (the pipeline passes it no generator): call
`torch.manual_seed(...)` before the pipeline as well for a fully reproducible clip.

With this project's tools (they read `distill_teacher.json`, so the consistency sampler is picked automatically):

```bash
distill sample --teacher {out_name} --prompt "..." --out clip.mp4
distill eval --model student={out_name}@{steps} --out runs/eval
```
"""
    if lora:
        text += f"""
## The adapter alone

`lora/{LORA_FILE}` is the LoRA the student was trained as; on the teacher it gives the same transformer as
`transformer/` here (which is that LoRA fused in):

```python
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline
pipe = WanPipeline.from_pretrained("<the teacher folder>")
pipe.load_lora_weights("{out_name}/lora")
pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift={shift}, stochastic_sampling=True)
```

`lora/{WAN_LORA_FILE}` is the same adapter in the original Wan key names (`diffusion_model.blocks.0.self_attn.q...`,
its alpha / rank folded into `lora_B`), for ComfyUI, DiffSynth-Studio and LightX2V; diffusers loads it too, with
`weight_name="{WAN_LORA_FILE}"`.
"""
    return text


def _copy_tree(src: Path, dst: Path) -> None:
    # Hub snapshots are symlinks into the blob store: copy what they point to.
    shutil.copytree(src, dst, symlinks=False)


def export(run: str | Path, out: Path, checkpoint: str = "latest", steps: int | None = None,
           overwrite: bool = False) -> Path:
    """Write the student of a run (its latest checkpoint, or `checkpoint`) as a diffusers Wan folder at `out`."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from distill.checkpoint import find

    try:
        folder = find(run, checkpoint)
    except ConfigError as err:
        raise ConfigError(f"export: {err}") from None
    meta, config = _read_checkpoint(folder)
    lora = bool((config.get("student") or {}).get("lora"))
    sampler = dict(meta["sampler"])
    if sampler.get("name") != "consistency":
        raise ConfigError(f"export: checkpoint {str(folder)!r} was trained for the {sampler.get('name')!r} sampler; "
                          f"export writes the consistency sampler only")
    if steps is not None:
        if steps < 1:
            raise ConfigError(f"export: steps must be at least 1, got {steps}")
        sampler["steps"] = steps
    sampler = {"name": "consistency", "steps": int(sampler["steps"]), "guidance": 1.0,
               "shift": float(sampler["shift"])}
    tcfg, teacher = _teacher(meta, config, folder)
    index = json.loads((teacher / "model_index.json").read_text())
    if has_two_experts(teacher):
        raise ConfigError(f"export: teacher {meta['teacher']!r} has two expert DiTs (transformer_2); one student "
                          f"cannot replace both")

    out = Path(out).expanduser().absolute()
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"export: {str(out)!r} already exists and is not empty; choose another --out or pass "
                          f"--overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name, entry in index.items():  # the teacher's other components: text encoder, tokenizer, VAE, ...
            if name in ("transformer", "transformer_2", "scheduler") or not isinstance(entry, list) or entry[0] is None:
                continue
            if not (teacher / name).is_dir():
                raise ConfigError(f"export: teacher folder {str(teacher)!r} lacks {name}/")
            _copy_tree(teacher / name, tmp / name)
        if lora:
            fuse_lora(_lora_base(config, teacher), folder / "lora" / LORA_FILE, tmp / "transformer")
            (tmp / "lora").mkdir()
            shutil.copy2(folder / "lora" / LORA_FILE, tmp / "lora" / LORA_FILE)
            write_wan_lora(tmp / "lora" / LORA_FILE, tmp / "lora" / WAN_LORA_FILE)
        else:
            _copy_tree(folder / "student", tmp / "transformer")
        FlowMatchEulerDiscreteScheduler(shift=sampler["shift"], stochastic_sampling=True).save_pretrained(
            tmp / "scheduler")
        index["scheduler"] = ["diffusers", SCHEDULER_CLASS]
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        defaults = {"sampler": sampler, "video": tcfg.video.model_dump(), "negative_prompt": tcfg.negative_prompt,
                    "max_sequence_length": tcfg.max_sequence_length}
        (tmp / "distill_teacher.json").write_text(json.dumps(defaults, indent=2) + "\n")
        provenance = {"schema": "distill.export/1", "checkpoint": str(folder.resolve()), "step": meta.get("step"),
                      "teacher": meta["teacher"], "teacher_revision": tcfg.revision, "recipe": meta.get("recipe"),
                      "student": "lora" if lora else "full", "code_version": meta.get("code_version"),
                      "fingerprint": meta.get("fingerprint"), "sampler": sampler}
        (tmp / "distill_export.json").write_text(json.dumps(provenance, indent=1) + "\n")
        (tmp / "README.md").write_text(_readme(out.name, sampler, tcfg, lora, meta, folder))
        if out.exists():
            old = out.parent / f".old-{out.name}-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
