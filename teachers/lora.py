"""LoRA files of a diffusers pipeline's DiT, for any family: fusing an adapter into its base weights, checked.

diffusers fuses silently; `fuse_checked` checks every adapted weight numerically, W_fused = W + (alpha / r)·B·A,
before it writes anything, so an export never ships a transformer that differs from its adapter.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from distill.teachers.base import FamilyError


def tensor_reader(folder: Path):
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


def fuse_checked(pipeline_cls, dit_cls, base: Path, lora_file: Path, dest: Path) -> int:
    """Save the DiT of `base` (a transformer folder, loaded as `dit_cls`) with the adapter `lora_file` (read by
    `pipeline_cls.lora_state_dict`, so it is what `load_lora_weights` gives) fused in, to `dest`. Returns the number
    of fused layers."""
    lora_file = Path(lora_file)
    state, metadata = pipeline_cls.lora_state_dict(str(lora_file.parent), weight_name=lora_file.name,
                                                   return_lora_metadata=True)
    bad = [k for k in state if not k.startswith("transformer.") or ".lora_" not in k]
    if bad:
        raise FamilyError(f"{str(lora_file)!r} holds weights that are not transformer LoRA layers: {bad[:3]}")
    transformer = dit_cls.from_pretrained(base, torch_dtype=torch.float32)
    transformer.load_lora_adapter(state, prefix="transformer", adapter_name="student", metadata=metadata)
    transformer.fuse_lora(lora_scale=1.0)
    transformer.unload_lora()
    fused = transformer.state_dict()
    meta = metadata or {}
    rank, alpha = meta.get("transformer.r"), meta.get("transformer.lora_alpha")
    scale = (alpha / rank) if rank and alpha else 1.0
    read = tensor_reader(Path(base))
    layers = sorted({k.removeprefix("transformer.").rsplit(".lora_", 1)[0] for k in state})
    for layer in layers:
        a = state[f"transformer.{layer}.lora_A.weight"].to(torch.float32)
        b = state[f"transformer.{layer}.lora_B.weight"].to(torch.float32)
        expected = read(f"{layer}.weight").to(torch.float32) + scale * (b @ a)
        got = fused[f"{layer}.weight"]
        tol = 1e-5 * max(1.0, float(expected.abs().max()))
        if got.shape != expected.shape or float((got - expected).abs().max()) > tol:
            raise RuntimeError(f"fusing {str(lora_file)!r} into {layer} did not give W + {scale}·B·A; refusing to "
                               f"write a transformer that differs from the adapter")
    leftover = [k for k in fused if "lora_" in k or "base_layer" in k]
    if leftover:
        raise RuntimeError(f"LoRA layers left in the fused transformer: {leftover[:3]}")
    transformer.save_pretrained(dest, safe_serialization=True)
    return len(layers)
